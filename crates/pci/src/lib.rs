//! PCI root complex for Tern: segment 0 / bus 0 with a host bridge,
//! configuration access through port 0xcf8 and ECAM, BAR allocation from
//! the 32-bit PCI window, capability lists and MSI-X.
//!
//! [`create_root`] puts the three bus devices in place; devices implement
//! [`PciDevice`] and are added with [`PciBus::add_device`].

pub mod config;
pub mod msix;
pub mod root;

use std::sync::{Arc, Mutex};

use arch::layout::{PCI_CONFIG_PORT, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO32_SIZE, PCI_MMIO32_START};
use devices::{Bus, BusError};

pub use config::{PciConfig, PciIdentity};
pub use msix::Msix;
pub use root::{PciBarWindow, PciBus, PciConfigEcam, PciConfigIo, PciDevice, PciError, SharedPciBus};

/// Create bus 0 and place its config mechanisms (port 0xcf8, ECAM at
/// `PCI_ECAM_START`) and its BAR window (`PCI_MMIO32_START`) on the buses.
pub fn create_root(mmio_bus: &mut Bus, pio_bus: &mut Bus) -> Result<SharedPciBus, BusError> {
    let bus: SharedPciBus = Arc::new(Mutex::new(PciBus::new(PCI_MMIO32_START, PCI_MMIO32_SIZE)));
    pio_bus.insert(Arc::new(Mutex::new(PciConfigIo::new(bus.clone()))), PCI_CONFIG_PORT as u64, 8)?;
    mmio_bus.insert(Arc::new(Mutex::new(PciConfigEcam::new(bus.clone()))), PCI_ECAM_START, PCI_ECAM_SIZE)?;
    mmio_bus.insert(
        Arc::new(Mutex::new(PciBarWindow::new(bus.clone(), PCI_MMIO32_START))),
        PCI_MMIO32_START,
        PCI_MMIO32_SIZE,
    )?;
    Ok(bus)
}
