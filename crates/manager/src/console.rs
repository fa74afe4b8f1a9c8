//! The console hub of one VM: the daemon holds the connection to the VMM's
//! serial socket, appends everything to console.log and relays it to any
//! attached `tern console` clients; their keystrokes go back to the guest.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// console.log is rotated (to console.log.1) beyond this size.
const MAX_LOG_BYTES: u64 = 16 << 20;

#[derive(Default)]
struct Inner {
    serial: Option<UnixStream>,
    clients: Vec<(u64, UnixStream)>,
    next_id: u64,
}

pub struct ConsoleHub {
    inner: Mutex<Inner>,
    stop: AtomicBool,
}

impl ConsoleHub {
    /// Start the relay thread; it keeps (re)connecting to `socket` until `stop()`.
    pub fn spawn(name: &str, socket: PathBuf, log: PathBuf) -> Arc<Self> {
        let hub = Arc::new(ConsoleHub { inner: Mutex::new(Inner::default()), stop: AtomicBool::new(false) });
        let h = hub.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("console-{name}"))
            .stack_size(128 * 1024)
            .spawn(move || h.run(socket, log));
        if let Err(e) = spawned {
            tracing::warn!("cannot start the console relay of {name}: {e}");
        }
        hub
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let mut inner = self.lock();
        if let Some(s) = inner.serial.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        // Attached clients see the end of the stream when the VM stops.
        for (_, c) in inner.clients.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(self: Arc<Self>, socket: PathBuf, log: PathBuf) {
        let began = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            let stream = match UnixStream::connect(&socket) {
                Ok(s) => s,
                Err(_) => {
                    // Fast retries while the VMM is starting, then back off.
                    let pause = if began.elapsed() < Duration::from_secs(5) { 2 } else { 100 };
                    std::thread::sleep(Duration::from_millis(pause));
                    continue;
                }
            };
            if let Ok(w) = stream.try_clone() {
                self.lock().serial = Some(w);
            }
            self.relay(stream, &log);
            self.lock().serial = None;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn relay(&self, mut stream: UnixStream, log: &PathBuf) {
        let open = || OpenOptions::new().create(true).append(true).open(log).ok();
        let mut file = open();
        let mut size = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let mut buf = [0u8; 4096];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // A chatty guest must not fill the disk: keep one rotated log.
            if size > MAX_LOG_BYTES {
                let _ = std::fs::rename(log, log.with_extension("log.1"));
                file = open();
                size = 0;
            }
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(&buf[..n]);
                size += n as u64;
            }
            let mut inner = self.lock();
            inner.clients.retain_mut(|(_, c)| c.write_all(&buf[..n]).is_ok());
        }
    }

    /// Attach a client stream; output is copied to it until it fails.
    pub fn subscribe(&self, client: UnixStream) -> u64 {
        let _ = client.set_write_timeout(Some(Duration::from_secs(2)));
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.clients.push((id, client));
        id
    }

    pub fn unsubscribe(&self, id: u64) {
        self.lock().clients.retain(|(i, _)| *i != id);
    }

    /// Send keystrokes to the guest's serial port.
    pub fn input(&self, data: &[u8]) -> std::io::Result<()> {
        match self.lock().serial.as_mut() {
            Some(s) => s.write_all(data),
            None => Err(std::io::Error::new(std::io::ErrorKind::NotConnected, "serial port not connected")),
        }
    }
}
