//! The CLI's side of the REST API: a connection to the local daemon socket,
//! or to a remote one through `ssh HOST tern _proxy` (nothing listens on the
//! network; SSH does the authentication).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::http;

pub const DEFAULT_SOCKET: &str = "/run/tern/tern.sock";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the tern daemon at {0} (is `tern daemon` running? set --socket or TERN_SOCKET)")]
    NotRunning(String),
    #[error("permission denied on {0} (run as root or as a member of group `tern`)")]
    Permission(String),
    #[error("cannot run `{cmd}`: {source}")]
    Ssh { cmd: String, source: std::io::Error },
    #[error("--connect {0}: use ssh://[user@]host[:port][/path/to/tern.sock]")]
    BadUri(String),
    #[error("daemon connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("daemon sent an invalid reply: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{msg}")]
    Api { status: u16, msg: String },
}

/// Where the daemon is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `ssh://[user@]host[:port][/socket]`
    Ssh {
        destination: String,
        port: Option<String>,
        socket: Option<String>,
    },
}

impl Endpoint {
    pub fn parse_connect(uri: &str) -> Result<Self, ClientError> {
        let rest = uri.strip_prefix("ssh://").ok_or_else(|| ClientError::BadUri(uri.into()))?;
        let (hostpart, socket) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(rest[i..].to_string())),
            None => (rest, None),
        };
        let (destination, port) = match hostpart.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h.to_string(), Some(p.to_string())),
            _ => (hostpart.to_string(), None),
        };
        if destination.is_empty() || destination.starts_with('-') {
            return Err(ClientError::BadUri(uri.into()));
        }
        Ok(Endpoint::Ssh { destination, port, socket })
    }
}

/// The two directions of a connection to the daemon.
pub type Reader = Box<dyn Read + Send>;
pub type Writer = Box<dyn Write + Send>;

/// The write side of `ssh HOST tern _proxy`; owns the ssh process.
struct SshWriter {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Write for SshWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.stdin.as_mut() {
            Some(s) => s.write(buf),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stdin.as_mut().map_or(Ok(()), |s| s.flush())
    }
}

impl Drop for SshWriter {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps the ssh process alive while the read side is in use.
struct SshReader {
    stdout: ChildStdout,
}

impl Read for SshReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stdout.read(buf)
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub endpoint: Endpoint,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Self {
        Client { endpoint }
    }

