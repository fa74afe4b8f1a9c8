//! End-to-end lifecycle tests through a real `tern daemon` with test-guest VMs.

mod manager_common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use manager_common::{Env, alive};

const T: Duration = Duration::from_secs(20);

#[test]
fn define_start_console_shutdown_and_guest_poweroff() {
    let env = Env::new();
    env.define_guest("web", "spin tern.tick_ms=20", "");
    assert_eq!(env.state("web"), "stopped");
    let out = env.ok(&["start", "web"]);
    assert!(out.contains("Domain 'web' started"), "{out}");
    assert_eq!(env.state("web"), "running");

    // Console output seen through `tern console` (relayed by the daemon).
    let mut console = env.cmd(&["console", "web"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(console.stdout.take().unwrap()).lines();
    let seen = lines.by_ref().take(50).map_while(Result::ok).any(|l| l.starts_with("TERN tick="));
    let _ = console.kill();
    let _ = console.wait();
    assert!(seen, "no tick lines on the console");
    env.wait_console("web", "TERN test=spin", T);

    // Power button: the spin guest polls PM1 and powers off cooperatively.
    let out = env.ok(&["shutdown", "web", "--timeout", "20"]);
    assert!(out.contains("is shut off"), "{out}");
    assert_eq!(env.json(&["domstate", "web"])["reason"], "guest powered off");
    assert!(env.console_log("web").contains("TERN test=spin state=power-button"));

    // A guest that ignores the button (halted with interrupts off) is
    // destroyed when --timeout runs out.
    env.define_guest("deaf", "hlt", "");
    env.ok(&["start", "deaf"]);
    let t0 = std::time::Instant::now();
    let out = env.ok(&["shutdown", "deaf", "--timeout", "1"]);
    assert!(out.contains("ignored the power button for 1s and was destroyed"), "{out}");
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(env.json(&["domstate", "deaf"])["reason"], "destroyed");

    // A guest that powers itself off ends up stopped, not crashed.
    env.define_guest("off", "poweroff", "");
    env.ok(&["start", "off"]);
    env.wait_state("off", "stopped", T);
    let info = env.json(&["domstate", "off"]);
    assert_eq!(info["reason"], "guest powered off", "{info}");
}

#[test]
fn destroy_and_crash_detection() {
    let env = Env::new();
    env.define_guest("a", "hlt", "");
    env.define_guest("b", "hlt", "");
    env.ok(&["start", "a"]);
    env.ok(&["start", "b"]);
    let pid_a = env.vmm_pid("a");
    let out = env.ok(&["destroy", "a"]);
    assert!(out.contains("destroyed"), "{out}");
    assert_eq!(env.state("a"), "stopped");
    assert!(!alive(pid_a), "VMM {pid_a} survived destroy");
    let err = env.fail(&["destroy", "a"]);
    assert!(err.contains("not running"), "{err}");

    // Kill b's VMM behind the daemon's back: reported as crashed.
    let pid_b = env.vmm_pid("b");
    // SAFETY: kill() has no memory effects.
    unsafe { libc::kill(pid_b, libc::SIGKILL) };
    env.wait_state("b", "crashed", T);
    let st = env.json(&["domstate", "b"]);
    assert!(st["reason"].as_str().unwrap().contains("signal 9"), "{st}");
    // A crashed VM can be started again.
    env.ok(&["start", "b"]);
    assert_eq!(env.state("b"), "running");
    env.ok(&["destroy", "b"]);
}

#[test]
fn daemon_sigkill_keeps_vms_running_and_reattaches() {
    let mut env = Env::new();
    env.define_guest("p", "hlt", "");
    env.define_guest("q", "spin tern.tick_ms=50", "");
    env.ok(&["start", "p"]);
    env.ok(&["start", "q"]);
    let (pp, pq) = (env.vmm_pid("p"), env.vmm_pid("q"));
    env.kill_daemon();
    let err = env.fail(&["list"]);
    assert!(err.contains("is `tern daemon` running?"), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(pp) && alive(pq), "VMs died with the daemon");
    env.start_daemon();
    let list = env.json(&["list"]);
    let names: Vec<(&str, &str)> =
        list.as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap(), v["state"].as_str().unwrap())).collect();
    assert_eq!(names, [("p", "running"), ("q", "running")]);
    assert_eq!(env.vmm_pid("p"), pp);
    // Still controllable and its console still relayed after re-attaching.
    let before = env.console_log("q").len();
    std::thread::sleep(Duration::from_millis(500));
    assert!(env.console_log("q").len() > before, "console not re-attached");
    env.ok(&["suspend", "p"]);
    assert_eq!(env.state("p"), "paused");
    env.ok(&["resume", "p"]);
    env.ok(&["destroy", "p"]);
    assert!(!alive(pp));
    // A VM that dies while the daemon is down is reported crashed on restart.
    env.kill_daemon();
    // SAFETY: kill() has no memory effects.
    unsafe { libc::kill(pq, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    env.start_daemon();
    env.wait_state("q", "crashed", T);
}

#[test]
fn autostart_after_daemon_restart() {
    let mut env = Env::new();
    env.define_guest("auto", "hlt", "");
    env.define_guest("manual", "hlt", "");
    let out = env.ok(&["autostart", "auto"]);
    assert!(out.contains("marked as autostart"), "{out}");
    assert!(env.ok(&["dump", "auto"]).contains("autostart = true"));
    env.kill_daemon();
    env.start_daemon();
    env.wait_state("auto", "running", T);
    assert_eq!(env.state("manual"), "stopped");
    env.ok(&["autostart", "auto", "--disable"]);
    env.ok(&["destroy", "auto"]);
    env.kill_daemon();
    env.start_daemon();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.state("auto"), "stopped");
}

#[test]
fn concurrent_start_one_wins() {
    let env = Env::new();
    env.define_guest("race", "hlt", "");
    let a = env.cmd(&["start", "race"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let b = env.cmd(&["start", "race"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let wins = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert_eq!(wins, 1, "a: {a:?}\nb: {b:?}");
    let loser = if a.status.success() { &b } else { &a };
    let err = String::from_utf8_lossy(&loser.stderr);
    assert!(err.contains("already running") || err.contains("start in progress"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
    assert_eq!(env.state("race"), "running");
    env.ok(&["destroy", "race"]);
}

#[test]
fn edit_invalid_is_refused_and_valid_is_saved() {
    let env = Env::new();
    env.define_guest("ed", "hlt", "vcpus = 1");
    let before = env.ok(&["dump", "ed"]);
    let o = env.cmd(&["edit", "ed"]).env("EDITOR", "sed -i s/^vcpus\\ =\\ 1/vcpus\\ =\\ 0/").output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("`vcpus`") && err.contains("not changed"), "{err}");
    assert_eq!(env.ok(&["dump", "ed"]), before, "old definition not kept");
    // Broken TOML is refused too.
    let o = env.cmd(&["edit", "ed"]).env("EDITOR", "sed -i s/^memory/memory\\ \\ =\\ =/").output().unwrap();
    assert!(!o.status.success());
    assert_eq!(env.ok(&["dump", "ed"]), before);
    // A valid edit is saved.
    let o = env.cmd(&["edit", "ed"]).env("EDITOR", "sed -i s/^vcpus\\ =\\ 1/vcpus\\ =\\ 2/").output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(env.ok(&["dump", "ed"]).contains("vcpus = 2"));
    // Unchanged files are not re-submitted.
    let o = env.cmd(&["edit", "ed"]).env("EDITOR", "true").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("not changed"));
}

#[test]
fn fifty_vms_defined_and_started_concurrently() {
    let env = Env::new();
    let names: Vec<String> = (0..50).map(|i| format!("m{i:02}")).collect();
    std::thread::scope(|s| {
        for n in &names {
            let env = &env;
            s.spawn(move || env.define_guest(n, "hlt", "memory = \"32M\""));
        }
    });
    let t0 = std::time::Instant::now();
    let children: Vec<_> = names
        .iter()
        .map(|n| env.cmd(&["start", n]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    eprintln!("50 VMs started in {:?}", t0.elapsed());
    let list = env.json(&["list"]);
    let running = list.as_array().unwrap().iter().filter(|v| v["state"] == "running").count();
    assert_eq!(running, 50);
    for n in &names {
        env.ok(&["destroy", n]);
    }
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 0);
    assert_eq!(env.json(&["list", "--all"]).as_array().unwrap().len(), 50);
}

#[test]
fn bad_input_gets_one_line_errors() {
    let env = Env::new();
    let e = env.fail(&["define", "/nonexistent.toml"]);
    assert!(e.contains("/nonexistent.toml"), "{e}");
    let bad = env.dir.join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nmemory = \"64M\"\nvcpus = \"two\"\n").unwrap();
    let e = env.fail(&["define", bad.to_str().unwrap()]);
    assert!(e.contains("line 3"), "{e}");
    std::fs::write(&bad, "name = \"x y\"\nmemory = \"64M\"\n").unwrap();
    assert!(env.fail(&["define", bad.to_str().unwrap()]).contains("`name`"));
    std::fs::write(&bad, "name = \"x\"\nmemory = \"64M\"\n[[disk]]\npath = \"rel.img\"\n").unwrap();
    assert!(env.fail(&["define", bad.to_str().unwrap()]).contains("disk[0].path"));
    assert!(env.fail(&["start", "ghost"]).contains("`ghost` not found"));
    assert!(env.fail(&["vol-create-as", "default", "v", "12Q"]).contains("capacity"));
    assert!(env.fail(&["vol-info", "nope", "--pool", "default"]).contains("not found"));
    assert!(env.fail(&["pool-start", "nopool"]).contains("pool `nopool` not found"));
    assert!(env.fail(&["list", "--connect", "http://x"]).contains("ssh://"));
    // A disk that does not exist fails the start with a clear message.
    env.define_guest("nodisk", "hlt", "[[disk]]\npath = \"/nonexistent/disk.img\"");
    assert!(env.fail(&["start", "nodisk"]).contains("/nonexistent/disk.img"));
    assert_eq!(env.state("nodisk"), "stopped");
    // A VMM that refuses its arguments: the error names the cause.
    env.define_guest("badcpu", "hlt", "cpu_model = \"no-such-model\"");
    let e = env.fail(&["start", "badcpu"]);
    assert!(e.contains("no-such-model"), "{e}");
    env.define_guest("run", "hlt", "");
    env.ok(&["start", "run"]);
    assert!(env.fail(&["undefine", "run"]).contains("destroy it first"));
    assert!(env.fail(&["start", "run"]).contains("already running"));
    env.ok(&["destroy", "run"]);
    let out = env.ok(&["undefine", "run"]);
    assert!(out.contains("undefined"));
    // One daemon per state dir, one per socket.
    let o = std::process::Command::new(manager_common::TERN)
        .args(["daemon", "--state-dir"])
        .arg(&env.state)
        .arg("--socket")
        .arg(env.dir.join("other.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("already running"), "{err}");
    let o = std::process::Command::new(manager_common::TERN)
        .args(["daemon", "--state-dir"])
        .arg(env.dir.join("other-state"))
        .arg("--socket")
        .arg(&env.sock)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("already listening"), "{err}");
    // Unknown by UUID too; and known by UUID.
    let uuid = env.json(&["dominfo", "nodisk"])["uuid"].as_str().unwrap().to_string();
    assert_eq!(env.json(&["domstate", &uuid])["state"], "stopped");
}

#[test]
fn suspend_resume_reboot_setmem_vcpupin_stats() {
    let env = Env::new();
    env.define_guest("k", "hlt", "vcpus = 2");
    env.ok(&["start", "k"]);
    let pid = env.vmm_pid("k");
    env.ok(&["suspend", "k"]);
    assert_eq!(env.state("k"), "paused");
    env.ok(&["resume", "k"]);
    assert_eq!(env.state("k"), "running");

    // setmem: 64 MiB defined, 40 MiB wanted -> balloon target 24 MiB (6144 pages).
    env.ok(&["setmem", "k", "40M"]);
    let stats = env.json(&["domstats", "k"]);
    assert_eq!(stats["counters"]["devices"]["virtio-balloon0"]["target_pages"], 6144, "{stats}");
    assert_eq!(stats["counters"]["vcpu_run_ns"].as_array().unwrap().len(), 2);
    assert!(env.fail(&["setmem", "k", "1G"]).contains("outside"));

    // vcpupin is persisted (and applied live where the VMM supports it).
    env.ok(&["vcpupin", "k", "1", "0"]);
    assert!(env.ok(&["dump", "k"]).contains("[[vcpupin]]\nvcpu = 1\ncpus = [0]"));
    assert!(env.fail(&["vcpupin", "k", "5", "0"]).contains("vCPU 5"));

    // reboot = power button (destroy after the timeout) + start: a new VMM process.
    env.ok(&["reboot", "k", "--timeout", "1"]);
    assert_eq!(env.state("k"), "running");
    assert_ne!(env.vmm_pid("k"), pid);
    env.ok(&["destroy", "k"]);
}

/// Deletes the test network namespace.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "delete", &self.0]).output();
    }
}

fn ip(args: &[&str]) -> String {
    let o = std::process::Command::new("ip").args(args).output().unwrap();
    assert!(o.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn bridge_nic_gets_a_tap_on_the_bridge_in_a_namespace() {
    let ns = format!("tmgr{}", std::process::id());
    ip(&["netns", "add", &ns]);
    let _ns = Netns(ns.clone());
    ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &ns, "link", "set", "br0", "up"]);
    let env = Env::with_netns(Some(&ns));
    env.define_guest("n", "hlt", "[[nic]]\nbridge = \"br0\"\nmac = \"52:54:00:12:34:56\"");
    env.ok(&["start", "n"]);
    let uuid = env.json(&["dominfo", "n"])["uuid"].as_str().unwrap().replace('-', "");
    let tap = format!("tn{}0", &uuid[..10]);
    let on_bridge = ip(&["-n", &ns, "-o", "link", "show", "master", "br0"]);
    assert!(on_bridge.contains(&tap), "{tap} not on br0: {on_bridge}");
    let stats = env.json(&["domstats", "n"]);
    let devs: Vec<&String> = stats["counters"]["devices"].as_object().unwrap().keys().collect();
    assert!(devs.iter().any(|d| d.contains("net")), "no NIC counters: {devs:?}");
    let vmm_log = std::fs::read_to_string(env.state.join("vms/n/vmm.log")).unwrap_or_default();
    assert!(!vmm_log.contains("rror"), "{vmm_log}");
    env.ok(&["destroy", "n"]);
    let links = ip(&["-n", &ns, "-o", "link"]);
    assert!(!links.contains(&tap), "tap {tap} left behind: {links}");
    // A missing bridge is a clear start error.
    env.define_guest("nb", "hlt", "[[nic]]\nbridge = \"nosuchbr\"");
    assert!(env.fail(&["start", "nb"]).contains("bridge `nosuchbr` does not exist"));
}
