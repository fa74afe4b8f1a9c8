//! `tern _shim`: the small per-VM parent (conmon's role). The daemon starts
//! it in a new session; it starts `tern run`, records both pids in
//! runtime.json and, when the VMM exits, its exit status in exit.json. That
//! way the daemon learns how a VM ended even if the daemon was not running
//! when it happened (a re-adopted VMM is not our child, so waitpid cannot
//! tell us), and VMs never depend on the daemon process staying alive.

use std::fs::OpenOptions;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::process::ProcId;
use crate::store::{VmFiles, write_atomic};

/// runtime.json: written by the shim once the VMM process exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeRecord {
    pub shim: ProcId,
    pub vmm: ProcId,
    pub started_unix_ms: u64,
}

/// exit.json: how the VMM process ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExitRecord {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitRecord {
    /// `tern run` exits 0 when the guest powers off.
    pub fn clean(&self) -> bool {
        self.code == Some(0)
    }
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("VMM exited with status {c}"),
            (_, Some(s)) => format!("VMM killed by signal {s}"),
            _ => "VMM ended".into(),
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Run the shim: `vmm_args` are the arguments after the tern binary (`run ...`).
pub fn main(dir: &Path, vmm_args: &[String]) -> i32 {
    for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGPIPE] {
        // SAFETY: setting a signal to SIG_IGN installs no handler code.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let log_path = dir.join(VmFiles::VMM_LOG);
    let log = match OpenOptions::new().create(true).append(true).open(&log_path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tern _shim: cannot open {}: {e}", log_path.display());
            return 1;
        }
    };
    let exe: PathBuf = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return record_failure(dir, &format!("cannot find the tern binary: {e}")),
    };
    let stderr = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return record_failure(dir, &format!("cannot dup log: {e}")),
    };
    let mut child = match Command::new(&exe).args(vmm_args).stdin(Stdio::null()).stdout(log).stderr(stderr).spawn() {
        Ok(c) => c,
        Err(e) => return record_failure(dir, &format!("cannot start {}: {e}", exe.display())),
    };
    let shim = ProcId::of(std::process::id() as i32);
    let vmm = ProcId::of(child.id() as i32);
    if let (Some(shim), Some(vmm)) = (shim, vmm) {
        let rec = RuntimeRecord { shim, vmm, started_unix_ms: now_ms() };
        let _ = write_atomic(&dir.join(VmFiles::RUNTIME), &serde_json::to_vec(&rec).unwrap_or_default());
    }
    let exit = match child.wait() {
        Ok(st) => ExitRecord { code: st.code(), signal: st.signal() },
        Err(_) => ExitRecord { code: None, signal: None },
    };
    let _ = write_atomic(&dir.join(VmFiles::EXIT), &serde_json::to_vec(&exit).unwrap_or_default());
    0
}

fn record_failure(dir: &Path, msg: &str) -> i32 {
    use std::io::Write;
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(dir.join(VmFiles::VMM_LOG)) {
        let _ = writeln!(f, "tern _shim: {msg}");
    }
    let exit = ExitRecord { code: Some(127), signal: None };
    let _ = write_atomic(&dir.join(VmFiles::EXIT), &serde_json::to_vec(&exit).unwrap_or_default());
    1
}
