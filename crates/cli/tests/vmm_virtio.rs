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

/// Sixteen requests in flight (the guest's `blk-bench` at queue depth 16,
/// verifying): sequential writes land on the host file with the right
/// pattern, random reads of what was written come back right, with the
/// io_uring engine, the thread pool, and qcow2 (thread pool).
#[test]
fn blk_sixteen_requests_in_flight_with_each_engine() {
    const SECTORS: u64 = 4096; // 2 MiB: every sector written by 512 x 4 KiB requests
    for (name, opts) in [("uring", ",format=raw"), ("threads", ",format=raw,io=threads"), ("qcow2", ",format=qcow2")] {
        let dir = TempDir::new(&format!("vblk-qd16-{name}"));
        let disk = dir.join("disk.img");
        let fmt = if name == "qcow2" { "qcow2" } else { "raw" };
        let made = Command::new("qemu-img").args(["create", "-q", "-f", fmt]).arg(&disk).arg("2M").status().unwrap();
        assert!(made.success(), "qemu-img create");
        let spec = format!("path={}{opts},cache=none", disk.display());
        let run = |mode: &str| {
            let args = format!(
                "tern.blk_bench={mode} tern.blk_bs=4096 tern.blk_qd=16 tern.blk_ops=512 tern.blk_ms=60000 tern.blk_verify=1"
            );
            let elf = guest_elf(&dir);
            let out = run_with_timeout(
                tern()
                    .args(["run", "--transport", "pci", "--kernel"])
                    .arg(&elf)
                    .args(["--cmdline", &format!("tern.test=blk-bench tern.virtio=pci {args}")])
                    .args(["--disk", &spec]),
                T,
            );
            let text = format!("{}\n--- stderr ---\n{}", text(&out.stdout), text(&out.stderr));
            assert_pass(out.status.code().unwrap_or(-1), &text, &format!("blk-bench {mode} with {name}"));
            let r = test_guest::scenario_result(&text).unwrap();
            assert_eq!(
                (r.get("ops"), r.get("qd"), r.get("mismatches")),
                (Some("512"), Some("16"), Some("0")),
                "{text}"
            );
        };
        run("seqwrite");
        let img = image::open(&disk, None, true).unwrap();
        let mut sector = [0u8; 512];
        for s in 0..SECTORS {
            img.read_at(s * 512, &mut sector).unwrap();
            assert_eq!(sector, test_guest::blk_sector_pattern(s), "{name}: sector {s} on the host");
        }
        drop(img);
        run("randread");
    }
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
