//! The console's input thread: reads stdin (raw mode on a terminal) or the
//! Unix socket's client and hands the bytes to the device's bounded buffer.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;

use devices::legacy::serial::{RawTerminalGuard, SerialInput, SocketConsole, poll_in};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::RxBuffer;

/// How long to wait before retrying when the guest is not taking input.
const RETRY_MS: i32 = 10;
const BUSY_MESSAGE: &[u8] = b"tern: this console already has a client\r\n";

pub(crate) struct InputThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
    _raw: Option<RawTerminalGuard>,
}

impl Drop for InputThread {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.stop.write(1);
            let _ = h.join();
        }
    }
}

impl InputThread {
    pub(crate) fn spawn(id: &str, source: SerialInput, rx: Arc<RxBuffer>) -> io::Result<Option<Self>> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let thread_stop = stop.try_clone()?;
        let name = format!("{id}-input");
        let (raw, handle) = match source {
            SerialInput::None => return Ok(None),
            SerialInput::Stdin => {
                let raw = RawTerminalGuard::stdin()?;
                let h = std::thread::Builder::new().name(name).spawn(move || stdin_loop(&rx, &thread_stop))?;
                (raw, h)
            }
            SerialInput::Socket(console) => {
                let h =
                    std::thread::Builder::new().name(name).spawn(move || socket_loop(&rx, &console, &thread_stop))?;
                (None, h)
            }
        };
        Ok(Some(Self { stop, handle: Some(handle), _raw: raw }))
    }
}

/// Push all of `bytes`, waiting while the buffer is full; false when stopped.
fn feed(rx: &RxBuffer, mut bytes: &[u8], stop: &EventFd) -> bool {
    while !bytes.is_empty() {
        let n = rx.push(bytes);
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

fn stdin_loop(rx: &RxBuffer, stop: &EventFd) {
    let mut stdin = io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        let Some(r) = poll_in(&[libc::STDIN_FILENO, stop.as_raw_fd()], -1) else { return };
        if r[1] != 0 || r[0] & libc::POLLNVAL != 0 {
            return;
        }
        if r[0] == 0 {
            continue;
        }
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if !feed(rx, &buf[..n], stop) {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => {}
            Err(_) => return,
        }
    }
}

fn socket_loop(rx: &RxBuffer, console: &SocketConsole, stop: &EventFd) {
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
        if revents[1] != 0
            && let Ok((mut stream, _)) = console.listener().accept()
        {
            if reader.is_some() && !console.connected() {
                reader = None;
            }
            if reader.is_some() {
                let _ = stream.write_all(BUSY_MESSAGE);
            } else if let Ok(r) = stream.try_clone()
                && console.attach(stream).unwrap_or(false)
            {
                reader = Some(r);
            }
        }
        if revents.len() > 2 && revents[2] != 0 {
            let Some(r) = reader.as_mut() else { continue };
            match r.read(&mut buf) {
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Ok(0) | Err(_) => {
                    console.detach();
                    reader = None;
                }
                Ok(n) => {
                    if !feed(rx, &buf[..n], stop) {
                        return;
                    }
                }
            }
        }
    }
}