    fn connect(&self) -> Result<(Reader, Writer), ClientError> {
        match &self.endpoint {
            Endpoint::Unix(p) => match UnixStream::connect(p) {
                Ok(s) => Ok((Box::new(s.try_clone()?), Box::new(s))),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    Err(ClientError::Permission(p.display().to_string()))
                }
                Err(_) => Err(ClientError::NotRunning(p.display().to_string())),
            },
            Endpoint::Ssh { destination, port, socket } => {
                // TERN_SSH replaces the ssh command (e.g. extra options, or tests).
                let ssh = std::env::var("TERN_SSH").unwrap_or_else(|_| "ssh".into());
                let mut words = ssh.split_whitespace();
                let mut cmd = Command::new(words.next().unwrap_or("ssh"));
                cmd.args(words).arg("-T");
                if let Some(p) = port {
                    cmd.args(["-p", p]);
                }
                cmd.arg("--").arg(destination).args(["tern", "_proxy"]);
                if let Some(s) = socket {
                    cmd.args(["--socket", s]);
                }
                let name = format!("{ssh} {destination} tern _proxy");
                let mut child = cmd
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|source| ClientError::Ssh { cmd: name.clone(), source })?;
                let stdin = child.stdin.take();
                let stdout = child.stdout.take().ok_or_else(|| ClientError::Protocol("ssh without stdout".into()))?;
                Ok((Box::new(SshReader { stdout }), Box::new(SshWriter { child, stdin })))
            }
        }
    }

    fn send_head(s: &mut dyn Write, method: &str, path: &str, body: &[u8], extra: &str) -> Result<(), ClientError> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: tern\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        s.flush()?;
        Ok(())
    }

    /// One request; a non-2xx answer becomes `ClientError::Api`.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let (r, mut w) = self.connect()?;
        let data = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        Self::send_head(w.as_mut(), method, path, &data, "Connection: close\r\n")?;
        let mut r = BufReader::new(r);
        let (status, body) = http::read_response(&mut r).map_err(|e| ClientError::Protocol(e.to_string()))?;
        drop(w);
        let v: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))?
        };
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            let msg = v.get("error").and_then(Value::as_str).unwrap_or("request failed").to_string();
            Err(ClientError::Api { status, msg })
        }
    }

    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request("GET", path, None)
    }

    /// Wait for an operation (as returned with 202) to finish; its error becomes ours.
    pub fn wait_operation(&self, op: &Value, timeout: Duration) -> Result<Value, ClientError> {
        let id = op.get("id").and_then(Value::as_str).ok_or_else(|| ClientError::Protocol("no operation id".into()))?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now()).as_secs_f64().min(30.0);
            let o = self.get(&format!("/1.0/operations/{}?wait={left:.3}", http::percent_encode(id)))?;
            match o.get("status").and_then(Value::as_str) {
                Some("success") => return Ok(o.get("result").cloned().unwrap_or(Value::Null)),
                Some("failure") => {
                    let msg = o.get("error").and_then(Value::as_str).unwrap_or("operation failed").to_string();
                    return Err(ClientError::Api { status: 500, msg });
                }
                _ if left <= 0.0 => {
                    return Err(ClientError::Api {
                        status: 504,
                        msg: format!("operation {id} still running after {timeout:?}"),
                    });
                }
                _ => {}
            }
        }
    }

    /// Open a streaming endpoint. For an upgrade (console) the returned
    /// stream is raw; for a chunked response (events) use [`read_event`].
    pub fn open_stream(&self, path: &str, upgrade: bool) -> Result<(BufReader<Reader>, Writer), ClientError> {
        let (r, mut w) = self.connect()?;
        let extra = if upgrade { "Connection: Upgrade\r\nUpgrade: tern-console\r\n" } else { "" };
        Self::send_head(w.as_mut(), "GET", path, b"", extra)?;
        let mut r = BufReader::new(r);
        let (first, headers) = http::read_head(&mut r).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let status = http::parse_status(&first).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if status == 101 || status == 200 {
            return Ok((r, w));
        }
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; len.min(1 << 20)];
        r.read_exact(&mut body)?;
        let msg = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(String::from))
            .unwrap_or_else(|| format!("HTTP {status}"));
        Err(ClientError::Api { status, msg })
    }
}

/// Read the next JSON line of a chunked event stream (None at its end).
pub fn read_event<R: BufRead>(r: &mut R, pending: &mut Vec<u8>) -> Result<Option<Value>, ClientError> {
    loop {
        if let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            return serde_json::from_slice(&line).map(Some).map_err(|e| ClientError::Protocol(e.to_string()));
        }
        match http::read_chunk(r).map_err(|e| ClientError::Protocol(e.to_string()))? {
            Some(c) => pending.extend_from_slice(&c),
            None => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_uris() {
        match Endpoint::parse_connect("ssh://root@host:2222/run/tern/tern.sock").unwrap() {
            Endpoint::Ssh { destination, port, socket } => {
                assert_eq!(destination, "root@host");
                assert_eq!(port.as_deref(), Some("2222"));
                assert_eq!(socket.as_deref(), Some("/run/tern/tern.sock"));
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(Endpoint::parse_connect("ssh://h"), Ok(Endpoint::Ssh { port: None, socket: None, .. })));
        assert!(Endpoint::parse_connect("tcp://h").is_err());
        assert!(Endpoint::parse_connect("ssh://-oProxyCommand=x").is_err());
    }
}
