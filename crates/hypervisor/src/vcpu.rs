//! A vCPU: register state, CPUID, MSRs, and the `KVM_RUN` loop step that
//! turns exits into [`VcpuExit`]s. Port and MMIO accesses are served inline
//! through an [`IoHandler`].

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, Msrs, kvm_fpu, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events,
};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {id}: {what} failed: {source}")]
    Ioctl { id: u32, what: &'static str, source: kvm_ioctls::Error },
    #[error("vCPU {id}: KVM accepted only {set} of {total} MSRs")]
    PartialMsrs { id: u32, set: usize, total: usize },
}

/// Serves guest port and MMIO accesses. Implemented by the VMM over its buses.
pub trait IoHandler {
    fn pio_read(&self, port: u16, data: &mut [u8]);
    fn pio_write(&self, port: u16, data: &[u8]);
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    fn mmio_write(&self, addr: u64, data: &[u8]);
}

/// Why `run` returned. I/O exits are served inside `run` and reported as
/// `Io` so the caller just loops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuExit {
    /// A port or MMIO access was served.
    Io,
    /// The guest executed HLT with interrupts it expects to be woken by
    /// (only seen without an in-kernel LAPIC, or with HLT at CPL0 on some backends).
    Hlt,
    /// Triple fault (or explicit shutdown).
    Shutdown,
    /// KVM_SYSTEM_EVENT reset request.
    Reset,
    /// KVM_SYSTEM_EVENT shutdown request (e.g. PSCI/ACPI through KVM).
    PowerOff,
    /// Guest crash event.
    Crash,
    /// KVM_RUN was interrupted by a signal (pause/stop kick).
    Interrupted,
    /// KVM could not handle something; `suberror` 1 is emulation failure.
    InternalError { suberror: u32, data: Vec<u64> },
    /// VM entry failed; the hardware reason code.
    FailEntry { reason: u64 },
    /// Any other exit: the raw KVM exit reason.
    Unknown { reason: u32, name: &'static str },
}

impl VcpuExit {
    /// A short stable name for counters.
    pub fn name(&self) -> &'static str {
        match self {
            VcpuExit::Io => "io",
            VcpuExit::Hlt => "hlt",
            VcpuExit::Shutdown => "shutdown",
            VcpuExit::Reset => "reset",
            VcpuExit::PowerOff => "poweroff",
            VcpuExit::Crash => "crash",
            VcpuExit::Interrupted => "interrupted",
            VcpuExit::InternalError { .. } => "internal-error",
            VcpuExit::FailEntry { .. } => "fail-entry",
            VcpuExit::Unknown { .. } => "unknown",
        }
    }
}

/// Everything needed to put a vCPU back as it was (snapshot/migration).
#[derive(Clone, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u32,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    pub msrs: Vec<(u32, u64)>,
}

/// The legacy FPU/SSE state in a serializable form (kvm_fpu has no serde).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Debug)]
pub struct FpuState {
    pub fpr: Vec<[u8; 16]>,
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: Vec<[u8; 16]>,
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        Self {
            fpr: f.fpr.to_vec(),
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm.to_vec(),
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(s: &FpuState) -> Self {
        let mut f = kvm_fpu {
            fcw: s.fcw,
            fsw: s.fsw,
            ftwx: s.ftwx,
            last_opcode: s.last_opcode,
            last_ip: s.last_ip,
            last_dp: s.last_dp,
            mxcsr: s.mxcsr,
            ..Default::default()
        };
        for (d, v) in f.fpr.iter_mut().zip(&s.fpr) {
            *d = *v;
        }
        for (d, v) in f.xmm.iter_mut().zip(&s.xmm) {
            *d = *v;
        }
        f
    }
}

pub struct Vcpu {
    id: u32,
    fd: VcpuFd,
}

impl Vcpu {
    pub(crate) fn new(id: u32, fd: VcpuFd) -> Self {
        Self { id, fd }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    fn err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let id = self.id;
        move |source| VcpuError::Ioctl { id, what, source }
    }

