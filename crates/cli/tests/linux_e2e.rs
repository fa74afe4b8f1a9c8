//! End to end with a real Linux kernel (../shared/guest): one boot per
//! transport checks the console, virtio-blk (ext4 root mounted read-write,
//! and the superblock the guest wrote), virtio-net (a DHCP answer from a real
//! dnsmasq on a TAP inside a network namespace), virtio-rng, virtio-vsock and
//! virtio-balloon. Each boot takes minutes on an emulating (PVM) host; run
//! alone with `cargo test --release --test linux_e2e`.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::Request;
use common::*;

const BOOT_TIMEOUT: Duration = Duration::from_secs(1800);

const CMDLINE: &str = "console=ttyS0 panic=-1 reboot=t noxsave root=/dev/vda rw ip=dhcp clearcpuid=popcnt,xsave,xsaveopt,xsavec,xsaves,cx16,avx,avx2,avx512f,bmi1,bmi2,movbe,fsgsbase,rdrand,rdseed,smap,smep,umip,pcid,invpcid,pku,clflushopt,clwb,sha_ni,aes,pclmulqdq,fma,f16c,adx,abm,lzcnt,rdpid,gfni,vaes,vpclmulqdq";

fn shared_guest(file: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/guest").join(file);
    assert!(p.exists(), "{} is missing: the Linux end-to-end tests need ../shared/guest beside the repo", p.display());
    p
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
}

/// A network namespace with a TAP (10.77.0.1/24) answered by dnsmasq.
struct NetNs {
    name: String,
    dnsmasq: Child,
}

