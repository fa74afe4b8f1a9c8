//! The worker thread every device runs its queues on. It waits (epoll) on
//! the queue EventFds (signalled by ioeventfd when the guest rings the
//! doorbell), on a kill and a pause EventFd, and on any extra backend fds
//! (a TAP, a socket, an io_uring completion fd), and calls the device's
//! [`QueueHandler`]. Pausing parks the thread after the handler has finished
//! its in-flight requests, so a paused device neither touches guest memory
//! nor raises interrupts and its queue positions can be saved.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::device::VirtioInterrupt;

const KILL_TOKEN: u64 = u64::MAX;
const PAUSE_TOKEN: u64 = u64::MAX - 1;
/// Extra fds get tokens from here up, so they never collide with queue indices.
const EXTRA_TOKEN_BASE: u64 = 1 << 32;
/// How long `pause` waits for the worker to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A guest-caused error that leaves the device unusable until reset.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeviceBroken(pub String);

/// What the worker calls. Implemented by each device's queue processor.
pub trait QueueHandler: Send + 'static {
    /// Queue `index` was notified (its EventFd has been drained). Return
    /// `Err` when the guest broke the queue: the worker then marks the device
    /// as needing a reset and stops processing.
    fn queue_notified(&mut self, index: usize) -> Result<(), DeviceBroken>;
    /// An extra fd registered with `token` is ready.
    fn fd_ready(&mut self, _token: u64, _events: EventSet) -> Result<(), DeviceBroken> {
        Ok(())
    }
    /// Finish in-flight requests before the worker parks (pause, kill).
    fn quiesce(&mut self) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    Running,
    PauseRequested,
    Paused,
    Killed,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot create worker eventfd/epoll: {0}")]
    Setup(std::io::Error),
    #[error("cannot spawn worker thread {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("worker {0} did not pause within {1:?}")]
    PauseTimeout(String, Duration),
}

/// Handle to a running worker; dropping it stops and joins the thread.
pub struct Worker {
    name: String,
    kill: EventFd,
    pause: EventFd,
    state: Arc<(Mutex<RunState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// An extra fd to watch, and the token passed to `fd_ready`.
pub struct ExtraFd {
    pub fd: RawFd,
    pub events: EventSet,
    pub token: u64,
}

impl Worker {
    /// Start a worker named `name` watching `queue_events` (index = position)
    /// and `extra` fds. The EventFds are owned by the worker.
    pub fn spawn(
        name: &str,
        queue_events: Vec<EventFd>,
        extra: Vec<ExtraFd>,
        interrupt: Arc<dyn VirtioInterrupt>,
        handler: Box<dyn QueueHandler>,
    ) -> Result<Self, WorkerError> {
        let kill = EventFd::new(EFD_NONBLOCK).map_err(WorkerError::Setup)?;
        let pause = EventFd::new(EFD_NONBLOCK).map_err(WorkerError::Setup)?;
        let epoll = Epoll::new().map_err(WorkerError::Setup)?;
        let add = |fd: RawFd, ev: EventSet, token: u64| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(ev, token)).map_err(WorkerError::Setup)
        };
        add(kill.as_raw_fd(), EventSet::IN, KILL_TOKEN)?;
        add(pause.as_raw_fd(), EventSet::IN, PAUSE_TOKEN)?;
        for (i, e) in queue_events.iter().enumerate() {
            add(e.as_raw_fd(), EventSet::IN, i as u64)?;
        }
        for x in &extra {
            add(x.fd, x.events, EXTRA_TOKEN_BASE + x.token)?;
        }
        let state = Arc::new((Mutex::new(RunState::Running), Condvar::new()));
        let mut ctx = Loop {
            epoll,
            queue_events,
            pause: pause.try_clone().map_err(WorkerError::Setup)?,
            state: state.clone(),
            interrupt,
            handler,
            broken: false,
        };
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || ctx.run())
            .map_err(|e| WorkerError::Spawn(name.to_string(), e))?;
        Ok(Self { name: name.to_string(), kill, pause, state, thread: Some(thread) })
    }

    /// Park the worker after its in-flight requests complete.
    pub fn pause(&self) -> Result<(), WorkerError> {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        if *st != RunState::Running {
            return Ok(());
        }
        *st = RunState::PauseRequested;
        let _ = self.pause.write(1);
        let (st, res) = cv
            .wait_timeout_while(st, PAUSE_TIMEOUT, |s| *s == RunState::PauseRequested)
            .unwrap_or_else(|e| e.into_inner());
        if res.timed_out() && *st == RunState::PauseRequested {
            return Err(WorkerError::PauseTimeout(self.name.clone(), PAUSE_TIMEOUT));
        }
        Ok(())
    }

    pub fn resume(&self) {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*st, RunState::Paused | RunState::PauseRequested) {
            *st = RunState::Running;
            cv.notify_all();
        }
    }

    pub fn is_paused(&self) -> bool {
        *self.state.0.lock().unwrap_or_else(|e| e.into_inner()) == RunState::Paused
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.state;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = RunState::Killed;
            cv.notify_all();
        }
        let _ = self.kill.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Loop {
    epoll: Epoll,
    queue_events: Vec<EventFd>,
    pause: EventFd,
    state: Arc<(Mutex<RunState>, Condvar)>,
    interrupt: Arc<dyn VirtioInterrupt>,
    handler: Box<dyn QueueHandler>,
    broken: bool,
}

