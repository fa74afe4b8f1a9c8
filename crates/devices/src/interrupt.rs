//! How a device raises interrupts without knowing the hypervisor. The VMM
//! implements these with KVM irqfds (legacy GSI lines) and MSI routes.

use std::io;
use std::sync::Arc;

/// An edge- or level-triggered legacy line (IOAPIC GSI).
pub trait InterruptLine: Send + Sync {
    /// Raise the line once (edge), or assert it (level; pair with `deassert`).
    fn trigger(&self) -> io::Result<()>;
    /// Lower a level-triggered line; edge lines ignore it.
    fn deassert(&self) -> io::Result<()> {
        Ok(())
    }
    /// The GSI this line is wired to, for tables (MP/ACPI, command lines).
    fn gsi(&self) -> u32;
}

/// A group of MSI/MSI-X vectors belonging to one device.
pub trait MsiInterrupts: Send + Sync {
    /// Program vector `index` with the message the guest wrote.
    fn update(&self, index: u16, address: u64, data: u32, masked: bool) -> io::Result<()>;
    /// Send vector `index`.
    fn trigger(&self, index: u16) -> io::Result<()>;
}

/// An interrupt line that only counts; used by unit tests and by devices whose
/// interrupt is not wired (counts are still useful for statistics).
#[derive(Default)]
pub struct CountingLine {
    pub count: std::sync::atomic::AtomicU64,
    pub gsi: u32,
}

impl InterruptLine for CountingLine {
    fn trigger(&self) -> io::Result<()> {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn gsi(&self) -> u32 {
        self.gsi
    }
}

pub type SharedLine = Arc<dyn InterruptLine>;

/// Hands out interrupt sources to devices at build time. The VMM implements
/// it with KVM irqfds and GSI routing; tests implement it with counters.
pub trait InterruptManager: Send + Sync {
    /// An edge-triggered line on IOAPIC pin `gsi` (delivered through an irqfd
    /// so device threads never go through a vCPU thread).
    fn legacy_line(&self, gsi: u32) -> io::Result<SharedLine>;
    /// A level-triggered line on `gsi` (PCI INTx): `trigger` asserts it and
    /// it stays asserted, surviving guest EOIs, until `deassert`. Defaults to
    /// the edge line for managers that cannot do better.
    fn level_line(&self, gsi: u32) -> io::Result<SharedLine> {
        self.legacy_line(gsi)
    }
    /// A group of `count` MSI vectors (for MSI-X capable PCI devices).
    fn msi_group(&self, count: u16) -> io::Result<Arc<dyn MsiInterrupts>>;
}

/// Registers eventfds that KVM signals when the guest writes a doorbell
/// address (ioeventfd), so queue notifications skip the vCPU exit path.
pub trait IoEventRegistry: Send + Sync {
    /// Signal `fd` when the guest writes `datamatch` (or anything, when None)
    /// to MMIO address `addr`.
    fn register_mmio(&self, addr: u64, datamatch: Option<u32>, fd: &vmm_sys_util::eventfd::EventFd) -> io::Result<()>;
    fn unregister_mmio(&self, addr: u64, datamatch: Option<u32>, fd: &vmm_sys_util::eventfd::EventFd)
    -> io::Result<()>;
}
