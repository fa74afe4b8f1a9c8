//! Shared QEMU runner for the test-guest integration tests.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";

pub struct Run {
    /// None when we had to kill QEMU (the guest was meant to keep running).
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// When the first byte of guest output arrived, from spawn.
    pub first_byte: Option<Duration>,
}

pub fn qemu_usable() -> bool {
    let have_qemu = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let have_kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if !have_qemu || !have_kvm {
        eprintln!("SKIP: needs {QEMU} (apt-get install qemu-system-x86) and a usable /dev/kvm");
    }
    have_qemu && have_kvm
}

pub fn guest_path() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tern-test-guest-qemu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("guest.elf");
        test_guest::write_guest(&path).unwrap();
        path
    })
    .clone()
}

pub fn spawn_reader(mut pipe: impl Read + Send + 'static, sink: Arc<Mutex<(Vec<u8>, Option<Instant>)>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut s = sink.lock().unwrap();
            s.1.get_or_insert_with(Instant::now);
            s.0.extend_from_slice(&buf[..n]);
        }
    });
}

/// Boot the guest; stop when QEMU exits, when `stop_at` shows up in the
/// output (stdout or stderr), or at `timeout`.
pub fn boot(cmdline: &str, extra: &[&str], stop_at: Option<&str>, timeout: Duration) -> Run {
    boot_image(&guest_path(), "", cmdline, extra, stop_at, timeout)
}

/// As [`boot`], with PCIe (ECAM at 0xe0000000) on the microvm machine.
pub fn boot_pcie(cmdline: &str, extra: &[&str], timeout: Duration) -> Run {
    boot_image(&guest_path(), ",pcie=on", cmdline, extra, None, timeout)
}

pub fn boot_image(
    image: &Path,
    machine_extra: &str,
    cmdline: &str,
    extra: &[&str],
    stop_at: Option<&str>,
    timeout: Duration,
) -> Run {
    let machine = format!("microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=on{machine_extra}");
    let mut child = Command::new(QEMU)
        .args(["-enable-kvm", "-M", &machine])
        .args(["-cpu", "kvm64", "-m", "128", "-nographic", "-no-reboot", "-nodefaults"])
        .args(["-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .arg("-kernel")
        .arg(image)
        .args(["-append", cmdline])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qemu");
    let started = Instant::now();
    let out = Arc::new(Mutex::new((Vec::new(), None)));
    let err = Arc::new(Mutex::new((Vec::new(), None)));
    spawn_reader(child.stdout.take().unwrap(), out.clone());
    spawn_reader(child.stderr.take().unwrap(), err.clone());
    let text = |s: &Arc<Mutex<(Vec<u8>, Option<Instant>)>>| String::from_utf8_lossy(&s.lock().unwrap().0).into_owned();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        let seen = stop_at.is_some_and(|m| text(&out).contains(m) || text(&err).contains(m));
        if seen || started.elapsed() > timeout {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Let the readers drain what is left in the pipes.
    std::thread::sleep(Duration::from_millis(20));
    let first_byte = out.lock().unwrap().1.map(|t| t - started);
    Run { status, stdout: text(&out), stderr: text(&err), first_byte }
}

pub fn assert_line(run: &Run, line: &str) {
    assert!(
        run.stdout.lines().any(|l| l.trim_end() == line),
        "missing line {line:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout,
        run.stderr
    );
}

pub fn assert_prefix(run: &Run, prefix: &str) {
    assert!(
        run.stdout.lines().any(|l| l.starts_with(prefix)),
        "no line starting {prefix:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout,
        run.stderr
    );
}
