//! The per-VM control socket: info, pause/resume, counters, power button, stop.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use api::{Request, RunState, VmInfo};
use common::*;

const T: Duration = Duration::from_secs(5);

fn call(sock: &Path, req: Request) -> Option<serde_json::Value> {
    api::call(sock, &req, T).unwrap_or_else(|e| panic!("{req:?}: {e}"))
}

/// A test guest running `scenario` with a control socket and a serial log.
struct Guest {
    _dir: TempDir,
    child: std::process::Child,
    sock: std::path::PathBuf,
    log: std::path::PathBuf,
}

fn start_guest(tag: &str, scenario: &str, extra: &[&str]) -> Guest {
    let dir = TempDir::new(tag);
    let elf = guest_elf(&dir);
    let sock = dir.join("api.sock");
    let log = dir.join("serial.log");
    let child = tern()
        .args(["run", "--cmdline", &format!("tern.test={scenario}"), "--kernel"])
        .arg(&elf)
        .args(extra)
        .arg("--api-socket")
        .arg(&sock)
        .arg("--serial")
        .arg(format!("file={}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_path(&sock, T);
    Guest { _dir: dir, child, sock, log }
}

fn ticks(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches("TERN tick=").count()
}

#[test]
fn pause_resume_info_counters_and_stop() {
    let g = start_guest("ctl", "spin", &["--cpus", "2"]);
    let (child, sock, log) = (g.child, g.sock.clone(), g.log.clone());
    wait_for_text(&log, "TERN tick=2", Duration::from_secs(20));

    let info: VmInfo = serde_json::from_value(call(&sock, Request::Info).unwrap()).unwrap();
    assert_eq!(info.state, RunState::Running);
    assert_eq!(info.vcpus, 2);
    assert_eq!(info.pid, child.id());

    call(&sock, Request::Pause);
    let info: VmInfo = serde_json::from_value(call(&sock, Request::Info).unwrap()).unwrap();
    assert_eq!(info.state, RunState::Paused);
    let before = ticks(&log);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ticks(&log), before, "guest kept printing while paused");
    // A second pause is refused with a reason.
    let e = api::call(&sock, &Request::Pause, T).unwrap_err();
    assert!(e.to_string().contains("already paused"), "{e}");

    call(&sock, Request::Resume);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ticks(&log) <= before {
        assert!(Instant::now() < deadline, "guest did not resume");
        std::thread::sleep(Duration::from_millis(20));
    }

    let c: api::Counters = serde_json::from_value(call(&sock, Request::Counters).unwrap()).unwrap();
    assert_eq!(c.vcpu_exits.len(), 2);
    assert!(c.vcpu_exits[0]["io"] > 0, "{c:?}");
    assert!(c.devices["serial0"]["bytes_out"] > 0, "{c:?}");

    // Garbage on the socket gets an error line, not a dead VMM.
    {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.write_all(b"{\"command\":\"explode\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":false") && line.contains("invalid request"), "{line}");
    }

    call(&sock, Request::Stop);
    let out = wait_with_timeout(child, T);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!sock.exists(), "control socket left behind");
}

#[test]
fn a_halted_guest_can_still_be_stopped() {
    let g = start_guest("hlt", "hlt", &[]);
    let (child, sock, log) = (g.child, g.sock.clone(), g.log.clone());
    wait_for_text(&log, "state=halted", Duration::from_secs(20));
    call(&sock, Request::Pause);
    call(&sock, Request::Stop);
    let out = wait_with_timeout(child, T);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn busy_control_socket_is_refused() {
    let dir = TempDir::new("busy");
    let elf = guest_elf(&dir);
    let sock = dir.join("api.sock");
    let first = tern()
        .args(["run", "--cmdline", "tern.test=spin", "--serial", "none", "--kernel"])
        .arg(&elf)
        .arg("--api-socket")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_path(&sock, T);
    std::thread::sleep(Duration::from_millis(100));
    let out = run_with_timeout(
        tern().args(["run", "--serial", "none", "--kernel"]).arg(&elf).arg("--api-socket").arg(&sock),
        T,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("in use by a running VM"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    call(&sock, Request::Stop);
    let out = wait_with_timeout(first, T);
    assert_eq!(out.status.code(), Some(0));
}

fn vcpu_affinity(pid: u32, name: &str) -> String {
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let st = std::fs::read_to_string(t.path().join("status")).unwrap();
            return st
                .lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .unwrap()
                .split(':')
                .nth(1)
                .unwrap()
                .trim()
                .into();
        }
    }
    panic!("no thread {name}");
}

#[test]
fn vcpus_are_pinned_at_start_and_live() {
    let g = start_guest("pin", "spin", &["--cpus", "2", "--pin", "0=1"]);
    let (child, sock, log) = (g.child, g.sock.clone(), g.log.clone());
    wait_for_text(&log, "TERN tick=1", Duration::from_secs(20));
    assert_eq!(vcpu_affinity(child.id(), "vcpu0"), "1");
    call(&sock, Request::PinVcpu { vcpu: 1, cpus: vec![0] });
    let deadline = Instant::now() + T;
    while vcpu_affinity(child.id(), "vcpu1") != "0" {
        assert!(Instant::now() < deadline, "vCPU 1 was not re-pinned");
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = api::call(&sock, &Request::PinVcpu { vcpu: 7, cpus: vec![0] }, T).unwrap_err();
    assert!(e.to_string().contains("no vCPU 7"), "{e}");
    call(&sock, Request::Stop);
    let out = wait_with_timeout(child, T);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn power_button_makes_a_cooperative_guest_power_off() {
    let g = start_guest("pwrbtn", "spin", &[]);
    let (child, sock, log) = (g.child, g.sock.clone(), g.log.clone());
    wait_for_text(&log, "TERN tick=1", Duration::from_secs(20));
    let r = call(&sock, Request::PowerButton).unwrap();
    assert_eq!(r["delivered"], true, "the guest enabled the power-button event: {r}");
    let out = wait_with_timeout(child, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(std::fs::read_to_string(&log).unwrap().contains("state=power-button"));
}
