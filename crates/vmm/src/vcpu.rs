//! vCPU threads: one per vCPU, each running `KVM_RUN` in a loop, serving I/O
//! through the buses, and obeying run/pause/stop commands. A stopped or
//! paused vCPU is kicked out of the guest with a signal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::Bus;
use devices::legacy::VmEvents;
use hypervisor::{IoHandler, Vcpu, VcpuExit};
use vmm_sys_util::signal::{Killable, register_signal_handler};

use crate::report::fault_report;

/// Signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 1
}

/// Install the (empty) kick handler once per process. Its only job is to
/// make KVM_RUN return EINTR.
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    register_signal_handler(kick_signal(), noop).map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

const RUN: u8 = 0;
const PAUSE: u8 = 1;
const STOP: u8 = 2;

/// Commands shared between the VMM and its vCPU threads.
#[derive(Default)]
pub struct VcpuControl {
    cmd: AtomicU8,
    paused: AtomicU32,
    lock: Mutex<()>,
    cv: Condvar,
}

/// Per-vCPU counters exported through the control socket.
#[derive(Default)]
pub struct VcpuCounters {
    pub exits: Mutex<BTreeMap<&'static str, u64>>,
    pub io_exits: AtomicU64,
    pub run_ns: AtomicU64,
    /// Guest RIP recorded each time the vCPU parks for a pause.
    pub last_rip: AtomicU64,
    /// Host CPUs this vCPU should move to; applied by the vCPU thread itself
    /// (affinity is per thread) the next time it leaves KVM_RUN.
    pub pin_request: Mutex<Option<Vec<usize>>>,
}

/// Why a vCPU thread ended abnormally: the report for the user.
#[derive(Debug, Clone)]
pub struct VcpuFailure {
    pub vcpu: u32,
    pub report: String,
}

/// What a vCPU thread needs.
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub mem: vm_memory::GuestMemoryMmap,
    pub events: Arc<VmEvents>,
    pub control: Arc<VcpuControl>,
    pub counters: Arc<VcpuCounters>,
    pub failures: std::sync::mpsc::Sender<VcpuFailure>,
    pub pin: Option<Vec<usize>>,
}

struct BusIo<'a> {
    pio: &'a Bus,
    mmio: &'a Bus,
}

impl IoHandler for BusIo<'_> {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.pio.read(u64::from(port), data) {
            tracing::trace!("unclaimed port read {port:#x}");
        }
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        if !self.pio.write(u64::from(port), data) {
            tracing::trace!("unclaimed port write {port:#x} {data:x?}");
        }
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            tracing::debug!("unclaimed MMIO read {addr:#x}");
        }
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if !self.mmio.write(addr, data) {
            tracing::debug!("unclaimed MMIO write {addr:#x} {data:x?}");
        }
    }
}

impl VcpuControl {
    fn cmd(&self) -> u8 {
        self.cmd.load(Ordering::Acquire)
    }

