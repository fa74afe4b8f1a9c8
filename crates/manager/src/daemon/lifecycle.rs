//! VM lifecycle: define/undefine/edit and start/shutdown/destroy/suspend/
//! resume/reboot, the long ones as asynchronous operations.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{ApiError, Daemon, RunInfo, VmEntry, VmState};
use crate::console::ConsoleHub;
use crate::definition::{SerialMode, VmDefinition};
use crate::process::ProcId;
use crate::shim::RuntimeRecord;
use crate::store::{VmFiles, last_log_line, write_atomic};
use crate::vmproc::{self, ResolvedDisk};

const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

impl Daemon {
    fn persist(&self, def: &VmDefinition) -> Result<(), ApiError> {
        let dir = self.vm_dir(&def.name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
        write_atomic(&dir.join(VmFiles::DEFINITION), def.to_toml().as_bytes())
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// `define`: create a VM, or update one of the same name and UUID.
    pub fn define(&self, text: &str) -> Result<VmDefinition, ApiError> {
        let mut def = VmDefinition::from_toml_raw(text).map_err(|e| ApiError::bad(e.to_string()))?;
        let mut vms = self.vm_lock();
        if let Some(existing) = vms.get(&def.name) {
            if def.uuid.is_empty() {
                def.uuid = existing.def.uuid.clone();
            } else if !def.uuid.eq_ignore_ascii_case(&existing.def.uuid) {
                return Err(ApiError::conflict(format!(
                    "VM `{}` already exists with UUID {}; pick another name",
                    def.name, existing.def.uuid
                )));
            }
        }
        def.fill_defaults();
        def.validate().map_err(|e| ApiError::bad(e.to_string()))?;
        if let Some(other) = vms.values().find(|e| e.def.uuid.eq_ignore_ascii_case(&def.uuid) && e.def.name != def.name)
        {
            return Err(ApiError::conflict(format!("UUID {} is already used by VM `{}`", def.uuid, other.def.name)));
        }
        self.persist(&def)?;
        let action = if let Some(e) = vms.get_mut(&def.name) {
            e.def = def.clone();
            "updated"
        } else {
            vms.insert(
                def.name.clone(),
                VmEntry {
                    def: def.clone(),
                    state: VmState::Stopped,
                    reason: "defined".into(),
                    run: None,
                    busy: None,
                    console: None,
                    destroy_requested: false,
                    taps: Vec::new(),
                },
            );
            "defined"
        };
        self.events.emit("definition", json!({"name": def.name, "action": action}));
        Ok(def)
    }

    /// `edit`: replace the definition of an existing VM (same name and UUID).
    pub fn replace(&self, name: &str, text: &str) -> Result<VmDefinition, ApiError> {
        let def = VmDefinition::from_toml_raw(text).map_err(|e| ApiError::bad(e.to_string()))?;
        if def.name != name {
            return Err(ApiError::bad(format!(
                "definition field `name`: renaming `{name}` to `{}` is not supported",
                def.name
            )));
        }
        let uuid = self.vm_lock().get(name).map(|e| e.def.uuid.clone()).unwrap_or_default();
        if !def.uuid.is_empty() && !def.uuid.eq_ignore_ascii_case(&uuid) {
            return Err(ApiError::bad("definition field `uuid`: cannot be changed".to_string()));
        }
        self.define(text)
    }

    /// `undefine`: forget a stopped VM; optionally delete its pool volumes.
    pub fn undefine(&self, name: &str, remove_storage: bool) -> Result<Value, ApiError> {
        let mut vms = self.vm_lock();
        let e = vms.get(name).ok_or_else(|| ApiError::not_found(format!("VM `{name}` not found")))?;
        if e.state.active() || e.busy.is_some() {
            return Err(ApiError::conflict(format!("VM `{name}` is {}; destroy it first", e.state.as_str())));
        }
        let mut removed = Vec::new();
        if remove_storage {
            for d in e.def.disks.iter().filter_map(|d| d.vol.as_deref()) {
                self.delete_volume_ref(d)?;
                removed.push(d.to_string());
            }
        }
        vms.remove(name);
        let _ = std::fs::remove_dir_all(self.vm_dir(name));
        self.events.emit("definition", json!({"name": name, "action": "undefined"}));
        Ok(json!({"name": name, "removed_volumes": removed}))
    }

    pub fn set_autostart(&self, name: &str, enabled: bool) -> Result<(), ApiError> {
        let mut vms = self.vm_lock();
        let e = vms.get_mut(name).ok_or_else(|| ApiError::not_found(format!("VM `{name}` not found")))?;
        let mut def = e.def.clone();
        def.autostart = enabled;
        self.persist(&def)?;
        e.def = def;
        Ok(())
    }

    /// Mark a VM as starting (the check that makes two concurrent starts
    /// fail cleanly) and run the start in an operation.
    pub fn begin_start(self: &Arc<Self>, name: &str, kind: &str) -> Result<super::Operation, ApiError> {
        let offset = {
            let mut vms = self.vm_lock();
            let e = vms.get_mut(name).ok_or_else(|| ApiError::not_found(format!("VM `{name}` not found")))?;
            if let Some(op) = e.busy {
                return Err(ApiError::conflict(format!("VM `{name}` is busy ({op} in progress)")));
            }
            if e.state.active() {
                return Err(ApiError::conflict(format!("VM `{name}` is already {}", e.state.as_str())));
            }
            e.busy = Some("start");
            self.set_state(e, VmState::Starting, kind);
            std::fs::metadata(self.vm_dir(name).join(VmFiles::CONSOLE_LOG)).map(|m| m.len()).unwrap_or(0)
        };
        let op = self.ops.create("start", name);
        let (d, id, n) = (self.clone(), op.id.clone(), name.to_string());
        std::thread::spawn(move || {
            let res = d.do_start(&n).map(|()| json!({"console_offset": offset}));
            d.end_op(&n, &id, res);
        });
        Ok(op)
    }

    /// Finish an operation: clear the VM's busy mark and publish the outcome.
    pub(crate) fn end_op(&self, name: &str, id: &str, res: Result<Value, ApiError>) {
        if let Some(e) = self.vm_lock().get_mut(name) {
            e.busy = None;
        }
        if let Some(op) = self.ops.finish(id, res.map_err(|e| e.msg)) {
            self.events.emit(
                "operation",
                json!({"id": op.id, "kind": op.kind, "target": name, "status": op.status, "error": op.error}),
            );
        }
    }

    fn do_start(&self, name: &str) -> Result<(), ApiError> {
        let result = self.launch(name);
        if let Err(err) = &result {
            let mut vms = self.vm_lock();
            if let Some(e) = vms.get_mut(name) {
                if let Some(vmm) = e.run.as_ref().and_then(|r| r.vmm) {
                    vmm.signal(libc::SIGKILL);
                }
                self.record_end(e, VmState::Stopped, format!("start failed: {}", err.msg));
            }
        }
        result
    }

    fn launch(&self, name: &str) -> Result<(), ApiError> {
        let def =
            self.vm_lock().get(name).map(|e| e.def.clone()).ok_or_else(|| ApiError::not_found(name.to_string()))?;
        let dir = self.vm_dir(name);
        // sun_path holds 108 bytes including the NUL.
        let longest =
            dir.join(VmFiles::CONTROL_SOCK).as_os_str().len().max(dir.join(VmFiles::SERIAL_SOCK).as_os_str().len());
        if longest > 107 {
            return Err(ApiError::bad(format!(
                "state dir path is too long for the VM's Unix sockets ({} > 107 bytes); use a shorter --state-dir",
                longest
            )));
        }
        let disks = def.disks.iter().map(|d| self.resolve_disk(d)).collect::<Result<Vec<ResolvedDisk>, _>>()?;
        let mut taps = Vec::new();
        let mut created = Vec::new();
        for (i, nic) in def.nics.iter().enumerate() {
            let mac = nic.mac.clone().unwrap_or_default();
            if let Some(t) = &nic.tap {
                taps.push((t.clone(), mac));
                continue;
            }
            let bridge = nic.bridge.as_ref().or(nic.network.as_ref()).cloned().unwrap_or_default();
            let tap = crate::net::tap_name(&def.uuid, i);
            crate::net::delete_tap(&tap);
            if let Err(msg) = crate::net::create_tap_on_bridge(&tap, &bridge) {
                created.iter().for_each(|t: &String| crate::net::delete_tap(t));
                return Err(ApiError::bad(format!("nic[{i}]: {msg}")));
            }
            created.push(tap.clone());
            taps.push((tap, mac));
        }
        let _ = write_atomic(&dir.join("taps"), created.join("\n").as_bytes());
        for f in [VmFiles::RUNTIME, VmFiles::EXIT, VmFiles::CONTROL_SOCK, VmFiles::SERIAL_SOCK] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let args = vmproc::run_args(&def, &dir, &disks, &taps);
        let console = (def.serial == SerialMode::Console)
            .then(|| ConsoleHub::spawn(name, dir.join(VmFiles::SERIAL_SOCK), dir.join(VmFiles::CONSOLE_LOG)));
        let child = vmproc::spawn_shim(&self.cfg.exe, &dir, &args);
        {
            let mut vms = self.vm_lock();
            let e = vms.get_mut(name).ok_or_else(|| ApiError::not_found(name.to_string()))?;
            e.taps = created;
            e.console = console;
            let child =
                child.map_err(|err| ApiError::internal(format!("cannot start {}: {err}", self.cfg.exe.display())))?;
            let shim = ProcId::of(child.id() as i32);
            // Lets a restarted daemon find a VM whose start it did not see finish.
            if let Some(p) = shim {
                let _ = write_atomic(&dir.join("shim.json"), &serde_json::to_vec(&p).unwrap_or_default());
            }
            e.run = Some(RunInfo { shim, shim_child: true, vmm: None, started_unix_ms: crate::shim::now_ms() });
        }
        self.wait_until_up(name, &dir)
    }

    /// Wait for the VMM's control socket to answer, or for it to fail.
    fn wait_until_up(&self, name: &str, dir: &std::path::Path) -> Result<(), ApiError> {
        let deadline = Instant::now() + self.cfg.start_timeout;
        let sock = dir.join(VmFiles::CONTROL_SOCK);
        let mut vmm: Option<ProcId> = None;
        loop {
            if dir.join(VmFiles::EXIT).exists() {
                let why =
                    last_log_line(&dir.join(VmFiles::VMM_LOG)).unwrap_or_else(|| "VMM exited during start".into());
                // A guest that powers off immediately (the demo guest) did start.
                let exit = std::fs::read(dir.join(VmFiles::EXIT)).ok();
                let clean = exit
                    .and_then(|b| serde_json::from_slice::<crate::shim::ExitRecord>(&b).ok())
                    .is_some_and(|x| x.clean());
                if clean {
                    let mut vms = self.vm_lock();
                    if let Some(e) = vms.get_mut(name) {
                        self.set_state(e, VmState::Running, "started");
                        self.record_end(e, VmState::Stopped, "guest powered off".into());
                    }
                    return Ok(());
                }
                return Err(ApiError::bad(why));
            }
            if vmm.is_none() {
                let rec: Option<RuntimeRecord> =
                    std::fs::read(dir.join(VmFiles::RUNTIME)).ok().and_then(|b| serde_json::from_slice(&b).ok());
                if let Some(rec) = rec {
                    vmm = Some(rec.vmm);
                    if let Some(r) = self.vm_lock().get_mut(name).and_then(|e| e.run.as_mut()) {
                        r.vmm = Some(rec.vmm);
                        r.started_unix_ms = rec.started_unix_ms;
                    }
                }
            }
            if vmm.is_some() && sock.exists() && api::call(&sock, &api::Request::Info, CONTROL_TIMEOUT).is_ok() {
                let mut vms = self.vm_lock();
                if let Some(e) = vms.get_mut(name) {
                    self.set_state(e, VmState::Running, "started");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ApiError::internal(format!(
                    "VM `{name}` did not bring up its control socket within {:?}",
                    self.cfg.start_timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(if vmm.is_some() { 5 } else { 2 }));
        }
    }

    /// The control socket of a running VM, or a conflict error.
    fn control(&self, name: &str) -> Result<PathBuf, ApiError> {
        let vms = self.vm_lock();
        let e = vms.get(name).ok_or_else(|| ApiError::not_found(format!("VM `{name}` not found")))?;
        if !matches!(e.state, VmState::Running | VmState::Paused | VmState::ShuttingDown) {
            return Err(ApiError::conflict(format!("VM `{name}` is not running (state: {})", e.state.as_str())));
        }
        Ok(self.vm_dir(name).join(VmFiles::CONTROL_SOCK))
    }

    pub fn vm_call(&self, name: &str, req: &api::Request) -> Result<Option<Value>, ApiError> {
        let sock = self.control(name)?;
        api::call(&sock, req, CONTROL_TIMEOUT).map_err(|e| ApiError::internal(format!("VM `{name}`: {e}")))
    }

    pub fn suspend(&self, name: &str, pause: bool) -> Result<Value, ApiError> {
        let req = if pause { api::Request::Pause } else { api::Request::Resume };
        self.vm_call(name, &req)?;
        let mut vms = self.vm_lock();
        if let Some(e) = vms.get_mut(name) {
            let st = if pause { VmState::Paused } else { VmState::Running };
            self.set_state(e, st, if pause { "suspended" } else { "resumed" });
        }
        Ok(json!({"name": name}))
    }

    fn wait_state(&self, name: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let active = self.vm_lock().get(name).is_some_and(|e| e.run.is_some());
            if !active {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pull the plug: Stop request, then SIGKILL if the VMM does not go.
    pub fn destroy_now(&self, name: &str) -> Result<Value, ApiError> {
        let (vmm, shim, sock) = {
            let mut vms = self.vm_lock();
            let e = vms.get_mut(name).ok_or_else(|| ApiError::not_found(format!("VM `{name}` not found")))?;
            if e.run.is_none() {
                return Err(ApiError::conflict(format!("VM `{name}` is not running (state: {})", e.state.as_str())));
            }
            e.destroy_requested = true;
            let run = e.run.as_ref();
            (run.and_then(|r| r.vmm), run.and_then(|r| r.shim), self.vm_dir(name).join(VmFiles::CONTROL_SOCK))
        };
        let _ = api::call(&sock, &api::Request::Stop, Duration::from_secs(2));
        if !self.wait_state(name, Duration::from_secs(3)) {
            if let Some(p) = vmm {
                p.signal(libc::SIGKILL);
            }
            // Still starting (no VMM pid yet): the shim leads its own session,
            // so its process group is exactly this VM's processes.
            if let Some(s) = shim.filter(|s| s.alive() && vmm.is_none()) {
                // SAFETY: kill() has no memory effects; the group is the shim's session.
                unsafe { libc::kill(-s.pid, libc::SIGKILL) };
            }
            if !self.wait_state(name, Duration::from_secs(5)) {
                return Err(ApiError::internal(format!("VM `{name}` did not stop after SIGKILL")));
            }
        }
        Ok(json!({"name": name}))
    }

    /// Power button, wait, then destroy if the guest ignored it.
    fn shutdown_now(&self, name: &str, timeout: Duration) -> Result<Value, ApiError> {
        self.vm_call(name, &api::Request::PowerButton)?;
        if let Some(e) = self.vm_lock().get_mut(name) {
            self.set_state(e, VmState::ShuttingDown, "power button pressed");
        }
        if self.wait_state(name, timeout) {
            return Ok(json!({"name": name, "forced": false}));
        }
        self.destroy_now(name)?;
        Ok(json!({"name": name, "forced": true}))
    }

    /// Run `f` as an operation on a running VM, marking it busy.
    pub fn begin_op<F>(self: &Arc<Self>, name: &str, kind: &'static str, f: F) -> Result<super::Operation, ApiError>
    where
        F: FnOnce(&Daemon) -> Result<Value, ApiError> + Send + 'static,
    {
        {
            let mut vms = self.vm_lock();
            let e = vms.get_mut(name).ok_or_else(|| ApiError::not_found(format!("VM `{name}` not found")))?;
            // destroy is the way out of any other operation.
            if let (Some(op), false) = (e.busy, kind == "destroy") {
                return Err(ApiError::conflict(format!("VM `{name}` is busy ({op} in progress)")));
            }
            if e.run.is_none() {
                return Err(ApiError::conflict(format!("VM `{name}` is not running (state: {})", e.state.as_str())));
            }
            if kind != "destroy" {
                e.busy = Some(kind);
            }
        }
        let op = self.ops.create(kind, name);
        let (d, id, n) = (self.clone(), op.id.clone(), name.to_string());
        std::thread::spawn(move || {
            let res = f(&d);
            if kind == "destroy" {
                if let Some(o) = d.ops.finish(&id, res.map_err(|e| e.msg)) {
                    d.events.emit(
                        "operation",
                        json!({"id": o.id, "kind": o.kind, "target": n, "status": o.status, "error": o.error}),
                    );
                }
            } else {
                d.end_op(&n, &id, res);
            }
        });
        Ok(op)
    }

    pub fn begin_shutdown(self: &Arc<Self>, name: &str, timeout: Duration) -> Result<super::Operation, ApiError> {
        let n = name.to_string();
        self.begin_op(name, "shutdown", move |d| d.shutdown_now(&n, timeout))
    }

    pub fn begin_destroy(self: &Arc<Self>, name: &str) -> Result<super::Operation, ApiError> {
        let n = name.to_string();
        self.begin_op(name, "destroy", move |d| d.destroy_now(&n))
    }

    /// Reboot: graceful shutdown (destroy after `timeout`), then start again.
    pub fn begin_reboot(self: &Arc<Self>, name: &str, timeout: Duration) -> Result<super::Operation, ApiError> {
        let n = name.to_string();
        let me = self.clone();
        self.begin_op(name, "reboot", move |d| {
            d.shutdown_now(&n, timeout)?;
            if let Some(e) = d.vm_lock().get_mut(&n) {
                e.busy = None;
            }
            let op = me.begin_start(&n, "reboot")?;
            let done = d.ops.wait(&op.id, d.cfg.start_timeout + Duration::from_secs(5));
            match done {
                Some(o) if o.status == super::OpStatus::Success => Ok(json!({"name": n})),
                Some(o) => Err(ApiError::internal(o.error.unwrap_or_else(|| "restart failed".into()))),
                None => Err(ApiError::internal("restart operation vanished")),
            }
        })
    }
}
