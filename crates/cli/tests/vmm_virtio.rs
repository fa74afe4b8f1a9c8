//! virtio devices driven by an independent driver stack: the test guest uses
//! the `virtio-drivers` crate at CPL3, over both transports, against real
//! backends (files, a TAP answered by the host kernel in a namespace, Unix
//! sockets for vsock).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

fn run_scenario(dir: &TempDir, transport: &str, scenario: &str, extra: &[String]) -> (i32, String) {
    let elf = guest_elf(dir);
    let out = run_with_timeout(
        tern()
            .args(["run", "--transport", transport, "--kernel"])
            .arg(&elf)
            .args(["--cmdline", &format!("tern.test={scenario} tern.virtio={transport}")])
            .args(extra),
        T,
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    (out.status.code().unwrap_or(-1), format!("{stdout}\n--- stderr ---\n{stderr}"))
}

fn assert_pass(code: i32, out: &str, what: &str) {
    let r = test_guest::scenario_result(out).unwrap_or_else(|| panic!("{what}: no result line:\n{out}"));
    assert_eq!(r.get("result"), Some("pass"), "{what}:\n{out}");
    assert_eq!(code, 1, "{what}: the guest exits through the test port with code 0:\n{out}");
}

fn both(f: impl Fn(&str)) {
    for t in ["mmio", "pci"] {
        f(t);
    }
}

#[test]
fn blk_writes_reach_the_host_file() {
    both(|t| {
        let dir = TempDir::new(&format!("vblk-{t}"));
        let disk = dir.join("disk.raw");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let (code, out) = run_scenario(&dir, t, "virtio-blk", &["--disk".into(), format!("path={}", disk.display())]);
        assert_pass(code, &out, &format!("virtio-blk over {t}"));
        let data = std::fs::read(&disk).unwrap();
        for sector in 0..64u64 {
            let at = sector as usize * 512;
            assert_eq!(&data[at..at + 512], &test_guest::blk_sector_pattern(sector)[..], "sector {sector} over {t}");
        }
        assert!(data[64 * 512..].iter().all(|&b| b == 0), "bytes written past the test range over {t}");
    });
}

/// The device advertises VIRTIO_BLK_F_RO; the guest sees it and only reads.
#[test]
fn blk_read_only_disk_is_announced_and_untouched() {
    let dir = TempDir::new("vblk-ro");
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let (_, out) =
        run_scenario(&dir, "pci", "virtio-blk", &["--disk".into(), format!("path={},readonly=on", disk.display())]);
    let r = test_guest::scenario_result(&out).expect("result line");
    assert_eq!((r.get("result"), r.get("mode")), (Some("pass"), Some("read")), "{out}");
    assert!(out.contains("readonly=true"), "{out}");
    assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn rng_gives_varied_bytes() {
    both(|t| {
        let dir = TempDir::new(&format!("vrng-{t}"));
        let (code, out) = run_scenario(&dir, t, "virtio-rng", &["--rng".into()]);
        assert_pass(code, &out, &format!("virtio-rng over {t}"));
    });
}

#[test]
fn console_output_lands_in_its_backend() {
    both(|t| {
        let dir = TempDir::new(&format!("vcon-{t}"));
        let file = dir.join("hvc0.log");
        let (code, out) =
            run_scenario(&dir, t, "virtio-console", &["--console".into(), format!("file={}", file.display())]);
        assert_pass(code, &out, &format!("virtio-console over {t}"));
        assert!(std::fs::read_to_string(&file).unwrap().contains("TERN virtio-console hello"));
    });
}

#[test]
fn balloon_inflates() {
    both(|t| {
        let dir = TempDir::new(&format!("vballoon-{t}"));
        let (code, out) = run_scenario(&dir, t, "virtio-balloon", &["--balloon".into(), "size=8".into()]);
        assert_pass(code, &out, &format!("virtio-balloon over {t}"));
    });
}

#[test]
fn vsock_guest_connects_to_the_host_listener() {
    both(|t| {
        let dir = TempDir::new(&format!("vsock-{t}"));
        let sock = dir.join("v.sock");
        let listener = std::os::unix::net::UnixListener::bind(format!("{}_1234", sock.display())).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(b"TERN host reply\n").unwrap();
            line
        });
        let (code, out) =
            run_scenario(&dir, t, "virtio-vsock", &["--vsock".into(), format!("cid=3,socket={}", sock.display())]);
        assert_pass(code, &out, &format!("virtio-vsock over {t}"));
        assert_eq!(server.join().unwrap(), "TERN vsock hello\n");
    });
}

#[test]
fn net_frames_reach_the_host_kernel_and_back() {
    both(|t| {
        let ns = format!("tern-vnet-{t}-{}", std::process::id());
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(["netns", "exec", &ns]).args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
        };
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        assert!(Command::new("ip").args(["netns", "add", &ns]).status().unwrap().success());
        ip(&["ip", "link", "set", "lo", "up"]);
        ip(&["ip", "tuntap", "add", "dev", "tap0", "mode", "tap", "vnet_hdr"]);
        ip(&["ip", "addr", "add", "10.0.2.2/24", "dev", "tap0"]);
        ip(&["ip", "link", "set", "tap0", "up"]);
        let dir = TempDir::new(&format!("vnet-{t}"));
        let elf = guest_elf(&dir);
        let out = run_with_timeout(
            Command::new("ip")
                .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_tern"), "run", "--transport", t, "--kernel"])
                .arg(&elf)
                .args(["--cmdline", &format!("tern.test=virtio-net tern.virtio={t}"), "--net", "tap=tap0"])
                .stdin(std::process::Stdio::null()),
            T,
        );
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let all = format!("{}\n{}", text(&out.stdout), text(&out.stderr));
        assert_pass(out.status.code().unwrap_or(-1), &all, &format!("virtio-net over {t}"));
        let r = test_guest::scenario_result(&all).unwrap();
        assert_eq!((r.get("arp"), r.get("ping")), (Some("ok"), Some("ok")), "{all}");
    });
}
