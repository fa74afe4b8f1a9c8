//! Where the UART's transmitted bytes go. Writes never block the vCPU: the
//! socket client is non-blocking and what it can't take right now (or what
//! is written while nobody is connected) waits in a bounded backlog that
//! keeps the newest bytes.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{SerialConfig, SerialError};

/// Bytes of console output kept for the next socket client.
pub const SOCKET_BACKLOG_MAX: usize = 64 * 1024;

/// The opened backend of a [`SerialConfig`].
pub enum SerialOutput {
    Stdout,
    File(File),
    Socket(Arc<SocketConsole>),
    Sink,
}

impl std::fmt::Debug for SerialOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdout => f.write_str("Stdout"),
            Self::File(_) => f.write_str("File"),
            Self::Socket(s) => write!(f, "Socket({})", s.path.display()),
            Self::Sink => f.write_str("Sink"),
        }
    }
}

impl SerialOutput {
    /// Open the file or bind the socket `config` names.
    pub fn open(config: &SerialConfig) -> Result<Self, SerialError> {
        Ok(match config {
            SerialConfig::Stdio => Self::Stdout,
            SerialConfig::None => Self::Sink,
            SerialConfig::File(path) => Self::File(
                OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(path)
                    .map_err(|source| SerialError::OpenFile { path: path.clone(), source })?,
            ),
            SerialConfig::Socket(path) => Self::Socket(Arc::new(SocketConsole::bind(path)?)),
        })
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stdout => io::stdout().lock().write(buf),
            Self::File(f) => f.write(buf),
            Self::Socket(s) => s.write_output(buf),
            Self::Sink => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout => io::stdout().lock().flush(),
            Self::File(f) => f.flush(),
            Self::Socket(_) | Self::Sink => Ok(()),
        }
    }
}

struct Connection {
    client: Option<UnixStream>,
    backlog: VecDeque<u8>,
    dropped: u64,
}

impl Connection {
    fn keep(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(SOCKET_BACKLOG_MAX)..];
        let overflow = (self.backlog.len() + bytes.len()).saturating_sub(SOCKET_BACKLOG_MAX);
        self.backlog.drain(..overflow);
        self.dropped += overflow as u64;
        self.backlog.extend(bytes);
    }

    /// Send as much of the backlog as the client takes without blocking;
    /// drop the client if it is gone.
    fn flush_backlog(&mut self) {
        while let Some(client) = self.client.as_mut() {
            let (front, _) = self.backlog.as_slices();
            if front.is_empty() {
                return;
            }
            match client.write(front) {
                Ok(0) => self.client = None,
                Ok(n) => {
                    self.backlog.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.client = None,
            }
        }
    }
}

/// A Unix listening socket serving the console to one client at a time.
/// The socket file is removed when this is dropped.
pub struct SocketConsole {
    path: PathBuf,
    listener: UnixListener,
    conn: Mutex<Connection>,
}

impl SocketConsole {
    /// Bind `path`, replacing a stale socket file nobody listens on.
    pub fn bind(path: &Path) -> Result<Self, SerialError> {
        let bind_err = |source| SerialError::BindSocket { path: path.to_path_buf(), source };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(SerialError::SocketPathTaken(path.to_path_buf()));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(SerialError::SocketInUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(Self {
            path: path.to_path_buf(),
            listener,
            conn: Mutex::new(Connection { client: None, backlog: VecDeque::new(), dropped: 0 }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a client is connected.
    pub fn connected(&self) -> bool {
        self.conn().client.is_some()
    }

    /// Output bytes discarded because the backlog was full.
    pub fn dropped(&self) -> u64 {
        self.conn().dropped
    }

    /// Make `stream` the client (returns false, leaving it alone, when one
    /// is already connected) and send it the backlog.
    pub fn attach(&self, stream: UnixStream) -> io::Result<bool> {
        let mut conn = self.conn();
        if conn.client.is_some() {
            return Ok(false);
        }
        stream.set_nonblocking(true)?;
        conn.client = Some(stream);
        conn.flush_backlog();
        Ok(true)
    }

    /// Forget the client (it hung up).
    pub fn detach(&self) {
        self.conn().client = None;
    }

    fn write_output(&self, buf: &[u8]) -> io::Result<usize> {
        let mut conn = self.conn();
        conn.flush_backlog();
        if conn.backlog.is_empty()
            && let Some(client) = conn.client.as_mut()
        {
            match client.write(buf) {
                Ok(n) if n == buf.len() => return Ok(n),
                Ok(n) => conn.keep(&buf[n..]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                    conn.keep(buf)
                }
                Err(_) => {
                    conn.client = None;
                    conn.keep(buf);
                }
            }
        } else {
            conn.keep(buf);
        }
        Ok(buf.len())
    }
}

impl Drop for SocketConsole {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
