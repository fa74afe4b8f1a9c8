//! The REST API: `/1.0/...` routes mapped onto the daemon model. Errors are
//! `{"error": "..."}` with a 4xx/5xx status; long operations answer 202 with
//! the operation object (poll or wait on `/1.0/operations/ID?wait=SECONDS`).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::daemon::{ApiError, Daemon, Operation, VmEntry};
use crate::http::Request;
use crate::process;
use crate::storage::{PoolDefinition, VolumeCreate};
use crate::store::VmFiles;

pub type Reply = Result<(u16, Value), ApiError>;

fn body<T: for<'de> Deserialize<'de>>(req: &Request) -> Result<T, ApiError> {
    serde_json::from_slice(&req.body).map_err(|e| ApiError::bad(format!("request body: {e}")))
}

fn accepted(op: Operation) -> Reply {
    Ok((202, serde_json::to_value(op).unwrap_or_default()))
}

fn ok(v: Value) -> Reply {
    Ok((200, v))
}

/// A VM as the API shows it; `detail` adds host CPU time and RSS (read
/// from /proc, which `list` skips to stay fast with many VMs).
pub fn vm_json(d: &Daemon, e: &VmEntry, detail: bool) -> Value {
    let vmm = e.run.as_ref().and_then(|r| r.vmm).filter(|_| detail);
    let pid = e.run.as_ref().and_then(|r| r.vmm).map(|p| p.pid);
    json!({
        "name": e.def.name,
        "uuid": e.def.uuid,
        "state": e.state.as_str(),
        "reason": e.reason,
        "autostart": e.def.autostart,
        "vcpus": e.def.vcpus,
        "memory_mib": e.def.memory.0,
        "pid": pid,
        "started_unix_ms": e.run.as_ref().map(|r| r.started_unix_ms),
        "cpu_time_ns": vmm.and_then(|p| process::cpu_time_ns(p.pid)),
        "rss_kib": vmm.and_then(|p| process::rss_kib(p.pid)),
        "busy": e.busy,
        "dir": d.vm_dir(&e.def.name),
    })
}

#[derive(Deserialize)]
struct DefineBody {
    toml: String,
}

#[derive(Deserialize)]
struct StateBody {
    action: String,
    #[serde(default)]
    timeout: Option<u64>,
}

#[derive(Deserialize)]
struct Enabled {
    enabled: bool,
}

#[derive(Deserialize)]
struct PinBody {
    vcpu: u32,
    cpus: Vec<usize>,
}

#[derive(Deserialize)]
struct MemBody {
    mib: u64,
}

#[derive(Deserialize)]
struct ResizeBody {
    capacity: u64,
}

#[derive(Deserialize)]
struct CloneBody {
    name: String,
}

/// Dispatch one request (everything except the streaming endpoints).
pub fn handle(d: &Arc<Daemon>, req: &Request) -> Reply {
    let seg: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let m = req.method.as_str();
    match (m, seg.as_slice()) {
        ("GET", []) => ok(json!(["/1.0"])),
        ("GET", ["1.0"]) => ok(json!({
            "api_version": "1.0", "server": "tern", "server_version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(), "rss_kib": process::rss_kib(std::process::id() as i32),
            "state_dir": d.cfg.state_dir, "vms": d.vm_lock().len(),
        })),
        ("GET", ["1.0", "openapi.json"]) => ok(crate::openapi::document()),
        ("GET", ["1.0", "operations"]) => ok(serde_json::to_value(d.ops.list()).unwrap_or_default()),
        ("GET", ["1.0", "operations", id]) => {
            let wait = req.query.get("wait").and_then(|w| w.parse::<f64>().ok()).filter(|w| w.is_finite());
            let op = match wait {
                Some(s) => d.ops.wait(id, Duration::from_secs_f64(s.clamp(0.0, 3600.0))),
                None => d.ops.get(id),
            };
            let op = op.ok_or_else(|| ApiError::not_found(format!("operation `{id}` not found")))?;
            ok(serde_json::to_value(op).unwrap_or_default())
        }
        ("GET", ["1.0", "vms"]) => {
            let all = req.query_flag("all") || !req.query.contains_key("active");
            let details = req.query_flag("details");
            let vms = d.vm_lock();
            let list: Vec<Value> =
                vms.values().filter(|e| all || e.state.active()).map(|e| vm_json(d, e, details)).collect();
            ok(Value::Array(list))
        }
        ("POST", ["1.0", "vms"]) => {
            let b: DefineBody = body(req)?;
            let def = d.define(&b.toml)?;
            Ok((201, json!({"name": def.name, "uuid": def.uuid})))
        }
        (_, ["1.0", "vms", id, rest @ ..]) => {
            let name = d.resolve(id)?;
            vm_route(d, req, &name, rest)
        }
        ("GET", ["1.0", "pools"]) => ok(d.pool_list()),
        ("POST", ["1.0", "pools"]) => d.pool_define(body::<PoolDefinition>(req)?).map(|v| (201, v)),
        (_, ["1.0", "pools", pool, rest @ ..]) => pool_route(d, req, pool, rest),
        _ => Err(ApiError::not_found(format!("no route for {m} {}", req.path))),
    }
}

