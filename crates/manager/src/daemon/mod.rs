//! The daemon's model: every defined VM with its run state, the storage
//! pools, operations and events, plus the supervisor that watches running
//! VMs and re-adopts them after a daemon restart.

pub mod lifecycle;
pub mod ops;
pub mod pools;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::console::ConsoleHub;
use crate::definition::VmDefinition;
use crate::process::{ProcId, try_reap};
use crate::shim::{ExitRecord, RuntimeRecord};
use crate::store::{Layout, VmFiles, read_to_string, write_atomic};

pub use ops::{Events, OpStatus, Operation, Operations};

/// An error the API returns: an HTTP status and a one-line message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{msg}")]
pub struct ApiError {
    pub status: u16,
    pub msg: String,
}

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> Self {
        ApiError { status: 400, msg: msg.into() }
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiError { status: 404, msg: msg.into() }
    }
    pub fn conflict(msg: impl Into<String>) -> Self {
        ApiError { status: 409, msg: msg.into() }
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        ApiError { status: 500, msg: msg.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    Stopped,
    Starting,
    Running,
    Paused,
    ShuttingDown,
    Crashed,
}

impl VmState {
    pub fn active(self) -> bool {
        matches!(self, VmState::Starting | VmState::Running | VmState::Paused | VmState::ShuttingDown)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting-down",
            VmState::Crashed => "crashed",
        }
    }
}

/// The processes of a running VM.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub shim: Option<ProcId>,
    /// The shim is our child (started by this daemon instance): reap it.
    pub shim_child: bool,
    pub vmm: Option<ProcId>,
    pub started_unix_ms: u64,
}

/// status.json: the last stopped/crashed state, kept across daemon restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StatusRecord {
    state: VmState,
    reason: String,
}

pub struct VmEntry {
    pub def: VmDefinition,
    pub state: VmState,
    /// Why it is in this state (e.g. "guest powered off", "VMM killed by signal 9").
    pub reason: String,
    pub run: Option<RunInfo>,
    /// A lifecycle operation in progress ("start", "shutdown", ...).
    pub busy: Option<&'static str>,
    pub console: Option<Arc<ConsoleHub>>,
    pub destroy_requested: bool,
    /// TAP devices the daemon created for bridge NICs (deleted on stop).
    pub taps: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    /// The `tern` binary used to run VMs (`tern _shim -- run ...`).
    pub exe: PathBuf,
    /// How long a VM may take to bring up its control socket.
    pub start_timeout: Duration,
}

pub struct Daemon {
    pub cfg: DaemonConfig,
    pub layout: Layout,
    pub vms: Mutex<BTreeMap<String, VmEntry>>,
    pub pools: Mutex<BTreeMap<String, pools::PoolEntry>>,
    pub ops: Operations,
    pub events: Events,
}

