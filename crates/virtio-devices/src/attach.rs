//! The single entry point the VMM uses to put a virtio device in a VM:
//! [`attach_mmio`] or [`attach_pci`] (after [`create_pci_root`]). Each
//! returns an [`AttachedDevice`], the VMM's handle for pause/resume,
//! counters and snapshots.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arch::layout::{VIRTIO_MMIO_GSIS, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use devices::DeviceContext;
use migration::{MigrationError, Pausable, Snapshot, Snapshottable};

use crate::device::VirtioDevice;
use crate::transport::SharedDevice;
use crate::transport::mmio::{MmioState, MmioTransport};
use crate::transport::pci::{PciTransportState, VirtioPciDevice};
use pci::SharedPciBus;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("virtio-mmio slot {slot} is out of range: at most {max} mmio devices (use --transport pci for more)")]
    NoSlot { slot: usize, max: usize },
    #[error("cannot place {id} on the bus: {source}")]
    Bus { id: String, source: devices::BusError },
    #[error("cannot set up interrupts for {id}: {source}")]
    Interrupt { id: String, source: std::io::Error },
    #[error("cannot register the doorbell ioeventfd of {id}: {source}")]
    IoEvent { id: String, source: std::io::Error },
    #[error("cannot create the transport of {id}: {source}")]
    Transport { id: String, source: std::io::Error },
    #[error("cannot put {id} on the PCI bus: {reason}")]
    Pci { id: String, reason: String },
}

/// GSIs the virtio-pci functions' INTA# pins are wired to (shared, edge, the
/// ISA range so a guest without ACPI _PRT routing takes them from the
/// Interrupt Line register as ISA interrupts). Used only by guests that do
/// not enable MSI-X. They are the first virtio-mmio GSIs: do not mix the two
/// transports in one VM.
pub const PCI_INTX_GSIS: &[u32] = &[5, 6, 7, 10, 11];

/// Wrap a device so the transport and the VMM can share it.
pub fn shared<D: VirtioDevice + 'static>(device: D) -> SharedDevice {
    Arc::new(Mutex::new(device))
}

enum Placement {
    Mmio(Arc<Mutex<MmioTransport>>),
    Pci { dev: Arc<Mutex<VirtioPciDevice>>, bus: SharedPciBus, slot: u8 },
}

