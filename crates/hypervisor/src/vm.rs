//! A KVM VM: memory slots, in-kernel irqchip and PIT, irqfds, ioeventfds and
//! the GSI routing table (legacy pins plus MSI routes).

use std::collections::BTreeMap;
use std::sync::Mutex;

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY, KvmIrqRouting, kvm_irq_routing_entry, kvm_msi, kvm_pit_config,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{IoEventAddress as KvmIoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::vcpu::Vcpu;

/// Where the TSS pages go (three pages just below the BIOS area at 4 GiB,
/// inside the MMIO hole so they never collide with RAM).
const TSS_ADDRESS: usize = 0xfffb_d000;
/// Number of IOAPIC pins; GSIs above are free for MSI routes.
const IOAPIC_PINS: u32 = 24;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot set the TSS address: {0}")]
    TssAddress(kvm_ioctls::Error),
    #[error("cannot create the in-kernel irqchip: {0}")]
    Irqchip(kvm_ioctls::Error),
    #[error("cannot create the in-kernel PIT: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("cannot map guest memory slot {slot} at {guest_addr:#x} ({size} bytes): {source}")]
    MemorySlot { slot: u32, guest_addr: u64, size: u64, source: kvm_ioctls::Error },
    #[error("cannot wire irqfd for GSI {gsi}: {source}")]
    Irqfd { gsi: u32, source: kvm_ioctls::Error },
    #[error("cannot register ioeventfd at {addr:#x}: {source}")]
    Ioeventfd { addr: u64, source: kvm_ioctls::Error },
    #[error("cannot set GSI routing: {0}")]
    Routing(String),
    #[error("no free GSI left for MSI routes")]
    NoFreeGsi,
    #[error("cannot create vCPU {id}: {source}")]
    CreateVcpu { id: u32, source: kvm_ioctls::Error },
    #[error("cannot read the dirty log of slot {slot}: {source}")]
    DirtyLog { slot: u32, source: kvm_ioctls::Error },
    #[error("cannot inject MSI: {0}")]
    SignalMsi(kvm_ioctls::Error),
    #[error("cannot read or set the VM clock: {0}")]
    Clock(kvm_ioctls::Error),
}

/// A doorbell address for ioeventfds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEventAddress {
    Pio(u64),
    Mmio(u64),
}

pub struct Vm {
    fd: VmFd,
    /// GSI -> route. KVM_SET_GSI_ROUTING replaces the whole table, so the
    /// VMM keeps the full table and re-submits it on every change.
    /// A GSI below 16 has two entries (PIC and IOAPIC), like KVM's default.
    routes: Mutex<BTreeMap<u32, Vec<kvm_irq_routing_entry>>>,
}