fn vm_route(d: &Arc<Daemon>, req: &Request, name: &str, rest: &[&str]) -> Reply {
    match (req.method.as_str(), rest) {
        ("GET", []) => {
            let vms = d.vm_lock();
            let e = vms.get(name).ok_or_else(|| ApiError::not_found(format!("VM `{name}` not found")))?;
            let mut v = vm_json(d, e, true);
            v["definition"] = serde_json::to_value(&e.def).unwrap_or_default();
            v["toml"] = json!(e.def.to_toml());
            ok(v)
        }
        ("PUT", []) => {
            let b: DefineBody = body(req)?;
            let def = d.replace(name, &b.toml)?;
            ok(json!({"name": def.name, "uuid": def.uuid}))
        }
        ("DELETE", []) => ok(d.undefine(name, req.query_flag("remove_storage"))?),
        ("PUT", ["state"]) => {
            let b: StateBody = body(req)?;
            let timeout = Duration::from_secs(b.timeout.unwrap_or(60));
            match b.action.as_str() {
                "start" => accepted(d.begin_start(name, "started by request")?),
                "shutdown" => accepted(d.begin_shutdown(name, timeout)?),
                "reboot" => accepted(d.begin_reboot(name, timeout)?),
                "destroy" => accepted(d.begin_destroy(name)?),
                "suspend" => ok(d.suspend(name, true)?),
                "resume" => ok(d.suspend(name, false)?),
                other => Err(ApiError::bad(format!(
                    "unknown action `{other}` (start, shutdown, reboot, destroy, suspend, resume)"
                ))),
            }
        }
        ("PUT", ["autostart"]) => {
            d.set_autostart(name, body::<Enabled>(req)?.enabled)?;
            ok(json!({"name": name}))
        }
        ("GET", ["stats"]) => stats(d, name),
        ("POST", ["vcpupin"]) => {
            let b: PinBody = body(req)?;
            let mut def =
                d.vm_lock().get(name).map(|e| e.def.clone()).ok_or_else(|| ApiError::not_found(name.to_string()))?;
            if b.vcpu >= def.vcpus || b.cpus.is_empty() {
                return Err(ApiError::bad(format!(
                    "vcpupin: vCPU {} of {} / CPU list must be valid",
                    b.vcpu, def.vcpus
                )));
            }
            // Persist first (takes effect at the next start), then apply live.
            def.vcpu_pins.retain(|p| p.vcpu != b.vcpu);
            def.vcpu_pins.push(crate::definition::VcpuPin { vcpu: b.vcpu, cpus: b.cpus.clone() });
            def.vcpu_pins.sort_by_key(|p| p.vcpu);
            d.replace(name, &def.to_toml())?;
            let running = d.vm_lock().get(name).is_some_and(|e| e.run.is_some());
            let live = running.then(|| d.vm_call(name, &api::Request::PinVcpu { vcpu: b.vcpu, cpus: b.cpus }));
            match live {
                Some(Err(e)) => ok(json!({"name": name, "live": false, "live_error": e.msg})),
                Some(Ok(_)) => ok(json!({"name": name, "live": true})),
                None => ok(json!({"name": name, "live": false})),
            }
        }
        ("POST", ["memory"]) => {
            let b: MemBody = body(req)?;
            let total = d.vm_lock().get(name).map(|e| e.def.memory.0).unwrap_or(0);
            if b.mib == 0 || b.mib > total {
                return Err(ApiError::bad(format!(
                    "setmem: {} MiB is outside 1..={total} MiB (the defined memory)",
                    b.mib
                )));
            }
            d.vm_call(name, &api::Request::Balloon { target_mib: total - b.mib })?;
            ok(json!({"name": name, "current_mib": b.mib, "balloon_mib": total - b.mib}))
        }
        ("GET", ["log"]) => {
            let file = match req.query.get("which").map(String::as_str) {
                None | Some("console") => VmFiles::CONSOLE_LOG,
                Some("vmm") => VmFiles::VMM_LOG,
                Some(o) => return Err(ApiError::bad(format!("unknown log `{o}` (console, vmm)"))),
            };
            let data = std::fs::read(d.vm_dir(name).join(file)).unwrap_or_default();
            ok(json!({"name": name, "log": String::from_utf8_lossy(&data)}))
        }
        _ => Err(ApiError::not_found(format!("no route for {} {}", req.method, req.path))),
    }
}

fn stats(d: &Arc<Daemon>, name: &str) -> Reply {
    let (mut v, running) = {
        let vms = d.vm_lock();
        let e = vms.get(name).ok_or_else(|| ApiError::not_found(format!("VM `{name}` not found")))?;
        (vm_json(d, e, true), e.run.is_some())
    };
    if running {
        let counters = d.vm_call(name, &api::Request::Counters)?.unwrap_or(Value::Null);
        v["counters"] = counters;
    }
    ok(v)
}

fn pool_route(d: &Arc<Daemon>, req: &Request, pool: &str, rest: &[&str]) -> Reply {
    match (req.method.as_str(), rest) {
        ("GET", []) => ok(d.pool_get(pool)?),
        ("DELETE", []) => {
            d.pool_undefine(pool)?;
            ok(json!({"name": pool}))
        }
        ("PUT", ["state"]) => ok(d.pool_action(pool, &body::<StateBody>(req)?.action)?),
        ("PUT", ["autostart"]) => {
            d.pool_autostart(pool, body::<Enabled>(req)?.enabled)?;
            ok(json!({"name": pool}))
        }
        ("GET", ["volumes"]) => ok(d.vol_list(pool)?),
        ("POST", ["volumes"]) => Ok((201, d.vol_create(pool, &body::<VolumeCreate>(req)?)?)),
        ("GET", ["volumes", vol]) => ok(d.vol_info(pool, vol)?),
        ("DELETE", ["volumes", vol]) => {
            d.vol_delete(pool, vol)?;
            ok(json!({"name": vol}))
        }
        ("POST", ["volumes", vol, "resize"]) => ok(d.vol_resize(pool, vol, body::<ResizeBody>(req)?.capacity)?),
        ("POST", ["volumes", vol, "clone"]) => Ok((201, d.vol_clone(pool, vol, &body::<CloneBody>(req)?.name)?)),
        _ => Err(ApiError::not_found(format!("no route for {} {}", req.method, req.path))),
    }
}
