//! KVM-backed interrupt plumbing for devices: legacy lines are irqfds on
//! IOAPIC pins, MSI vectors are irqfds on GSIs routed as MSI, doorbells are
//! ioeventfds. Device threads signal eventfds; KVM injects without a vCPU exit.

use std::io;
use std::sync::{Arc, Mutex};

use devices::interrupt::{InterruptLine, InterruptManager, IoEventRegistry, MsiInterrupts, SharedLine};
use hypervisor::{IoEventAddress, Vm};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

pub struct KvmInterrupts {
    vm: Arc<Vm>,
}

impl KvmInterrupts {
    pub fn new(vm: Arc<Vm>) -> Arc<Self> {
        Arc::new(Self { vm })
    }
}

/// An IOAPIC pin driven through an irqfd.
struct IrqfdLine {
    fd: EventFd,
    gsi: u32,
}

impl InterruptLine for IrqfdLine {
    fn trigger(&self) -> io::Result<()> {
        self.fd.write(1)
    }
    fn gsi(&self) -> u32 {
        self.gsi
    }
}

/// A level-triggered IOAPIC pin: an irqfd with a resample fd. KVM lowers
/// the pin at each EOI and tells us through the resample fd; while the device
/// still asserts the line (e.g. the virtio ISR is unread), we raise it again.
struct LevelLine {
    fd: EventFd,
    gsi: u32,
    asserted: Arc<std::sync::atomic::AtomicBool>,
}

impl InterruptLine for LevelLine {
    fn trigger(&self) -> io::Result<()> {
        self.asserted.store(true, std::sync::atomic::Ordering::SeqCst);
        self.fd.write(1)
    }
    fn deassert(&self) -> io::Result<()> {
        self.asserted.store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn gsi(&self) -> u32 {
        self.gsi
    }
}

/// Re-raise a level line after each EOI while it is still asserted.
fn resample_loop(resample: EventFd, fd: EventFd, asserted: Arc<std::sync::atomic::AtomicBool>) {
    // Blocking reads: each returns after KVM signalled an EOI on the pin.
    while resample.read().is_ok() {
        if asserted.load(std::sync::atomic::Ordering::SeqCst) && fd.write(1).is_err() {
            return;
        }
    }
}

struct MsiVector {
    fd: EventFd,
    gsi: Option<u32>,
    masked: bool,
}

struct KvmMsiGroup {
    vm: Arc<Vm>,
    vectors: Vec<Mutex<MsiVector>>,
}

impl MsiInterrupts for KvmMsiGroup {
    fn update(&self, index: u16, address: u64, data: u32, masked: bool) -> io::Result<()> {
        let v = self.vectors.get(usize::from(index)).ok_or_else(|| io_err(format!("no MSI vector {index}")))?;
        let mut v = v.lock().unwrap_or_else(|e| e.into_inner());
        match v.gsi {
            Some(gsi) => self.vm.update_msi_route(gsi, address, data).map_err(io_err)?,
            None => {
                let gsi = self.vm.add_msi_route(address, data).map_err(io_err)?;
                self.vm.register_irqfd(&v.fd, gsi).map_err(io_err)?;
                v.gsi = Some(gsi);
            }
        }
        v.masked = masked;
        Ok(())
    }

    fn trigger(&self, index: u16) -> io::Result<()> {
        let v = self.vectors.get(usize::from(index)).ok_or_else(|| io_err(format!("no MSI vector {index}")))?;
        let v = v.lock().unwrap_or_else(|e| e.into_inner());
        // An unprogrammed or masked vector must not fire; the transport keeps
        // the pending bit and re-triggers on unmask.
        if v.gsi.is_none() || v.masked {
            return Ok(());
        }
        v.fd.write(1)
    }
}

impl InterruptManager for KvmInterrupts {
    fn legacy_line(&self, gsi: u32) -> io::Result<SharedLine> {
        let fd = EventFd::new(EFD_NONBLOCK)?;
        self.vm.register_irqfd(&fd, gsi).map_err(io_err)?;
        Ok(Arc::new(IrqfdLine { fd, gsi }))
    }

    fn level_line(&self, gsi: u32) -> io::Result<SharedLine> {
        let fd = EventFd::new(EFD_NONBLOCK)?;
        let resample = EventFd::new(0)?;
        self.vm.register_irqfd_with_resample(&fd, &resample, gsi).map_err(io_err)?;
        let asserted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (fd2, a2) = (fd.try_clone()?, asserted.clone());
        std::thread::Builder::new().name(format!("intx-gsi{gsi}")).spawn(move || resample_loop(resample, fd2, a2))?;
        Ok(Arc::new(LevelLine { fd, gsi, asserted }))
    }

    fn msi_group(&self, count: u16) -> io::Result<Arc<dyn MsiInterrupts>> {
        let mut vectors = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            vectors.push(Mutex::new(MsiVector { fd: EventFd::new(EFD_NONBLOCK)?, gsi: None, masked: true }));
        }
        Ok(Arc::new(KvmMsiGroup { vm: self.vm.clone(), vectors }))
    }
}

impl IoEventRegistry for KvmInterrupts {
    fn register_mmio(&self, addr: u64, datamatch: Option<u32>, fd: &EventFd) -> io::Result<()> {
        self.vm.register_ioevent(fd, IoEventAddress::Mmio(addr), datamatch).map_err(io_err)
    }
    fn unregister_mmio(&self, addr: u64, datamatch: Option<u32>, fd: &EventFd) -> io::Result<()> {
        self.vm.unregister_ioevent(fd, IoEventAddress::Mmio(addr), datamatch).map_err(io_err)
    }
}
