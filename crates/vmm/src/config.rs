//! The VM's configuration as `tern run` (and the manager) describe it, and
//! the parsers for its textual forms.

use std::path::PathBuf;

pub use arch::cpuid::CpuModel;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid size '{0}': use a number with an optional unit K, M, G or T (e.g. 512M, 2G)")]
    Size(String),
    #[error("--cpus must be between 1 and {max}, got {got}")]
    Cpus { got: u32, max: u32 },
    #[error("--memory {got} MiB is more than this host has ({host} MiB)")]
    MemoryTooLarge { got: u64, host: u64 },
    #[error("invalid --pin '{0}': use VCPU=CPU[,CPU...] (e.g. 0=2,3)")]
    Pin(String),
    #[error("--pin names vCPU {vcpu} but the VM has {cpus}")]
    PinVcpu { vcpu: u32, cpus: u32 },
}

/// Where the serial console goes (parsed by the legacy devices crate).
pub use devices::legacy::SerialConfig;

/// What happens when the guest asks for a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReboot {
    /// End the VMM (status 0), like `qemu -no-reboot`.
    #[default]
    Exit,
    /// Start the guest again from its kernel.
    Restart,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    /// None boots the built-in demo guest.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub cpu_model: CpuModel,
    pub serial: SerialConfig,
    pub hugepages: bool,
    pub api_socket: Option<PathBuf>,
    pub on_reboot: OnReboot,
    /// vCPU -> host CPUs.
    pub pins: Vec<(u32, Vec<usize>)>,
    /// Enable the PCI host bridge (needed by virtio-pci).
    pub pci: bool,
    /// virtio devices and their transport.
    pub virtio: crate::virtio::VirtioConfig,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            cpus: 1,
            memory_bytes: 128 << 20,
            cpu_model: CpuModel::default(),
            serial: SerialConfig::Stdio,
            hugepages: false,
            api_socket: None,
            on_reboot: OnReboot::Exit,
            pins: Vec::new(),
            pci: true,
            virtio: Default::default(),
        }
    }
}

/// Parse `512M`, `2G`, `1048576`, `64MiB` into bytes (binary units).
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let err = || ConfigError::Size(s.to_string());
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(err()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

/// Parse `VCPU=CPU[,CPU...]` (ranges `2-5` allowed).
pub fn parse_pin(s: &str) -> Result<(u32, Vec<usize>), ConfigError> {
    let err = || ConfigError::Pin(s.to_string());
    let (v, cpus) = s.split_once('=').ok_or_else(err)?;
    let vcpu: u32 = v.trim().parse().map_err(|_| err())?;
    let mut out = Vec::new();
    for part in cpus.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| err())?;
                let b: usize = b.trim().parse().map_err(|_| err())?;
                if a > b {
                    return Err(err());
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().map_err(|_| err())?),
        }
    }
    Ok((vcpu, out))
}

/// Host physical memory in bytes, from /proc/meminfo.
pub fn host_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl VmConfig {
    /// Checks that need no KVM: counts and sizes.
    pub fn validate(&self, max_vcpus: u32) -> Result<(), ConfigError> {
        if self.cpus == 0 || self.cpus > max_vcpus {
            return Err(ConfigError::Cpus { got: self.cpus, max: max_vcpus });
        }
        if let Some(host) = host_memory_bytes()
            && self.memory_bytes > host
        {
            return Err(ConfigError::MemoryTooLarge { got: self.memory_bytes >> 20, host: host >> 20 });
        }
        for (v, _) in &self.pins {
            if *v >= self.cpus {
                return Err(ConfigError::PinVcpu { vcpu: *v, cpus: self.cpus });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn pins() {
        assert_eq!(parse_pin("0=2,3"), Ok((0, vec![2, 3])));
        assert_eq!(parse_pin("1=0-2"), Ok((1, vec![0, 1, 2])));
        assert!(parse_pin("x=1").is_err());
        assert!(parse_pin("1=3-2").is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let c = VmConfig { cpus: 0, ..Default::default() };
        assert_eq!(c.validate(8), Err(ConfigError::Cpus { got: 0, max: 8 }));
        let c = VmConfig { memory_bytes: u64::MAX / 2, ..Default::default() };
        assert!(matches!(c.validate(8), Err(ConfigError::MemoryTooLarge { .. })));
        let c = VmConfig { cpus: 2, pins: vec![(2, vec![0])], ..Default::default() };
        assert_eq!(c.validate(8), Err(ConfigError::PinVcpu { vcpu: 2, cpus: 2 }));
    }
}
