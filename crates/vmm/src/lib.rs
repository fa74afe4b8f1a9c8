//! The virtual machine monitor: builds one VM from a [`VmConfig`] on KVM,
//! runs it, serves its control socket, and reports how it ended.

pub mod api_server;
pub mod config;
pub mod interrupts;
pub mod legacy;
pub mod loader;
pub mod memory;
pub mod report;
pub mod vcpu;
pub mod virtio;
pub mod vm;

use std::sync::mpsc::channel;

pub use config::{OnReboot, VmConfig, parse_size};
pub use loader::{BootProtocol, KernelSource};
pub use vm::VmOutcome;

/// Process exit statuses of `tern run`.
pub mod exit_status {
    /// The guest powered off, rebooted with `--on-reboot exit`, or was stopped.
    pub const OK: i32 = 0;
    /// The VMM could not start the VM (bad input, host problem).
    pub const ERROR: i32 = 1;
    /// The guest stopped on a fault (internal error, failed entry, unknown exit).
    pub const GUEST_FAULT: i32 = 4;
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Hypervisor(#[from] hypervisor::HypervisorError),
    #[error(transparent)]
    Vm(#[from] hypervisor::VmError),
    #[error(transparent)]
    Vcpu(#[from] hypervisor::VcpuError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Cpuid(#[from] arch::cpuid::CpuidError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Layout(#[from] arch::memory::MemoryLayoutError),
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    #[error(transparent)]
    Legacy(#[from] legacy::LegacyError),
    #[error(transparent)]
    Boot(#[from] arch::boot::BootError),
    #[error(transparent)]
    Regs(#[from] arch::regs::RegsError),
    #[error(transparent)]
    Acpi(#[from] arch::acpi::AcpiError),
    #[error(transparent)]
    MpTable(#[from] arch::mptable::MpTableError),
    #[error(transparent)]
    Api(#[from] api_server::ApiServerError),
    #[error(transparent)]
    Virtio(#[from] virtio::VirtioWiringError),
    #[error("cannot create the VM event channel: {0}")]
    Events(std::io::Error),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(std::io::Error),
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
}

/// Build the VM, serve its control socket if asked, and run it to the end.
pub fn run_vm(config: VmConfig, kernel: KernelSource, proto: BootProtocol) -> Result<VmOutcome, VmmError> {
    let (tx, rx) = channel();
    // Bind before starting so a busy socket fails before the guest runs.
    let _api = match &config.api_socket {
        Some(p) => Some(api_server::serve(p, tx)?),
        None => None,
    };
    let vm = vm::Vm::start(config, kernel, proto)?;
    Ok(vm.run(&rx))
}
