//! Feeding the guest's serial input: a thread that reads stdin (in raw mode
//! when it is a terminal) or serves the console socket's clients, and hands
//! the bytes to [`SerialDevice::enqueue_input`]. It polls a stop eventfd
//! alongside its source so stopping it never waits on a read.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use super::{SerialDevice, SerialError, SerialOutput, SocketConsole};
use crate::legacy::VmEvents;

/// How long the reader waits before retrying when the guest isn't draining
/// its input (pending buffer full).
const RETRY_MS: i32 = 10;

/// Puts a terminal in raw mode (no echo, no line editing, no signals from
/// Ctrl-C/Ctrl-Z: those keys go to the guest) and restores the saved
/// settings when dropped. Drop it before `process::exit`, which runs no
/// destructors.
pub struct RawTerminalGuard {
    fd: RawFd,
    saved: libc::termios,
}

impl std::fmt::Debug for RawTerminalGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawTerminalGuard").field("fd", &self.fd).finish()
    }
}

impl RawTerminalGuard {
    /// Raw mode on `fd`; `Ok(None)` when `fd` is not a terminal (a pipe, a
    /// file, /dev/null), which needs nothing restored.
    pub fn new(fd: RawFd) -> io::Result<Option<Self>> {
        // SAFETY: isatty only inspects the descriptor number.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        // SAFETY: termios is plain old data; all-zero is a valid value that
        // tcgetattr overwrites.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid, writable termios.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios to modify in place.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so the host side of "\n" still
        // returns the carriage for anything else printing to the terminal.
        raw.c_oflag |= libc::OPOST | libc::ONLCR;
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(Self { fd, saved }))
    }

    /// Raw mode on stdin, when it is a terminal.
    pub fn stdin() -> io::Result<Option<Self>> {
        Self::new(libc::STDIN_FILENO)
    }
}

impl Drop for RawTerminalGuard {
    fn drop(&mut self) {
        // SAFETY: `saved` is the termios read from this fd at creation.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Where a serial device's input comes from; derived from its output by
/// [`SerialDevice::input`].
#[derive(Clone)]
pub enum SerialInput {
    Stdin,
    Socket(Arc<SocketConsole>),
    None,
}

impl std::fmt::Debug for SerialInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdin => f.write_str("Stdin"),
            Self::Socket(s) => write!(f, "Socket({})", s.path().display()),
            Self::None => f.write_str("None"),
        }
    }
}

impl SerialInput {
    pub fn of(output: &SerialOutput) -> Self {
        match output {
            SerialOutput::Stdout => Self::Stdin,
            SerialOutput::Socket(s) => Self::Socket(s.clone()),
            SerialOutput::File(_) | SerialOutput::Sink => Self::None,
        }
    }
}

/// The running input thread. Stopping (or dropping) it joins the thread and
/// restores the terminal.
pub struct SerialInputThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
    _raw: Option<RawTerminalGuard>,
}

impl std::fmt::Debug for SerialInputThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialInputThread").field("running", &self.handle.is_some()).finish()
    }
}

impl SerialInputThread {
    /// Stop reading, join the thread, restore the terminal.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.stop.write(1);
            let _ = h.join();
        }
    }
}

impl Drop for SerialInputThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Start the thread feeding `device` from the source its output implies:
/// stdin for stdio (raw mode when stdin is a terminal), the socket's clients
/// for a socket console. Returns `None` when there is no input (file, none).
/// A socket console needs this thread to accept clients at all.
pub fn spawn_serial_input(device: &Arc<Mutex<SerialDevice>>) -> Result<Option<SerialInputThread>, SerialError> {
    let input = device.lock().unwrap_or_else(|e| e.into_inner()).input();
    let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(SerialError::Spawn)?;
    let thread_stop = stop.try_clone().map_err(SerialError::Spawn)?;
    let dev = device.clone();
    let (raw, handle) = match input {
        SerialInput::None => return Ok(None),
        SerialInput::Stdin => {
            let raw = RawTerminalGuard::stdin().map_err(SerialError::Terminal)?;
            let quit = device.lock().unwrap_or_else(|e| e.into_inner()).quit_events();
            let h = std::thread::Builder::new()
                .name("serial-stdin".into())
                .spawn(move || stdin_loop(&dev, &thread_stop, quit.as_deref()))
                .map_err(SerialError::Spawn)?;
            (raw, h)
        }
        SerialInput::Socket(console) => {
            let h = std::thread::Builder::new()
                .name("serial-socket".into())
                .spawn(move || socket_loop(&dev, &console, &thread_stop))
                .map_err(SerialError::Spawn)?;
            (None, h)
        }
    };
    Ok(Some(SerialInputThread { stop, handle: Some(handle), _raw: raw }))
}

