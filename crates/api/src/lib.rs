//! The per-VM control protocol: newline-delimited JSON over the Unix socket a
//! `tern run --api-socket PATH` process listens on. One request line, one
//! response line. The manager drives every VM through this; it is also
//! usable by hand (`socat - UNIX-CONNECT:PATH`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A command sent to a running VMM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Identity, configuration and run state.
    Info,
    /// Stop all vCPUs and device processing.
    Pause,
    /// Continue after `Pause`.
    Resume,
    /// Press the ACPI power button: a cooperative guest shuts down.
    PowerButton,
    /// End the VM now (like pulling the plug) and exit the VMM.
    Stop,
    /// Exit and I/O counters.
    Counters,
    /// Set the balloon target, in MiB of guest memory to give back.
    Balloon { target_mib: u64 },
    /// Pin vCPU `vcpu` to the given host CPUs.
    PinVcpu { vcpu: u32, cpus: Vec<usize> },
}

/// Run state of a VM as the VMM sees it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Starting,
    Running,
    Paused,
    ShuttingDown,
    Stopped,
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::ShuttingDown => "shutting-down",
            RunState::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// Answer to [`Request::Info`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmInfo {
    pub pid: u32,
    pub state: RunState,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub kernel: Option<String>,
    pub cmdline: String,
    pub cpu_model: String,
    pub uptime_ms: u64,
    pub devices: Vec<String>,
}

/// Answer to [`Request::Counters`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    /// Per vCPU: exit reason -> count.
    pub vcpu_exits: Vec<BTreeMap<String, u64>>,
    /// Per vCPU: nanoseconds spent inside KVM_RUN.
    pub vcpu_run_ns: Vec<u64>,
    /// Per vCPU: the instruction pointer when it was last paused (for
    /// sampling where a guest spends its time; 0 = never paused).
    #[serde(default)]
    pub vcpu_rip: Vec<u64>,
    /// Per device: counter name -> value (e.g. "read_bytes").
    pub devices: BTreeMap<String, BTreeMap<String, u64>>,
    /// Guest memory in MiB, and the current balloon size in MiB.
    pub memory_mib: u64,
    pub balloon_mib: u64,
}

/// Every response line: `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok<T: Serialize>(value: &T) -> Self {
        Self { ok: true, result: serde_json::to_value(value).ok(), error: None }
    }
    pub fn empty() -> Self {
        Self { ok: true, result: None, error: None }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Self { ok: false, result: None, error: Some(msg.into()) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to VM control socket {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("VM control socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("VM control socket sent an invalid reply: {0}")]
    Protocol(String),
    #[error("VM refused the request: {0}")]
    Refused(String),
}

/// Send one request and wait for its response (blocking, with a timeout).
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Option<serde_json::Value>, ClientError> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| ClientError::Connect { path: socket.display().to_string(), source: e })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply)?;
    if reply.is_empty() {
        return Err(ClientError::Protocol("connection closed without a reply".into()));
    }
    let resp: Response = serde_json::from_str(&reply).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if resp.ok { Ok(resp.result) } else { Err(ClientError::Refused(resp.error.unwrap_or_default())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format_is_stable() {
        assert_eq!(serde_json::to_string(&Request::PowerButton).unwrap(), r#"{"command":"power-button"}"#);
        let r: Request = serde_json::from_str(r#"{"command":"balloon","target_mib":64}"#).unwrap();
        assert_eq!(r, Request::Balloon { target_mib: 64 });
        assert!(serde_json::from_str::<Request>(r#"{"command":"explode"}"#).is_err());
    }
}
