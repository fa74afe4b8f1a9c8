//! The one place devices tell the VMM that the VM must stop or restart: the
//! i8042 reset line, ACPI S5 and the debug-exit port all post a [`VmEvent`]
//! here, and the VMM waits on a single eventfd.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

/// Why the VM asked to stop running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VmEvent {
    /// The guest asked for a reboot (i8042 0xFE, output-port reset bit).
    Reset,
    /// The guest entered ACPI S5 (soft off).
    PowerOff,
    /// The guest wrote to the debug-exit port: end the VMM with this status,
    /// already encoded as `(value << 1) | 1` like QEMU's isa-debug-exit.
    Exit(i32),
}

/// Shared by the devices (which post) and the VMM (which waits). The first
/// event posted wins until the VMM takes it: a guest that writes the exit
/// port and then triple-faults still exits with the status it wrote.
pub struct VmEvents {
    fd: EventFd,
    pending: Mutex<Option<VmEvent>>,
}

impl std::fmt::Debug for VmEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmEvents").field("pending", &self.pending()).finish()
    }
}

impl VmEvents {
    pub fn new() -> io::Result<Self> {
        Ok(Self { fd: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?, pending: Mutex::new(None) })
    }

    /// Readable while an event is pending; register it with epoll/poll, then
    /// call [`take`](Self::take).
    pub fn eventfd(&self) -> &EventFd {
        &self.fd
    }

    /// Post `event` unless another one is already pending.
    pub fn request(&self, event: VmEvent) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.is_none() {
            *pending = Some(event);
            // An eventfd write only fails when the counter would overflow,
            // which needs 2^64 unconsumed posts; the event is recorded anyway.
            if let Err(e) = self.fd.write(1) {
                tracing::warn!("cannot signal VM event {event:?}: {e}");
            }
        }
    }

    pub fn request_reset(&self) {
        self.request(VmEvent::Reset);
    }

    pub fn request_poweroff(&self) {
        self.request(VmEvent::PowerOff);
    }

    /// Post an exit with an already-encoded process status.
    pub fn request_exit(&self, status: i32) {
        self.request(VmEvent::Exit(status));
    }

    /// The user quit from the console (Ctrl-A x): exit with status 0, which
    /// the debug-exit port can never produce (its statuses are odd).
    pub fn request_quit(&self) {
        self.request(VmEvent::Exit(0));
    }

    /// The pending event, left in place (for vCPU loops that check after
    /// every exit whether to stop).
    pub fn pending(&self) -> Option<VmEvent> {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Consume the pending event (and the eventfd's count), e.g. before
    /// restarting the VM after a reset.
    pub fn take(&self) -> Option<VmEvent> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // EAGAIN just means nothing was posted; the Option is the truth.
        let _ = self.fd.read();
        pending.take()
    }

    /// Block until an event is pending or `timeout` passes (None: forever),
    /// then take it.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<Option<VmEvent>> {
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        loop {
            // SAFETY: `pfd` is a valid pollfd for the duration of the call and
            // the count passed is 1.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            return Ok(if r == 0 { None } else { self.take() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_event_wins_until_taken() {
        let ev = VmEvents::new().unwrap();
        assert_eq!(ev.wait(Some(Duration::from_millis(1))).unwrap(), None);
        ev.request_exit(7);
        ev.request_reset();
        assert_eq!(ev.pending(), Some(VmEvent::Exit(7)));
        assert_eq!(ev.wait(Some(Duration::from_millis(1))).unwrap(), Some(VmEvent::Exit(7)));
        assert_eq!(ev.take(), None);
        ev.request_poweroff();
        assert_eq!(ev.take(), Some(VmEvent::PowerOff));
    }

    #[test]
    fn wait_wakes_on_post_from_another_thread() {
        let ev = Arc::new(VmEvents::new().unwrap());
        let poster = ev.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            poster.request_reset();
        });
        assert_eq!(ev.wait(Some(Duration::from_secs(5))).unwrap(), Some(VmEvent::Reset));
        t.join().unwrap();
    }
}
