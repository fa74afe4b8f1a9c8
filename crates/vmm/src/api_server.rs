//! The per-VM control socket: accepts connections on a Unix socket, reads
//! one JSON request per line and forwards it to the VM's main loop, writing
//! back its answer. Protocol types live in the `api` crate.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

use api::{Request, Response};

use crate::vm::ControlMsg;

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("control socket {path} is in use by a running VM: stop it or choose another --api-socket")]
    InUse { path: String },
    #[error("cannot listen on control socket {path}: {source}")]
    Bind { path: String, source: std::io::Error },
}

/// Removes the socket file when the VMM ends.
pub struct ApiSocket {
    path: PathBuf,
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bind `path` (refusing one a live VMM answers on; replacing a stale one)
/// and serve it on a background thread.
pub fn serve(path: &Path, tx: Sender<ControlMsg>) -> Result<ApiSocket, ApiServerError> {
    let p = path.display().to_string();
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ApiServerError::InUse { path: p });
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ApiServerError::Bind { path: p, source })?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let tx = tx.clone();
                let _ = std::thread::Builder::new().name("api-conn".into()).spawn(move || serve_conn(conn, &tx));
            }
        })
        .map_err(|source| ApiServerError::Bind { path: path.display().to_string(), source })?;
    Ok(ApiSocket { path: path.to_path_buf() })
}

fn serve_conn(conn: UnixStream, tx: &Sender<ControlMsg>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let reader = BufReader::new(conn);
    for line in reader.lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::err(format!("invalid request: {e}")),
            Ok(req) => {
                let (rtx, rrx) = channel();
                if tx.send(ControlMsg { req, reply: rtx }).is_err() {
                    Response::err("VM is shutting down")
                } else {
                    rrx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| Response::err("VM did not answer"))
                }
            }
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| r#"{"ok":false}"#.into());
        out.push('\n');
        if writer.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}