/// The VMM's handle on an attached device.
pub struct AttachedDevice {
    id: String,
    device: SharedDevice,
    placement: Placement,
    /// Where the guest finds it: "mmio@0xd0000000 irq 5" or "pci 0000:00:01.0".
    pub location: String,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum TransportState {
    Mmio(MmioState),
    Pci(PciTransportState),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct AttachedState {
    transport: TransportState,
    device: Option<Snapshot>,
}

impl AttachedDevice {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn device_type(&self) -> u32 {
        self.lock().device_type()
    }

    /// Device statistics (requests, bytes, errors...).
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.lock().counters()
    }

    /// The device model itself, for device-specific control (e.g. a balloon target).
    pub fn device(&self) -> &SharedDevice {
        &self.device
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Pausable for AttachedDevice {
    fn pause(&mut self) -> Result<(), MigrationError> {
        self.lock().pause()
    }
    fn resume(&mut self) -> Result<(), MigrationError> {
        self.lock().resume()
    }
}

impl Snapshottable for AttachedDevice {
    fn id(&self) -> String {
        self.id.clone()
    }

    /// Take with the device paused: the device snapshot plus the transport
    /// registers and queue configuration.
    fn snapshot(&mut self) -> Result<Option<Snapshot>, MigrationError> {
        let device = self.lock().snapshot()?;
        let transport = match &self.placement {
            Placement::Mmio(t) => TransportState::Mmio(t.lock().unwrap_or_else(|e| e.into_inner()).state()),
            Placement::Pci { dev, .. } => TransportState::Pci(dev.lock().unwrap_or_else(|e| e.into_inner()).state()),
        };
        Snapshot::new(&self.id, &AttachedState { transport, device }).map(Some)
    }

    /// Restore into a freshly attached (same command line) device, with
    /// guest memory already restored.
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), MigrationError> {
        let st: AttachedState = snapshot.to_state()?;
        if let Some(d) = &st.device {
            self.lock().restore(d)?;
        }
        let err = |e: String| MigrationError::Restore(self.id.clone(), e);
        match (&self.placement, &st.transport) {
            (Placement::Mmio(t), TransportState::Mmio(s)) => t.lock().unwrap_or_else(|e| e.into_inner()).restore(s),
            (Placement::Pci { dev, bus, slot }, TransportState::Pci(s)) => {
                dev.lock().unwrap_or_else(|e| e.into_inner()).restore(s).map_err(err)?;
                // Through the bus, so BAR decoding and doorbells follow.
                let mut b = bus.lock().unwrap_or_else(|e| e.into_inner());
                b.config_write(*slot, 0, 0x10, &(s.bar0 as u32).to_le_bytes());
                b.config_write(*slot, 0, 0x14, &((s.bar0 >> 32) as u32).to_le_bytes());
                b.config_write(*slot, 0, 0x04, &(s.command as u16).to_le_bytes());
                Ok(())
            }
            _ => Err("snapshot was taken with the other transport".to_string()),
        }
        .map_err(err)
    }
}

/// Put `device` on virtio-mmio slot `slot`: MMIO window
/// `VIRTIO_MMIO_START + slot * VIRTIO_MMIO_SIZE`, GSI `VIRTIO_MMIO_GSIS[slot]`.
/// Registers the doorbell ioeventfds and appends the
/// `virtio_mmio.device=4K@<base>:<gsi>` fragment to `ctx.cmdline_extra`.
pub fn attach_mmio(ctx: &mut DeviceContext, device: SharedDevice, slot: usize) -> Result<AttachedDevice, AttachError> {
    let id = device.lock().unwrap_or_else(|e| e.into_inner()).id();
    let Some(&gsi) = VIRTIO_MMIO_GSIS.get(slot) else {
        return Err(AttachError::NoSlot { slot, max: VIRTIO_MMIO_GSIS.len() });
    };
    let base = VIRTIO_MMIO_START + slot as u64 * VIRTIO_MMIO_SIZE;
    let line = ctx.interrupts.legacy_line(gsi).map_err(|source| AttachError::Interrupt { id: id.clone(), source })?;
    let transport = MmioTransport::new(device.clone(), ctx.mem.clone(), line)
        .map_err(|source| AttachError::Transport { id: id.clone(), source })?;
    for (addr, datamatch, fd) in transport.ioeventfds(base) {
        ctx.ioevents
            .register_mmio(addr, datamatch, fd)
            .map_err(|source| AttachError::IoEvent { id: id.clone(), source })?;
    }
    let transport = Arc::new(Mutex::new(transport));
    ctx.mmio_bus
        .insert(transport.clone(), base, VIRTIO_MMIO_SIZE)
        .map_err(|source| AttachError::Bus { id: id.clone(), source })?;
    ctx.cmdline_extra.push(format!("virtio_mmio.device=4K@{base:#x}:{gsi}"));
    Ok(AttachedDevice {
        id,
        device,
        placement: Placement::Mmio(transport),
        location: format!("mmio@{base:#x} irq {gsi}"),
    })
}

/// Create PCI bus 0 with its host bridge and place its config mechanisms
/// (port 0xcf8, ECAM at `PCI_ECAM_START`) and BAR window
/// (`PCI_MMIO32_START`, `PCI_MMIO32_SIZE`) on `ctx`'s buses. Call once,
/// before [`attach_pci`].
pub fn create_pci_root(ctx: &mut DeviceContext) -> Result<SharedPciBus, AttachError> {
    pci::create_root(ctx.mmio_bus, ctx.pio_bus)
        .map_err(|source| AttachError::Bus { id: "pci-root".to_string(), source })
}

/// Put `device` on PCI bus 0 as a modern virtio-pci function with MSI-X
/// (one vector per queue plus one for config changes, from
/// `ctx.interrupts.msi_group`). Doorbell ioeventfds are registered when the
/// guest enables memory decoding on the BAR, and follow BAR moves.
pub fn attach_pci(
    ctx: &mut DeviceContext,
    root: &SharedPciBus,
    device: SharedDevice,
) -> Result<AttachedDevice, AttachError> {
    let (id, queues) = {
        let d = device.lock().unwrap_or_else(|e| e.into_inner());
        (d.id(), d.queue_max_sizes().len())
    };
    let msi = ctx
        .interrupts
        .msi_group(queues as u16 + 1)
        .map_err(|source| AttachError::Interrupt { id: id.clone(), source })?;
    let dev = VirtioPciDevice::new(device.clone(), ctx.mem.clone(), msi, ctx.ioevents.clone())
        .map_err(|reason| AttachError::Pci { id: id.clone(), reason })?;
    let dev = Arc::new(Mutex::new(dev));
    let slot = root
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .add_device(dev.clone())
        .map_err(|e| AttachError::Pci { id: id.clone(), reason: e.to_string() })?;
    // INTx for guests without MSI-X: device n's INTA# on PCI_INTX_GSIS[n % len].
    let gsi = PCI_INTX_GSIS[slot as usize % PCI_INTX_GSIS.len()];
    // PCI INTx is level-triggered: Linux programs the pin level/active-low.
    let line = ctx.interrupts.level_line(gsi).map_err(|source| AttachError::Interrupt { id: id.clone(), source })?;
    dev.lock().unwrap_or_else(|e| e.into_inner()).set_intx(line);
    Ok(AttachedDevice {
        id,
        device,
        placement: Placement::Pci { dev, bus: root.clone(), slot },
        location: format!("pci 0000:00:{slot:02x}.0"),
    })
}

#[cfg(test)]
mod tests;
