//! Watch the TAP for frames only while the guest has rx buffers.
//!
//! The worker's epoll cannot change an fd's interest, so the TAP sits in a
//! small epoll of its own whose fd is what the worker waits on: switching the
//! TAP's interest there off while the rx ring is empty means frames arriving
//! meanwhile (a flood fills the TAP queue at the rate the guest drains it)
//! no longer wake the worker for nothing; the guest's rx notification
//! switches it back on. QEMU stops polling its TAP the same way.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

pub struct TapGate {
    epoll: Epoll,
    tap: RawFd,
    open: bool,
}

impl TapGate {
    /// A gate around `tap`, open (watching it, edge-triggered).
    pub fn new(tap: RawFd) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(ControlOperation::Add, tap, EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, 0))?;
        Ok(TapGate { epoll, tap, open: true })
    }

    /// What the worker waits on in place of the TAP: readable when the TAP
    /// got frames while the gate was open.
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    #[cfg(test)]
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Watch the TAP again. If it already holds frames this raises an event
    /// (one spare wakeup at most); the caller reads the TAP right after.
    pub fn open(&mut self) {
        if !self.open {
            self.open = self.set(EventSet::IN | EventSet::EDGE_TRIGGERED);
        }
    }

    /// Stop watching the TAP (no rx buffers: nothing could be done anyway).
    pub fn close(&mut self) {
        if self.open {
            self.open = !self.set(EventSet::empty());
        }
    }

    fn set(&self, events: EventSet) -> bool {
        match self.epoll.ctl(ControlOperation::Modify, self.tap, EpollEvent::new(events, 0)) {
            Ok(()) => true,
            Err(e) => {
                // Cannot happen for a registered fd; staying open is the
                // safe side (spare wakeups, never a missed frame).
                tracing::warn!("virtio-net: cannot change TAP interest: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        assert!(n >= 0, "poll: {}", io::Error::last_os_error());
        n == 1 && p.revents & libc::POLLIN != 0
    }

    /// A pipe stands in for the TAP: any pollable fd behaves the same.
    #[test]
    fn closed_gate_hides_readiness_and_reopening_shows_pending_data() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) }, 0);
        let (r, w) = (fds[0], fds[1]);
        let put = |b: &[u8]| {
            // SAFETY: writes from a valid buffer to our own pipe.
            assert_eq!(unsafe { libc::write(w, b.as_ptr().cast(), b.len()) }, b.len() as isize);
        };
        let mut gate = TapGate::new(r).unwrap();
        assert!(gate.is_open());
        assert!(!readable(gate.fd()), "nothing to read yet");
        put(b"a");
        assert!(readable(gate.fd()), "open gate shows data");
        gate.close();
        assert!(!gate.is_open());
        assert!(!readable(gate.fd()), "closed gate hides data already there");
        put(b"b");
        assert!(!readable(gate.fd()), "closed gate hides new data");
        gate.open();
        assert!(readable(gate.fd()), "reopened gate shows what arrived meanwhile");
        // SAFETY: both fds are ours and closed once.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
    }
}
