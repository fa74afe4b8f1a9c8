//! Opening /dev/kvm and checking the API version and capabilities.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

use crate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("{path} does not exist: load the kvm module (modprobe kvm_intel or kvm_amd) or run on a host with KVM")]
    NoDevice { path: String },
    #[error("cannot open {path} read-write: {source} (run as root or add the user to the 'kvm' group)")]
    Open { path: String, source: std::io::Error },
    #[error("{0} is not a KVM device (KVM_GET_API_VERSION failed): point TERN_KVM_DEVICE at /dev/kvm or unset it")]
    NotKvm(String),
    #[error("KVM API version is {0}, Tern needs 12")]
    ApiVersion(i32),
    #[error("KVM lacks capability {0}, which Tern needs; update the host kernel")]
    MissingCap(&'static str),
    #[error("cannot create a VM: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("cannot read the CPUID KVM supports: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    #[error("cannot read KVM's MSR list: {0}")]
    MsrList(kvm_ioctls::Error),
}

/// Capabilities the VMM cannot work without, with the name reported when missing.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
    (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
];

/// Optional capabilities reported by `tern check` and used when present.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Capabilities {
    pub tsc_deadline_timer: bool,
    pub immediate_exit: bool,
    pub max_vcpus: usize,
    pub nr_vcpus: usize,
    pub adjust_clock: bool,
}

/// An open /dev/kvm.
pub struct Hypervisor {
    kvm: Kvm,
}

impl Hypervisor {
    /// Open `/dev/kvm` (or `path`), check the API version and the required
    /// capabilities.
    /// `TERN_KVM_DEVICE` overrides the path (for tests and unusual hosts).
    pub fn new() -> Result<Self, HypervisorError> {
        match std::env::var_os("TERN_KVM_DEVICE") {
            Some(p) => Self::open(Path::new(&p)),
            None => Self::open(Path::new("/dev/kvm")),
        }
    }

    pub fn open(path: &Path) -> Result<Self, HypervisorError> {
        let p = path.display().to_string();
        if !path.exists() {
            return Err(HypervisorError::NoDevice { path: p });
        }
        // Probe read-write access first so the error names the real cause.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| HypervisorError::Open { path: p.clone(), source: e })?;
        let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|e| HypervisorError::Open { path: p.clone(), source: std::io::Error::other(e) })?;
        let kvm = Kvm::new_with_path(&cpath).map_err(|e| HypervisorError::Open {
            path: p.clone(),
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        let v = kvm.get_api_version();
        if v < 0 {
            return Err(HypervisorError::NotKvm(p));
        }
        if v != 12 {
            return Err(HypervisorError::ApiVersion(v));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(HypervisorError::MissingCap(name));
            }
        }
        Ok(Self { kvm })
    }

    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            tsc_deadline_timer: self.kvm.check_extension(Cap::TscDeadlineTimer),
            immediate_exit: self.kvm.check_extension(Cap::ImmediateExit),
            max_vcpus: self.kvm.get_max_vcpus(),
            nr_vcpus: self.kvm.get_nr_vcpus(),
            adjust_clock: self.kvm.check_extension(Cap::AdjustClock),
        }
    }

    pub fn create_vm(&self) -> Result<Vm, HypervisorError> {
        let fd = self.kvm.create_vm().map_err(HypervisorError::CreateVm)?;
        Ok(Vm::new(fd))
    }

    /// CPUID leaves KVM can expose on this host.
    pub fn supported_cpuid(&self) -> Result<kvm_bindings::CpuId, HypervisorError> {
        self.kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(HypervisorError::SupportedCpuid)
    }

    /// MSR indices KVM saves and restores (for snapshots).
    pub fn msr_index_list(&self) -> Result<Vec<u32>, HypervisorError> {
        Ok(self.kvm.get_msr_index_list().map_err(HypervisorError::MsrList)?.as_slice().to_vec())
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }
}
