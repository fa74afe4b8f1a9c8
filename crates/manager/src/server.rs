//! The daemon's Unix-socket server: one thread per connection, plus the two
//! streaming endpoints (`/1.0/events` chunked JSON lines, and the console
//! upgrade `/1.0/vms/NAME/console`).

use std::io::{BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::daemon::{ApiError, Daemon, DaemonConfig};
use crate::http::{self, Request};
use crate::store::VmFiles;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Setup(String),
    #[error("another tern daemon is already running with state dir {0}")]
    AlreadyRunning(String),
    #[error("another daemon is already listening on {0}")]
    SocketInUse(String),
}

/// Take the state-dir lock (one daemon per state dir); the fd stays open for
/// the life of the process.
fn lock_state_dir(path: &Path) -> Result<std::fs::File, ServerError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| ServerError::Setup(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(ServerError::AlreadyRunning(path.parent().unwrap_or(path).display().to_string()));
    }
    Ok(f)
}

/// Bind the API socket with mode 0660 and group `tern` when that group exists.
fn bind(socket: &Path) -> Result<UnixListener, ServerError> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ServerError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    }
    if socket.exists() {
        if UnixStream::connect(socket).is_ok() {
            return Err(ServerError::SocketInUse(socket.display().to_string()));
        }
        let _ = std::fs::remove_file(socket);
    }
    let l = UnixListener::bind(socket)
        .map_err(|e| ServerError::Setup(format!("cannot listen on {}: {e}", socket.display())))?;
    let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660));
    let group = std::ffi::CString::new("tern").unwrap_or_default();
    // SAFETY: getgrnam returns a pointer to static storage or NULL; read once.
    let gr = unsafe { libc::getgrnam(group.as_ptr()) };
    if !gr.is_null() {
        let c = std::ffi::CString::new(socket.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: `gr` is non-null and valid until the next getgr* call; `c` is a valid C string.
        unsafe { libc::chown(c.as_ptr(), 0, (*gr).gr_gid) };
    }
    Ok(l)
}

/// Run the daemon until the process is killed.
pub fn run(cfg: DaemonConfig, socket: PathBuf) -> Result<(), ServerError> {
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| ServerError::Setup(format!("cannot create state dir {}: {e}", cfg.state_dir.display())))?;
    let _lock = lock_state_dir(&cfg.state_dir.join("daemon.lock"))?;
    let listener = bind(&socket)?;
    let daemon = Daemon::load(cfg).map_err(|e| ServerError::Setup(e.msg))?;
    daemon.spawn_supervisor();
    daemon.autostart();
    tracing::info!("tern daemon listening on {}", socket.display());
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let d = daemon.clone();
        let spawned = std::thread::Builder::new().stack_size(256 * 1024).spawn(move || serve(&d, stream));
        if let Err(e) = spawned {
            tracing::warn!("cannot start a connection thread: {e}");
        }
    }
    Ok(())
}

fn serve(d: &Arc<Daemon>, stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(read_half) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut w = stream;
    let req = match http::read_request(&mut reader) {
        Ok(r) => r,
        Err(e) => {
            let body = json!({"error": e.to_string()}).to_string();
            let _ = http::write_response(&mut w, 400, "application/json", body.as_bytes());
            return;
        }
    };
    let _ = w.set_read_timeout(None);
    let seg: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    match (req.method.as_str(), seg.as_slice()) {
        ("GET", ["1.0", "events"]) => events(d, &mut w),
        ("GET", ["1.0", "vms", id, "console"]) => {
            if let Err(e) = console(d, &req, id, reader, w.try_clone().ok()) {
                respond_err(&mut w, e);
            }
        }
        _ => {
            let (status, body) = match crate::routes::handle(d, &req) {
                Ok((s, v)) => (s, v),
                Err(e) => (e.status, json!({"error": e.msg})),
            };
            let _ = http::write_response(&mut w, status, "application/json", body.to_string().as_bytes());
        }
    }
}

fn respond_err(w: &mut UnixStream, e: ApiError) {
    let _ = http::write_response(w, e.status, "application/json", json!({"error": e.msg}).to_string().as_bytes());
}

fn events(d: &Arc<Daemon>, w: &mut UnixStream) {
    let rx = d.events.subscribe();
    if http::write_chunked_head(w, "application/x-ndjson").is_err() {
        return;
    }
    loop {
        let line = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(l) => l,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => "{\"type\":\"heartbeat\"}\n".to_string(),
            Err(_) => return,
        };
        if http::write_chunk(w, line.as_bytes()).is_err() {
            return;
        }
    }
}

/// Upgrade the connection to a raw console stream. `?from=OFFSET` first
/// replays console.log from that byte offset (so `start --console` misses
/// nothing the guest printed before the client attached).
fn console(
    d: &Arc<Daemon>,
    req: &Request,
    id: &str,
    mut reader: BufReader<UnixStream>,
    w: Option<UnixStream>,
) -> Result<(), ApiError> {
    let name = d.resolve(id)?;
    let hub = {
        let vms = d.vm_lock();
        let e = vms.get(&name).ok_or_else(|| ApiError::not_found(format!("VM `{name}` not found")))?;
        match (&e.console, e.run.is_some()) {
            (Some(h), true) => h.clone(),
            (None, true) => {
                return Err(ApiError::conflict(format!("VM `{name}` has no serial console (serial = \"none\")")));
            }
            _ => return Err(ApiError::conflict(format!("VM `{name}` is not running (state: {})", e.state.as_str()))),
        }
    };
    let mut w = w.ok_or_else(|| ApiError::internal("cannot clone the connection"))?;
    let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: tern-console\r\nConnection: Upgrade\r\n\r\n";
    w.write_all(head.as_bytes()).map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(from) = req.query.get("from").and_then(|f| f.parse::<u64>().ok()) {
        let log = std::fs::read(d.vm_dir(&name).join(VmFiles::CONSOLE_LOG)).unwrap_or_default();
        let start = (from as usize).min(log.len());
        let _ = w.write_all(&log[start..]);
    }
    let sub = hub.subscribe(w);
    let mut buf = [0u8; 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if hub.input(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    hub.unsubscribe(sub);
    Ok(())
}