impl Daemon {
    /// Load definitions and pools, re-adopt running VMs. Does not autostart.
    pub fn load(cfg: DaemonConfig) -> Result<Arc<Self>, ApiError> {
        let layout = Layout::new(&cfg.state_dir);
        layout.create().map_err(|e| ApiError::internal(e.to_string()))?;
        let d = Arc::new(Daemon {
            cfg,
            layout,
            vms: Mutex::new(BTreeMap::new()),
            pools: Mutex::new(BTreeMap::new()),
            ops: Operations::default(),
            events: Events::default(),
        });
        d.load_pools()?;
        for name in d.layout.vm_names() {
            let dir = d.layout.vm_dir(&name);
            let text = match read_to_string(&dir.join(VmFiles::DEFINITION)) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!("skipping VM {name}: {e}");
                    continue;
                }
            };
            let def = match VmDefinition::from_toml(&text) {
                Ok(def) if def.name == name => def,
                Ok(def) => {
                    tracing::error!("skipping {}: its name is `{}`, not the directory's", dir.display(), def.name);
                    continue;
                }
                Err(e) => {
                    tracing::error!("skipping VM {name}: {e}");
                    continue;
                }
            };
            let entry = d.adopt(def, &dir);
            d.vm_lock().insert(name, entry);
        }
        Ok(d)
    }

    pub fn vm_lock(&self) -> MutexGuard<'_, BTreeMap<String, VmEntry>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.layout.vm_dir(name)
    }

    /// Rebuild one VM's run state from its files (daemon start).
    fn adopt(&self, def: VmDefinition, dir: &Path) -> VmEntry {
        let mut e = VmEntry {
            def,
            state: VmState::Stopped,
            reason: String::new(),
            run: None,
            busy: None,
            console: None,
            destroy_requested: false,
            taps: Vec::new(),
        };
        let read_runtime = || -> Option<RuntimeRecord> {
            std::fs::read(dir.join(VmFiles::RUNTIME)).ok().and_then(|b| serde_json::from_slice(&b).ok())
        };
        let mut runtime = read_runtime();
        // The previous daemon died while starting this VM: give its shim a
        // moment to record the VMM it started.
        let shim: Option<ProcId> =
            std::fs::read(dir.join("shim.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while runtime.is_none() && shim.is_some_and(|s| s.alive()) && !dir.join(VmFiles::EXIT).exists() {
            if std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            runtime = read_runtime();
        }
        let exit = read_exit(dir);
        match (runtime, exit) {
            (Some(rt), None) if rt.vmm.alive() => {
                e.state = VmState::Running;
                e.reason = "re-attached after daemon restart".into();
                e.run = Some(RunInfo {
                    shim: Some(rt.shim).filter(ProcId::alive),
                    shim_child: false,
                    vmm: Some(rt.vmm),
                    started_unix_ms: rt.started_unix_ms,
                });
                let sock = dir.join(VmFiles::CONTROL_SOCK);
                if let Ok(Some(v)) = api::call(&sock, &api::Request::Info, Duration::from_secs(2))
                    && v.get("state").and_then(|s| s.as_str()) == Some("paused")
                {
                    e.state = VmState::Paused;
                }
                if e.def.serial == crate::definition::SerialMode::Console {
                    e.console = Some(ConsoleHub::spawn(
                        &e.def.name,
                        dir.join(VmFiles::SERIAL_SOCK),
                        dir.join(VmFiles::CONSOLE_LOG),
                    ));
                }
                e.taps = std::fs::read_to_string(dir.join("taps"))
                    .map(|s| s.lines().map(String::from).collect())
                    .unwrap_or_default();
            }
            (Some(_), None) => {
                self.record_end(
                    &mut e,
                    VmState::Crashed,
                    "VMM process vanished while the daemon was not running".into(),
                );
            }
            (_, Some(exit)) => {
                let (state, reason) = exit_state(&exit, false);
                self.record_end(&mut e, state, reason);
            }
            (None, None) => {
                let st: Option<StatusRecord> =
                    std::fs::read(dir.join(VmFiles::STATUS)).ok().and_then(|b| serde_json::from_slice(&b).ok());
                if let Some(st) = st {
                    e.state = if st.state == VmState::Crashed { VmState::Crashed } else { VmState::Stopped };
                    e.reason = st.reason;
                }
            }
        }
        e
    }

    /// A VM's processes are gone: settle its final state, clean up, persist.
    pub fn record_end(&self, e: &mut VmEntry, state: VmState, reason: String) {
        let dir = self.vm_dir(&e.def.name);
        if let Some(c) = e.console.take() {
            c.stop();
        }
        for tap in e.taps.drain(..) {
            crate::net::delete_tap(&tap);
        }
        for f in [VmFiles::RUNTIME, VmFiles::EXIT, VmFiles::CONTROL_SOCK, VmFiles::SERIAL_SOCK, "taps", "shim.json"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        // Our own shim child may still be finishing (e.g. after a failed
        // start): reap it in the background so it does not stay a zombie.
        if let Some(RunInfo { shim: Some(shim), shim_child: true, .. }) = e.run.take() {
            let pid = shim.pid;
            let _ = std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
                let mut status = 0;
                // SAFETY: waitpid on our own child; writes only to `status`.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            });
        }
        let rec = StatusRecord { state, reason: reason.clone() };
        let _ = write_atomic(&dir.join(VmFiles::STATUS), &serde_json::to_vec(&rec).unwrap_or_default());
        let prev = e.state;
        e.state = state;
        e.reason = reason.clone();
        e.run = None;
        e.destroy_requested = false;
        if prev != state {
            self.events.emit(
                "vm",
                json!({"name": e.def.name, "state": state.as_str(), "previous": prev.as_str(), "reason": reason}),
            );
        }
    }

    pub fn set_state(&self, e: &mut VmEntry, state: VmState, reason: &str) {
        let prev = e.state;
        e.state = state;
        e.reason = reason.into();
        if prev != state {
            self.events.emit(
                "vm",
                json!({"name": e.def.name, "state": state.as_str(), "previous": prev.as_str(), "reason": reason}),
            );
        }
    }

    /// One supervision pass over the running VMs (called every 100 ms).
    pub fn supervise(&self) {
        let mut vms = self.vm_lock();
        for e in vms.values_mut() {
            // A starting VM is watched by its start operation.
            if e.state == VmState::Starting {
                continue;
            }
            let Some(run) = e.run.clone() else { continue };
            if let (true, Some(s)) = (run.shim_child, run.shim) {
                try_reap(s.pid);
            }
            let dir = self.vm_dir(&e.def.name);
            if let Some(exit) = read_exit(&dir) {
                let (state, reason) = exit_state(&exit, e.destroy_requested);
                self.record_end(e, state, reason);
                continue;
            }
            let vmm_alive = run.vmm.is_some_and(|p| p.alive());
            let shim_alive = run.shim.is_some_and(|p| p.alive());
            if !vmm_alive && !shim_alive {
                let (state, reason) = if e.destroy_requested {
                    (VmState::Stopped, "destroyed".to_string())
                } else {
                    (VmState::Crashed, "VMM process disappeared without an exit record".to_string())
                };
                self.record_end(e, state, reason);
            }
        }
    }

    /// Run the supervisor loop in a thread.
    pub fn spawn_supervisor(self: &Arc<Self>) {
        let d = self.clone();
        let _ = std::thread::Builder::new().name("supervisor".into()).spawn(move || {
            loop {
                // A bug in one pass must not end supervision of every VM.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.supervise())).is_err() {
                    tracing::error!("supervisor pass panicked; continuing");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }

    /// Start every VM marked autostart that is not running.
    pub fn autostart(self: &Arc<Self>) {
        let names: Vec<String> = self
            .vm_lock()
            .values()
            .filter(|e| e.def.autostart && !e.state.active())
            .map(|e| e.def.name.clone())
            .collect();
        for name in names {
            if let Err(e) = self.begin_start(&name, "autostart") {
                tracing::warn!("autostart of {name} failed: {e}");
            }
        }
    }

    /// Find a VM by name or UUID; returns its name.
    pub fn resolve(&self, name_or_uuid: &str) -> Result<String, ApiError> {
        let vms = self.vm_lock();
        if vms.contains_key(name_or_uuid) {
            return Ok(name_or_uuid.to_string());
        }
        vms.values()
            .find(|e| e.def.uuid.eq_ignore_ascii_case(name_or_uuid))
            .map(|e| e.def.name.clone())
            .ok_or_else(|| ApiError::not_found(format!("VM `{name_or_uuid}` not found (see `tern list --all`)")))
    }
}

fn read_exit(dir: &Path) -> Option<ExitRecord> {
    std::fs::read(dir.join(VmFiles::EXIT)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

fn exit_state(exit: &ExitRecord, destroy_requested: bool) -> (VmState, String) {
    if destroy_requested {
        (VmState::Stopped, "destroyed".into())
    } else if exit.clean() {
        (VmState::Stopped, "guest powered off".into())
    } else {
        (VmState::Crashed, exit.describe())
    }
}
