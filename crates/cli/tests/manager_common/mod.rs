//! Shared harness for the manager end-to-end tests: a temp state dir and
//! socket per test, a real `tern daemon`, the test guest on disk, and
//! cleanup that kills every VM the test started.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const TERN: &str = env!("CARGO_BIN_EXE_tern");

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub struct Env {
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub state: PathBuf,
    pub guest: PathBuf,
    daemon: Option<Child>,
    /// Run the daemon (and so its VMs) inside this network namespace.
    pub netns: Option<String>,
}

impl Env {
    /// A fresh environment with a running daemon.
    pub fn new() -> Env {
        Self::with_netns(None)
    }

    /// Like `new`, with the daemon inside network namespace `netns`.
    pub fn with_netns(netns: Option<&str>) -> Env {
        // Short paths: Unix socket paths are limited to 108 bytes.
        let dir = PathBuf::from(format!("/tmp/tm{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let guest = dir.join("guest.elf");
        test_guest::write_guest(&guest).unwrap();
        let mut env = Env {
            sock: dir.join("t.sock"),
            state: dir.join("s"),
            guest,
            dir,
            daemon: None,
            netns: netns.map(String::from),
        };
        env.start_daemon();
        env
    }

    pub fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("daemon.log")).unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, TERN]);
                c
            }
            None => Command::new(TERN),
        };
        let child = cmd
            .args(["daemon", "--log", "info", "--state-dir"])
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.sock)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.tern(&["list"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "daemon did not come up; log: {}",
            std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
        );
    }

    /// SIGKILL the daemon (VMs must survive).
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(TERN);
        c.args(args).env("TERN_SOCKET", &self.sock).env_remove("TERN_CONNECT").stdin(Stdio::null());
        c
    }

    pub fn tern(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.tern(args);
        assert!(
            o.status.success(),
            "tern {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Run and require failure with a one-line error; returns that line.
    pub fn fail(&self, args: &[&str]) -> String {
        let o = self.tern(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "tern {args:?} unexpectedly succeeded: {}", String::from_utf8_lossy(&o.stdout));
        assert_eq!(err.trim_end().lines().count(), 1, "error is not one line: {err:?}");
        assert!(!err.contains("panicked"), "{err}");
        err.trim().to_string()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Write and define a test-guest VM; `scenario` like "hlt" or "spin tern.tick_ms=50".
    pub fn define_guest(&self, name: &str, scenario: &str, extra: &str) {
        let mem = if extra.contains("memory =") { "" } else { "memory = \"64M\"\n" };
        let toml = format!(
            "name = \"{name}\"\n{mem}{extra}\n[boot]\nkernel = \"{}\"\ncmdline = \"tern.test={scenario}\"\n",
            self.guest.display()
        );
        let f = self.dir.join(format!("{name}.toml"));
        std::fs::write(&f, toml).unwrap();
        self.ok(&["define", f.to_str().unwrap()]);
    }

    pub fn state(&self, name: &str) -> String {
        self.json(&["domstate", name])["state"].as_str().unwrap_or("").to_string()
    }

    pub fn wait_state(&self, name: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            last = self.state(name);
            if last == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{name}: state {last}, wanted {want}");
    }

    pub fn vmm_pid(&self, name: &str) -> i32 {
        self.json(&["dominfo", name])["pid"].as_i64().expect("running VM has a pid") as i32
    }

    pub fn console_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.state.join("vms").join(name).join("console.log")).unwrap_or_default()
    }

    pub fn wait_console(&self, name: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.console_log(name);
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "{name}: `{needle}` not in console log: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; check its state letter.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

fn kill_vms(state: &Path) {
    for e in std::fs::read_dir(state.join("vms")).into_iter().flatten().flatten() {
        let rt = e.path().join("runtime.json");
        let Ok(text) = std::fs::read_to_string(rt) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        for who in ["vmm", "shim"] {
            if let Some(pid) = v[who]["pid"].as_i64() {
                // SAFETY: kill() has no memory effects.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill_daemon();
        kill_vms(&self.state);
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