impl Vm {
    pub(crate) fn new(fd: VmFd) -> Self {
        Self { fd, routes: Mutex::new(BTreeMap::new()) }
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// TSS, in-kernel PIC+IOAPIC+LAPICs and PIT, and the default routes for
    /// the legacy pins.
    pub fn setup_irqchip(&self) -> Result<(), VmError> {
        self.fd.set_tss_address(TSS_ADDRESS).map_err(VmError::TssAddress)?;
        self.fd.create_irq_chip().map_err(VmError::Irqchip)?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        self.fd.create_pit2(pit).map_err(VmError::Pit)?;
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for gsi in 0..IOAPIC_PINS {
            let mut entries = vec![irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi)];
            // The cascade pin 2 of the master PIC carries no device.
            match gsi {
                0..8 if gsi != 2 => entries.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_MASTER, gsi)),
                8..16 => entries.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8)),
                _ => {}
            }
            routes.insert(gsi, entries);
        }
        Ok(())
    }

    /// Register a slot of guest memory backed by host memory at `host_addr`.
    pub fn set_memory_region(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
        log_dirty: bool,
    ) -> Result<(), VmError> {
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
            flags: if log_dirty { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
        };
        // SAFETY: the caller hands us a host mapping of `size` bytes that
        // lives as long as the VM (guest memory is kept alive by the VMM for
        // the VM's whole life), which is what KVM requires.
        unsafe { self.fd.set_user_memory_region(region) }.map_err(|source| VmError::MemorySlot {
            slot,
            guest_addr,
            size,
            source,
        })
    }

    pub fn dirty_log(&self, slot: u32, size: usize) -> Result<Vec<u64>, VmError> {
        self.fd.get_dirty_log(slot, size).map_err(|source| VmError::DirtyLog { slot, source })
    }

    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd.register_irqfd(fd, gsi).map_err(|source| VmError::Irqfd { gsi, source })
    }

    /// A level-triggered irqfd: KVM keeps `gsi` asserted from a write to `fd`
    /// until the guest's EOI, then lowers it and signals `resample`.
    pub fn register_irqfd_with_resample(&self, fd: &EventFd, resample: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd.register_irqfd_with_resample(fd, resample, gsi).map_err(|source| VmError::Irqfd { gsi, source })
    }

    pub fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd.unregister_irqfd(fd, gsi).map_err(|source| VmError::Irqfd { gsi, source })
    }

    pub fn register_ioevent(&self, fd: &EventFd, addr: IoEventAddress, datamatch: Option<u32>) -> Result<(), VmError> {
        let (a, raw) = kvm_addr(addr);
        let r = match datamatch {
            Some(d) => self.fd.register_ioevent(fd, &a, d),
            None => self.fd.register_ioevent(fd, &a, NoDatamatch),
        };
        r.map_err(|source| VmError::Ioeventfd { addr: raw, source })
    }

    pub fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u32>,
    ) -> Result<(), VmError> {
        let (a, raw) = kvm_addr(addr);
        let r = match datamatch {
            Some(d) => self.fd.unregister_ioevent(fd, &a, d),
            None => self.fd.unregister_ioevent(fd, &a, NoDatamatch),
        };
        r.map_err(|source| VmError::Ioeventfd { addr: raw, source })
    }

    /// Allocate a GSI for an MSI route, program it and return it.
    pub fn add_msi_route(&self, address: u64, data: u32) -> Result<u32, VmError> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let gsi = (IOAPIC_PINS..4096).find(|g| !routes.contains_key(g)).ok_or(VmError::NoFreeGsi)?;
        routes.insert(gsi, vec![msi_route(gsi, address, data)]);
        self.commit_routes(&routes)?;
        Ok(gsi)
    }

    /// Reprogram an MSI route (the guest rewrote the MSI-X table entry).
    pub fn update_msi_route(&self, gsi: u32, address: u64, data: u32) -> Result<(), VmError> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.insert(gsi, vec![msi_route(gsi, address, data)]);
        self.commit_routes(&routes)
    }

    pub fn remove_route(&self, gsi: u32) -> Result<(), VmError> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.remove(&gsi);
        self.commit_routes(&routes)
    }

    fn commit_routes(&self, routes: &BTreeMap<u32, Vec<kvm_irq_routing_entry>>) -> Result<(), VmError> {
        let mut table = KvmIrqRouting::new(0).map_err(|e| VmError::Routing(format!("{e:?}")))?;
        for r in routes.values().flatten() {
            table.push(*r).map_err(|e| VmError::Routing(format!("{e:?}")))?;
        }
        self.fd.set_gsi_routing(&table).map_err(|e| VmError::Routing(e.to_string()))
    }

    /// Inject one MSI directly (for devices without a route).
    pub fn signal_msi(&self, address: u64, data: u32) -> Result<(), VmError> {
        let msi =
            kvm_msi { address_lo: address as u32, address_hi: (address >> 32) as u32, data, ..Default::default() };
        self.fd.signal_msi(msi).map(|_| ()).map_err(VmError::SignalMsi)
    }

    /// Raise or lower a legacy interrupt line.
    pub fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), VmError> {
        self.fd.set_irq_line(gsi, level).map_err(|source| VmError::Irqfd { gsi, source })
    }

    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu, VmError> {
        let fd = self.fd.create_vcpu(u64::from(id)).map_err(|source| VmError::CreateVcpu { id, source })?;
        Ok(Vcpu::new(id, fd))
    }

    pub fn clock(&self) -> Result<kvm_bindings::kvm_clock_data, VmError> {
        self.fd.get_clock().map_err(VmError::Clock)
    }

    pub fn set_clock(&self, data: &kvm_bindings::kvm_clock_data) -> Result<(), VmError> {
        self.fd.set_clock(data).map_err(VmError::Clock)
    }
}

fn kvm_addr(addr: IoEventAddress) -> (KvmIoEventAddress, u64) {
    match addr {
        IoEventAddress::Pio(a) => (KvmIoEventAddress::Pio(a), a),
        IoEventAddress::Mmio(a) => (KvmIoEventAddress::Mmio(a), a),
    }
}

fn irqchip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_IRQCHIP, ..Default::default() };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi_route(gsi: u32, address: u64, data: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_MSI, ..Default::default() };
    e.u.msi.address_lo = address as u32;
    e.u.msi.address_hi = (address >> 32) as u32;
    e.u.msi.data = data;
    e
}
