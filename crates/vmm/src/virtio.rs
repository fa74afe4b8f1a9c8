//! Creating the configured virtio devices and attaching them over the chosen
//! transport. The device models and transports live in `virtio-devices`;
//! this is only the VM's bill of materials.

use devices::DeviceContext;
use virtio_devices::balloon::{Balloon, BalloonConfig, BalloonHandle};
use virtio_devices::block::{Block, DiskConfig};
use virtio_devices::console::Console;
use virtio_devices::net::{Net, NetConfig};
use virtio_devices::rng::Rng;
use virtio_devices::vsock::{Vsock, VsockConfig};
use virtio_devices::{AttachedDevice, attach_mmio, attach_pci, create_pci_root, shared};

/// How virtio devices reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// virtio-mmio, announced on the kernel command line.
    Mmio,
    /// Modern virtio-pci with MSI-X on the PCI host bridge.
    #[default]
    Pci,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mmio" => Ok(Transport::Mmio),
            "pci" => Ok(Transport::Pci),
            o => Err(format!("unknown transport '{o}': use mmio or pci")),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct VirtioConfig {
    pub transport: Transport,
    pub disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
    pub rng: bool,
    pub vsock: Option<VsockConfig>,
    pub balloon: Option<BalloonConfig>,
    /// virtio-console (hvc0) backend.
    pub console: Option<devices::legacy::SerialConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum VirtioWiringError {
    #[error("disk {index}: {source}")]
    Disk { index: usize, source: virtio_devices::block::BlockError },
    #[error("network interface {index}: {source}")]
    Net { index: usize, source: virtio_devices::net::NetError },
    #[error("rng: {0}")]
    Rng(virtio_devices::rng::RngError),
    #[error("vsock: {0}")]
    Vsock(virtio_devices::vsock::VsockError),
    #[error("virtio-console: {0}")]
    Console(virtio_devices::console::ConsoleError),
    #[error("balloon: {0}")]
    Balloon(virtio_devices::balloon::BalloonError),
    #[error(transparent)]
    Attach(#[from] virtio_devices::AttachError),
}

/// The attached devices and the handles the control socket needs.
#[derive(Default)]
pub struct VirtioSet {
    pub devices: Vec<AttachedDevice>,
    pub balloon: Option<BalloonHandle>,
}

/// Create every configured device and attach it. With `pci_root`, the PCI
/// host bridge is created even when no device uses it, so guests see a
/// normal PCI hierarchy.
pub fn attach_virtio(
    ctx: &mut DeviceContext,
    cfg: &VirtioConfig,
    pci_root: bool,
    memory_mib: u64,
) -> Result<VirtioSet, VirtioWiringError> {
    let root = if pci_root || cfg.transport == Transport::Pci { Some(create_pci_root(ctx)?) } else { None };
    let mut set = VirtioSet::default();
    let mut devs = Vec::new();
    for (i, d) in cfg.disks.iter().enumerate() {
        let b =
            Block::new(&format!("virtio-blk{i}"), d).map_err(|source| VirtioWiringError::Disk { index: i, source })?;
        devs.push(shared(b));
    }
    for (i, n) in cfg.nets.iter().enumerate() {
        let d = Net::new(&format!("virtio-net{i}"), n).map_err(|source| VirtioWiringError::Net { index: i, source })?;
        devs.push(shared(d));
    }
    if cfg.rng {
        devs.push(shared(
            Rng::new("virtio-rng0", std::path::Path::new("/dev/urandom")).map_err(VirtioWiringError::Rng)?,
        ));
    }
    if let Some(v) = &cfg.vsock {
        devs.push(shared(Vsock::new("virtio-vsock0", v).map_err(VirtioWiringError::Vsock)?));
    }
    if let Some(c) = &cfg.console {
        devs.push(shared(Console::new("virtio-console0", c).map_err(VirtioWiringError::Console)?));
    }
    if let Some(b) = &cfg.balloon {
        let dev = Balloon::new("virtio-balloon0", b, memory_mib).map_err(VirtioWiringError::Balloon)?;
        set.balloon = Some(dev.handle());
        devs.push(shared(dev));
    }
    for (slot, dev) in devs.into_iter().enumerate() {
        let attached = match (cfg.transport, &root) {
            (Transport::Pci, Some(root)) => attach_pci(ctx, root, dev)?,
            _ => attach_mmio(ctx, dev, slot)?,
        };
        tracing::info!("{} at {}", attached.id(), attached.location);
        set.devices.push(attached);
    }
    Ok(set)
}