impl Loop {
    fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); self.queue_events.len() + 16];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("virtio worker epoll failed: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    KILL_TOKEN => {
                        self.handler.quiesce();
                        return;
                    }
                    PAUSE_TOKEN => {
                        let _ = self.pause.read();
                        if !self.park() {
                            return;
                        }
                    }
                    t if t >= EXTRA_TOKEN_BASE => {
                        if !self.broken {
                            let r = self.handler.fd_ready(t - EXTRA_TOKEN_BASE, ev.event_set());
                            self.check(r);
                        }
                    }
                    q => {
                        let Some(evt) = self.queue_events.get(q as usize) else { continue };
                        let _ = evt.read();
                        if !self.broken {
                            let r = self.handler.queue_notified(q as usize);
                            self.check(r);
                        }
                    }
                }
            }
        }
    }

    fn check(&mut self, r: Result<(), DeviceBroken>) {
        if let Err(e) = r {
            tracing::warn!("virtio device broken by the guest: {e}; it needs a reset");
            self.broken = true;
            self.interrupt.set_needs_reset();
        }
    }

    /// Park until resumed; false when killed meanwhile.
    fn park(&mut self) -> bool {
        self.handler.quiesce();
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        if *st == RunState::PauseRequested {
            *st = RunState::Paused;
            cv.notify_all();
        }
        while *st == RunState::Paused {
            st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let killed = *st == RunState::Killed;
        drop(st);
        // Notifications that arrived while parked are still pending on the
        // EventFds (level-triggered epoll), so they are handled next round.
        !killed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::VirtioInterruptType;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Irq {
        resets: AtomicU64,
    }
    impl VirtioInterrupt for Irq {
        fn trigger(&self, _: VirtioInterruptType) -> std::io::Result<()> {
            Ok(())
        }
        fn set_needs_reset(&self) {
            self.resets.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct H(Arc<AtomicU64>);
    impl QueueHandler for H {
        fn queue_notified(&mut self, index: usize) -> Result<(), DeviceBroken> {
            if index == 1 {
                return Err(DeviceBroken("bad ring".into()));
            }
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn wait_for(f: impl Fn() -> bool) -> bool {
        for _ in 0..500 {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    #[test]
    fn processes_pauses_resumes_and_breaks() {
        let count = Arc::new(AtomicU64::new(0));
        let irq = Arc::new(Irq::default());
        let q0 = EventFd::new(EFD_NONBLOCK).unwrap();
        let q1 = EventFd::new(EFD_NONBLOCK).unwrap();
        let (n0, n1) = (q0.try_clone().unwrap(), q1.try_clone().unwrap());
        let w = Worker::spawn("t", vec![q0, q1], vec![], irq.clone(), Box::new(H(count.clone()))).unwrap();
        n0.write(1).unwrap();
        assert!(wait_for(|| count.load(Ordering::SeqCst) == 1));
        w.pause().unwrap();
        assert!(w.is_paused());
        n0.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(count.load(Ordering::SeqCst), 1, "a paused worker must not process");
        w.resume();
        assert!(wait_for(|| count.load(Ordering::SeqCst) == 2));
        n1.write(1).unwrap();
        assert!(wait_for(|| irq.resets.load(Ordering::SeqCst) == 1));
        n0.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(count.load(Ordering::SeqCst), 2, "a broken device stops processing");
        drop(w);
    }
}
