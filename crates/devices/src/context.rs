//! What the VMM hands to device builders: the buses to place devices on, the
//! guest memory, and the interrupt and doorbell plumbing.

use std::sync::Arc;

use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::bus::Bus;
use crate::interrupt::{InterruptManager, IoEventRegistry};

/// Guest memory as every device sees it: atomically swappable so memory
/// hot-plug or restore can replace regions under running devices.
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;

pub struct DeviceContext<'a> {
    pub mem: GuestMemory,
    pub mmio_bus: &'a mut Bus,
    pub pio_bus: &'a mut Bus,
    pub interrupts: Arc<dyn InterruptManager>,
    pub ioevents: Arc<dyn IoEventRegistry>,
    /// Fragments the device builders need added to the guest kernel command
    /// line (e.g. `virtio_mmio.device=4K@0xd0000000:5`).
    pub cmdline_extra: &'a mut Vec<String>,
}