    pub fn set_cpuid(&self, cpuid: &CpuId) -> Result<(), VcpuError> {
        self.fd.set_cpuid2(cpuid).map_err(self.err("KVM_SET_CPUID2"))
    }
    pub fn regs(&self) -> Result<kvm_regs, VcpuError> {
        self.fd.get_regs().map_err(self.err("KVM_GET_REGS"))
    }
    pub fn set_regs(&self, r: &kvm_regs) -> Result<(), VcpuError> {
        self.fd.set_regs(r).map_err(self.err("KVM_SET_REGS"))
    }
    pub fn sregs(&self) -> Result<kvm_sregs, VcpuError> {
        self.fd.get_sregs().map_err(self.err("KVM_GET_SREGS"))
    }
    pub fn set_sregs(&self, s: &kvm_sregs) -> Result<(), VcpuError> {
        self.fd.set_sregs(s).map_err(self.err("KVM_SET_SREGS"))
    }
    pub fn fpu(&self) -> Result<kvm_fpu, VcpuError> {
        self.fd.get_fpu().map_err(self.err("KVM_GET_FPU"))
    }
    pub fn set_fpu(&self, f: &kvm_fpu) -> Result<(), VcpuError> {
        self.fd.set_fpu(f).map_err(self.err("KVM_SET_FPU"))
    }
    pub fn lapic(&self) -> Result<kvm_lapic_state, VcpuError> {
        self.fd.get_lapic().map_err(self.err("KVM_GET_LAPIC"))
    }
    pub fn set_lapic(&self, l: &kvm_lapic_state) -> Result<(), VcpuError> {
        self.fd.set_lapic(l).map_err(self.err("KVM_SET_LAPIC"))
    }
    pub fn mp_state(&self) -> Result<kvm_mp_state, VcpuError> {
        self.fd.get_mp_state().map_err(self.err("KVM_GET_MP_STATE"))
    }
    pub fn set_mp_state(&self, m: kvm_mp_state) -> Result<(), VcpuError> {
        self.fd.set_mp_state(m).map_err(self.err("KVM_SET_MP_STATE"))
    }