impl NetNs {
    fn new(tag: &str, dir: &TempDir) -> Self {
        let name = format!("tern-e2e-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(Command::new("ip").args(["netns", "add", &name]));
        let ns = |args: &[&str]| {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &name]).args(args);
            sh(&mut c);
        };
        ns(&["ip", "link", "set", "lo", "up"]);
        ns(&["ip", "tuntap", "add", "dev", "tap0", "mode", "tap", "vnet_hdr"]);
        ns(&["ip", "addr", "add", "10.77.0.1/24", "dev", "tap0"]);
        ns(&["ip", "link", "set", "tap0", "up"]);
        let dnsmasq = Command::new("ip")
            .args(["netns", "exec", &name, "dnsmasq", "--no-daemon", "--interface=tap0", "--bind-interfaces"])
            .args(["--port=0", "--dhcp-range=10.77.0.10,10.77.0.20,255.255.255.0,1h", "--log-dhcp", "--log-facility=-"])
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dnsmasq.log")).unwrap())
            .spawn()
            .expect("dnsmasq (apt-get install dnsmasq)");
        NetNs { name, dnsmasq }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = self.dnsmasq.kill();
        let _ = self.dnsmasq.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn mount_count(image: &Path) -> u32 {
    let out = Command::new("dumpe2fs").arg("-h").arg(image).output().expect("dumpe2fs");
    let s = text(&out.stdout);
    s.lines()
        .find(|l| l.starts_with("Mount count:"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no mount count in dumpe2fs output:\n{s}"))
}

/// Wait until the line holding `needle` is terminated by a newline.
fn wait_for_complete_line(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(at) = s.find(needle)
            && s[at..].contains('\n')
        {
            return s;
        }
        assert!(Instant::now() < deadline, "the line with '{needle}' never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn counters(sock: &Path) -> api::Counters {
    let v = api::call(sock, &Request::Counters, Duration::from_secs(10)).unwrap().unwrap();
    serde_json::from_value(v).unwrap()
}

fn boot_linux_with_devices(tag: &str, kernel: &str, transport: &str) {
    let dir = TempDir::new(tag);
    let root = dir.join("root.ext4");
    sh(Command::new("truncate").args(["-s", "64M"]).arg(&root));
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&root));
    assert_eq!(mount_count(&root), 0);
    let ns = NetNs::new(tag, &dir);
    let serial = dir.join("console.log");
    let sock = dir.join("api.sock");
    let vsock = dir.join("vsock.sock");
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_tern"), "run", "--memory", "256M"])
        .arg("--kernel")
        .arg(shared_guest(kernel))
        .args(["--cmdline", CMDLINE, "--transport", transport])
        .arg("--disk")
        .arg(format!("path={},format=raw", root.display()))
        .args(["--net", "tap=tap0,mac=52:54:00:12:34:56", "--rng", "--balloon"])
        .arg("--vsock")
        .arg(format!("cid=3,socket={}", vsock.display()))
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .arg("--api-socket")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    wait_for_text(&serial, "EXT4-fs (vda): mounted filesystem", BOOT_TIMEOUT);
    // The console arrives a byte at a time: wait for the whole line.
    let console = wait_for_complete_line(&serial, "EXT4-fs (vda): mounted filesystem");
    let line = console.lines().find(|l| l.contains("EXT4-fs (vda): mounted filesystem")).unwrap();
    assert!(line.contains("r/w"), "root not mounted read-write: {line}");
    assert!(console.contains("IP-Config: Got DHCP answer from 10.77.0.1"), "{console}");
    assert!(console.contains("virtio_blk virtio") && console.contains("[vda]"), "{console}");

    // virtio-rng fed the kernel's hwrng; the balloon driver follows a target;
    // the vsock driver takes a connection request for a port nobody listens on.
    let c = counters(&sock);
    let rng = c.devices.iter().find(|(k, _)| k.starts_with("virtio-rng")).map(|(_, v)| v.clone()).unwrap();
    assert!(rng["bytes"] > 0, "virtio-rng was never read: {rng:?}");
    api::call(&sock, &Request::Balloon { target_mib: 16 }, Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let c = counters(&sock);
        let b = c.devices.iter().find(|(k, _)| k.starts_with("virtio-balloon")).map(|(_, v)| v.clone()).unwrap();
        if b["inflated_pages"] > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "balloon never inflated: {b:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut s = UnixStream::connect(&vsock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(b"CONNECT 5000\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    // The connection request reached the guest: its driver probed and
    // posted receive buffers. (Its RST may come after the host side's
    // connect timeout when the emulated guest kernel is slow, so the
    // answer itself is not required.)
    let v = counters(&sock);
    let vs = v.devices.iter().find(|(k, _)| k.starts_with("virtio-vsock")).map(|(_, v)| v.clone()).unwrap();
    assert!(vs["rx_packets"] > 0, "the guest's vsock driver never took a packet: {vs:?}");

    // No init on the disk: the kernel panics and the VMM ends on its own.
    let out = wait_with_timeout(child, BOOT_TIMEOUT);
    let console = std::fs::read_to_string(&serial).unwrap();
    let stderr = text(&out.stderr);
    // The kernel either panics (no init) or stops on an instruction this
    // host cannot emulate on its way down; either way the VMM says so.
    assert!(
        console.contains("Kernel panic") || stderr.contains("guest fault"),
        "the VMM ended without a panic or a fault report:\nstderr: {stderr}\nconsole tail: {}",
        console.lines().rev().take(15).collect::<Vec<_>>().join("\n")
    );
    assert!(out.status.code().is_some(), "VMM killed by a signal: {stderr}");
    // The guest wrote its superblock through virtio-blk to the host file.
    assert!(mount_count(&root) >= 1, "the ext4 superblock on the host was not updated");
    let leases = std::fs::read_to_string(dir.join("leases")).unwrap_or_default();
    assert!(leases.contains("52:54:00:12:34:56"), "dnsmasq leased nothing to the guest: {leases}");
    drop(ns);
}

#[test]
fn linux_vmlinux_pvh_over_virtio_mmio() {
    boot_linux_with_devices("mmio", "vmlinux", "mmio");
}

#[test]
fn linux_vmlinux_pvh_over_virtio_pci() {
    boot_linux_with_devices("pci", "vmlinux", "pci");
}

/// The bzImage through the Linux boot protocol (its XZ decompressor runs in
/// emulated kernel mode here, so this one takes longest): no disk, so the
/// kernel stops at the root mount and the VMM ends on its own.
#[test]
fn linux_bzimage_boots_to_the_root_mount() {
    let dir = TempDir::new("bzimage");
    let serial = dir.join("console.log");
    let child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["run", "--memory", "256M", "--kernel"])
        .arg(shared_guest("bzImage"))
        .args(["--cmdline", &CMDLINE.replace(" ip=dhcp", "")])
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let console = wait_for_text(&serial, "VFS: Unable to mount root fs", BOOT_TIMEOUT);
    assert!(console.contains("Linux version 6.12"), "{console}");
    let out = wait_with_timeout(child, Duration::from_secs(600));
    assert!(out.status.code().is_some(), "VMM killed by a signal: {}", text(&out.stderr));
}