/// poll() the given fds for input; returns their revents, or None on error.
/// Shared with the virtio-console input threads.
pub fn poll_in(fds: &[RawFd], timeout_ms: i32) -> Option<Vec<libc::c_short>> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if r >= 0 {
            return Some(pfds.iter().map(|p| p.revents).collect());
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// Hand `bytes` to the device, waiting while its pending buffer is full.
/// Returns false when asked to stop meanwhile.
fn feed(device: &Mutex<SerialDevice>, mut bytes: &[u8], stop: &EventFd) -> bool {
    while !bytes.is_empty() {
        let n = device.lock().unwrap_or_else(|e| e.into_inner()).enqueue_input(bytes);
        bytes = &bytes[n..];
        if !bytes.is_empty() {
            match poll_in(&[stop.as_raw_fd()], RETRY_MS) {
                Some(r) if r[0] == 0 => {}
                _ => return false,
            }
        }
    }
    true
}

/// Ctrl-A, the console escape (as in QEMU's `-nographic`).
const CTRL_A: u8 = 0x01;

/// Console escapes on stdin: Ctrl-A x quits, Ctrl-A Ctrl-A sends one
/// Ctrl-A, Ctrl-A followed by anything else passes both bytes through.
#[derive(Debug, Default)]
pub(super) struct EscapeFilter {
    armed: bool,
}

impl EscapeFilter {
    /// Append the bytes meant for the guest to `out`; true when the user
    /// asked to quit (the rest of `input` is dropped).
    pub(super) fn filter(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.armed {
                self.armed = false;
                match b {
                    b'x' | b'X' => return true,
                    CTRL_A => out.push(CTRL_A),
                    _ => out.extend([CTRL_A, b]),
                }
            } else if b == CTRL_A {
                self.armed = true;
            } else {
                out.push(b);
            }
        }
        false
    }
}

fn stdin_loop(device: &Mutex<SerialDevice>, stop: &EventFd, quit: Option<&VmEvents>) {
    let stdin = libc::STDIN_FILENO;
    let mut buf = [0u8; 1024];
    let mut escapes = EscapeFilter::default();
    let mut for_guest = Vec::with_capacity(buf.len() + 1);
    loop {
        let Some(r) = poll_in(&[stdin, stop.as_raw_fd()], -1) else { return };
        if r[1] != 0 || r[0] & libc::POLLNVAL != 0 {
            return;
        }
        if r[0] == 0 {
            continue;
        }
        // SAFETY: reading into a buffer we own, of the length given.
        let n = unsafe { libc::read(stdin, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) {
                continue;
            }
            tracing::debug!("serial: stdin read failed, input closed: {e}");
            return;
        }
        if n == 0 {
            // End of input (stdin is /dev/null or a closed pipe).
            return;
        }
        let input = &buf[..n as usize];
        let Some(events) = quit else {
            if !feed(device, input, stop) {
                return;
            }
            continue;
        };
        for_guest.clear();
        let quitting = escapes.filter(input, &mut for_guest);
        if !feed(device, &for_guest, stop) {
            return;
        }
        if quitting {
            tracing::info!("serial console: Ctrl-A x, quitting");
            events.request_quit();
            return;
        }
    }
}

const BUSY_MESSAGE: &[u8] = b"tern: this serial console already has a client\r\n";

fn socket_loop(device: &Mutex<SerialDevice>, console: &SocketConsole, stop: &EventFd) {
    let mut reader: Option<UnixStream> = None;
    let mut buf = [0u8; 1024];
    loop {
        let mut fds = vec![stop.as_raw_fd(), console.listener().as_raw_fd()];
        if let Some(r) = &reader {
            fds.push(r.as_raw_fd());
        }
        let Some(revents) = poll_in(&fds, -1) else { return };
        if revents[0] != 0 {
            return;
        }
        if revents[1] != 0 {
            match console.listener().accept() {
                Ok((mut stream, _)) => {
                    // The output side drops a client it can no longer write
                    // to before we see its EOF: its reader is stale then.
                    if reader.is_some() && !console.connected() {
                        reader = None;
                    }
                    if reader.is_some() {
                        let _ = stream.write_all(BUSY_MESSAGE);
                    } else {
                        match stream.try_clone().and_then(|r| console.attach(stream).map(|ok| (r, ok))) {
                            Ok((r, true)) => reader = Some(r),
                            Ok((_, false)) => {}
                            Err(e) => tracing::warn!("serial: cannot take socket client: {e}"),
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => tracing::warn!("serial: accept on {} failed: {e}", console.path().display()),
            }
        }
        if let (Some(&ev), Some(r)) = (revents.get(2), reader.as_mut())
            && ev != 0
        {
            match r.read(&mut buf) {
                Ok(0) => {
                    console.detach();
                    reader = None;
                }
                Ok(n) => {
                    if !feed(device, &buf[..n], stop) {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => {}
                Err(_) => {
                    console.detach();
                    reader = None;
                }
            }
        }
    }
}
