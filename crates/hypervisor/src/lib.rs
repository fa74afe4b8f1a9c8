//! The hypervisor layer: a thin, device-agnostic wrapper over KVM. It opens
//! /dev/kvm, checks what the VMM relies on, creates VMs and vCPUs, and turns
//! `KVM_RUN` exits into [`VcpuExit`] values; port and MMIO accesses are handed
//! to an [`IoHandler`] so this crate never knows which devices exist.

mod kvm;
mod vcpu;
mod vm;

pub use kvm::{Capabilities, Hypervisor, HypervisorError, REQUIRED_CAPS};
pub use vcpu::{FpuState, IoHandler, Vcpu, VcpuError, VcpuExit, VcpuState};
pub use vm::{IoEventAddress, Vm, VmError};

pub use kvm_bindings;
pub use kvm_ioctls;