    /// Ask every vCPU to pause and wait until all have (kicking them out of
    /// the guest until they answer).
    pub fn pause(&self, threads: &[VcpuThread]) {
        self.cmd.store(PAUSE, Ordering::Release);
        let n = threads.iter().filter(|t| !t.handle.as_ref().is_none_or(|h| h.is_finished())).count() as u32;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.paused.load(Ordering::Acquire) < n && Instant::now() < deadline {
            kick_all(threads);
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    pub fn resume(&self) {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.cmd.store(RUN, Ordering::Release);
        self.cv.notify_all();
    }

    /// Stop every vCPU thread and join them.
    pub fn stop(&self, threads: &mut [VcpuThread]) {
        {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cmd.store(STOP, Ordering::Release);
            self.cv.notify_all();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while threads.iter().any(|t| t.handle.as_ref().is_some_and(|h| !h.is_finished())) {
            if Instant::now() > deadline {
                tracing::warn!("vCPU threads did not stop within 5 s; leaving them");
                return;
            }
            kick_all(threads);
            std::thread::sleep(Duration::from_micros(500));
        }
        for t in threads.iter_mut() {
            if let Some(h) = t.handle.take() {
                let _ = h.join();
            }
        }
    }

    fn wait_while_paused(&self) {
        self.paused.fetch_add(1, Ordering::AcqRel);
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.cmd() == PAUSE {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        drop(g);
        self.paused.fetch_sub(1, Ordering::AcqRel);
    }
}

fn kick_all(threads: &[VcpuThread]) {
    for t in threads {
        if let Some(h) = &t.handle
            && !h.is_finished()
        {
            let _ = h.kill(kick_signal());
        }
    }
}

pub struct VcpuThread {
    pub id: u32,
    pub handle: Option<JoinHandle<()>>,
}

/// Start the thread for `vcpu`.
pub fn spawn_vcpu(mut vcpu: Vcpu, ctx: VcpuContext) -> std::io::Result<VcpuThread> {
    let id = vcpu.id();
    let handle = std::thread::Builder::new().name(format!("vcpu{id}")).spawn(move || {
        if let Some(cpus) = &ctx.pin
            && let Err(e) = pin_current_thread(cpus)
        {
            tracing::warn!("cannot pin vCPU {id} to {cpus:?}: {e}");
        }
        run_loop(&mut vcpu, &ctx);
    })?;
    Ok(VcpuThread { id, handle: Some(handle) })
}

/// Pin the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c < libc::CPU_SETSIZE as usize {
            // SAFETY: CPU_SET writes inside `set` for any c < CPU_SETSIZE, checked above.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    // SAFETY: pid 0 is the calling thread; `set` is valid for its size.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Kick one vCPU thread out of KVM_RUN (e.g. to apply a new pinning).
pub fn kick(thread: &VcpuThread) {
    if let Some(h) = &thread.handle
        && !h.is_finished()
    {
        let _ = h.kill(kick_signal());
    }
}

fn run_loop(vcpu: &mut Vcpu, ctx: &VcpuContext) {
    let io = BusIo { pio: &ctx.pio, mmio: &ctx.mmio };
    loop {
        if let Some(cpus) = ctx.counters.pin_request.lock().unwrap_or_else(|e| e.into_inner()).take()
            && let Err(e) = pin_current_thread(&cpus)
        {
            tracing::warn!("cannot pin vCPU {} to {cpus:?}: {e}", vcpu.id());
        }
        match ctx.control.cmd() {
            STOP => return,
            PAUSE => {
                if let Ok(r) = vcpu.regs() {
                    ctx.counters.last_rip.store(r.rip, Ordering::Relaxed);
                }
                ctx.control.wait_while_paused();
                continue;
            }
            _ => {}
        }
        let t0 = Instant::now();
        let exit = vcpu.run(&io);
        ctx.counters.run_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let exit = match exit {
            Ok(e) => e,
            Err(e) => {
                let _ = ctx.failures.send(VcpuFailure { vcpu: vcpu.id(), report: e.to_string() });
                return;
            }
        };
        if exit == VcpuExit::Io {
            ctx.counters.io_exits.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        *ctx.counters.exits.lock().unwrap_or_else(|e| e.into_inner()).entry(exit.name()).or_default() += 1;
        match exit {
            VcpuExit::Io | VcpuExit::Interrupted => {}
            VcpuExit::Reset | VcpuExit::Shutdown => {
                // A triple fault is how Linux (reboot=t) and many guests reset.
                ctx.events.request_reset();
                return;
            }
            VcpuExit::PowerOff => {
                ctx.events.request_poweroff();
                return;
            }
            VcpuExit::Hlt => {
                // With the in-kernel LAPIC, KVM handles HLT itself; an exit
                // here means the vCPU can never be woken again.
                let report = fault_report(vcpu, &ctx.mem, "vCPU halted and cannot be woken (HLT exit)");
                let _ = ctx.failures.send(VcpuFailure { vcpu: vcpu.id(), report });
                return;
            }
            VcpuExit::InternalError { suberror, ref data } => {
                let what = format!(
                    "KVM internal error (suberror {suberror}{}), data {data:x?}",
                    if suberror == 1 { ": instruction emulation failed" } else { "" }
                );
                let report = fault_report(vcpu, &ctx.mem, &what);
                let _ = ctx.failures.send(VcpuFailure { vcpu: vcpu.id(), report });
                return;
            }
            VcpuExit::FailEntry { reason } => {
                let report = fault_report(vcpu, &ctx.mem, &format!("VM entry failed, hardware reason {reason:#x}"));
                let _ = ctx.failures.send(VcpuFailure { vcpu: vcpu.id(), report });
                return;
            }
            VcpuExit::Crash => {
                let report = fault_report(vcpu, &ctx.mem, "guest reported a crash (KVM_SYSTEM_EVENT_CRASH)");
                let _ = ctx.failures.send(VcpuFailure { vcpu: vcpu.id(), report });
                return;
            }
            VcpuExit::Unknown { reason, name } => {
                let report = fault_report(vcpu, &ctx.mem, &format!("unexpected KVM exit {reason} ({name})"));
                let _ = ctx.failures.send(VcpuFailure { vcpu: vcpu.id(), report });
                return;
            }
        }
    }
}