    /// Set MSRs; all of them must be accepted.
    pub fn set_msrs(&self, entries: &[(u32, u64)]) -> Result<(), VcpuError> {
        let list: Vec<kvm_msr_entry> =
            entries.iter().map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() }).collect();
        let msrs =
            Msrs::from_entries(&list).map_err(|_| VcpuError::PartialMsrs { id: self.id, set: 0, total: list.len() })?;
        let n = self.fd.set_msrs(&msrs).map_err(self.err("KVM_SET_MSRS"))?;
        if n != list.len() {
            return Err(VcpuError::PartialMsrs { id: self.id, set: n, total: list.len() });
        }
        Ok(())
    }

    /// Read the given MSRs; those KVM refuses are left out.
    pub fn msrs(&self, indices: &[u32]) -> Result<Vec<(u32, u64)>, VcpuError> {
        let list: Vec<kvm_msr_entry> =
            indices.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs =
            Msrs::from_entries(&list).map_err(|_| VcpuError::PartialMsrs { id: self.id, set: 0, total: list.len() })?;
        let n = self.fd.get_msrs(&mut msrs).map_err(self.err("KVM_GET_MSRS"))?;
        Ok(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)).collect())
    }

    pub fn translate_gva(&self, gva: u64) -> Option<u64> {
        let t = self.fd.translate_gva(gva).ok()?;
        (t.valid != 0).then_some(t.physical_address)
    }

    /// Ask the next (or current, when a signal interrupts it) KVM_RUN to
    /// return at once. Used to kick vCPUs for pause and stop.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    /// Capture the complete vCPU state.
    pub fn save_state(&self, msr_indices: &[u32]) -> Result<VcpuState, VcpuError> {
        Ok(VcpuState {
            id: self.id,
            regs: self.regs()?,
            sregs: self.sregs()?,
            fpu: FpuState::from(&self.fpu()?),
            lapic: self.lapic()?,
            mp_state: self.mp_state()?,
            events: self.fd.get_vcpu_events().map_err(self.err("KVM_GET_VCPU_EVENTS"))?,
            msrs: self.msrs(msr_indices)?,
        })
    }

    /// Put back a state captured by `save_state` (on a vCPU with the same CPUID).
    pub fn restore_state(&self, s: &VcpuState) -> Result<(), VcpuError> {
        self.set_sregs(&s.sregs)?;
        self.set_regs(&s.regs)?;
        self.set_fpu(&kvm_fpu::from(&s.fpu))?;
        self.set_msrs(&s.msrs)?;
        self.set_mp_state(s.mp_state)?;
        self.set_lapic(&s.lapic)?;
        self.fd.set_vcpu_events(&s.events).map_err(self.err("KVM_SET_VCPU_EVENTS"))
    }

    /// Enter the guest until the next exit.
    pub fn run(&mut self, io: &dyn IoHandler) -> Result<VcpuExit, VcpuError> {
        let exit = match self.fd.run() {
            Ok(KvmExit::IoIn(port, data)) => {
                io.pio_read(port, data);
                VcpuExit::Io
            }
            Ok(KvmExit::IoOut(port, data)) => {
                io.pio_write(port, data);
                VcpuExit::Io
            }
            Ok(KvmExit::MmioRead(addr, data)) => {
                io.mmio_read(addr, data);
                VcpuExit::Io
            }
            Ok(KvmExit::MmioWrite(addr, data)) => {
                io.mmio_write(addr, data);
                VcpuExit::Io
            }
            Ok(KvmExit::Hlt) => VcpuExit::Hlt,
            Ok(KvmExit::Shutdown) => VcpuExit::Shutdown,
            Ok(KvmExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_RESET => VcpuExit::Reset,
                KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit::PowerOff,
                KVM_SYSTEM_EVENT_CRASH => VcpuExit::Crash,
                _ => VcpuExit::Unknown { reason: kvm_bindings::KVM_EXIT_SYSTEM_EVENT, name: "system-event" },
            },
            Ok(KvmExit::Intr) => VcpuExit::Interrupted,
            Ok(KvmExit::InternalError) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the
                // `internal` member of the union is the one KVM filled.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                VcpuExit::InternalError { suberror: internal.suberror, data: internal.data[..n].to_vec() }
            }
            Ok(KvmExit::FailEntry(reason, _)) => VcpuExit::FailEntry { reason },
            Ok(other) => {
                let name = exit_name(&other);
                let reason = self.fd.get_kvm_run().exit_reason;
                VcpuExit::Unknown { reason, name }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                VcpuExit::Interrupted
            }
            Err(e) => return Err(VcpuError::Ioctl { id: self.id, what: "KVM_RUN", source: e }),
        };
        Ok(exit)
    }
}

fn exit_name(e: &KvmExit<'_>) -> &'static str {
    match e {
        KvmExit::Unknown => "unknown",
        KvmExit::Exception => "exception",
        KvmExit::Hypercall(_) => "hypercall",
        KvmExit::Debug(_) => "debug",
        KvmExit::IrqWindowOpen => "irq-window-open",
        KvmExit::SetTpr => "set-tpr",
        KvmExit::TprAccess => "tpr-access",
        KvmExit::Nmi => "nmi",
        KvmExit::X86Rdmsr(_) => "rdmsr",
        KvmExit::X86Wrmsr(_) => "wrmsr",
        KvmExit::IoapicEoi(_) => "ioapic-eoi",
        KvmExit::MemoryFault { .. } => "memory-fault",
        _ => "other",
    }
}
