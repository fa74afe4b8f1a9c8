//! Fuzz the transports' register files: arbitrary sequences of mmio
//! register accesses and virtio-pci config/BAR accesses (feature
//! negotiation, queue setup with hostile sizes and addresses, DRIVER_OK,
//! doorbells, resets, MSI-X table writes) against a live virtio-rng. The
//! device must refuse bad setups (DEVICE_NEEDS_RESET) and never panic.
#![no_main]

use std::path::Path;
use std::sync::{Arc, Mutex};

use devices::interrupt::CountingLine;
use devices::{BusDevice, IoEventRegistry, MsiInterrupts};
use libfuzzer_sys::fuzz_target;
use pci::PciDevice;
use virtio_devices::rng::Rng;
use virtio_devices::transport::mmio::MmioTransport;
use virtio_devices::transport::pci::VirtioPciDevice;
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

struct Msi;
impl MsiInterrupts for Msi {
    fn update(&self, _: u16, _: u64, _: u32, _: bool) -> std::io::Result<()> {
        Ok(())
    }
    fn trigger(&self, _: u16) -> std::io::Result<()> {
        Ok(())
    }
}
struct Io;
impl IoEventRegistry for Io {
    fn register_mmio(&self, _: u64, _: Option<u32>, _: &EventFd) -> std::io::Result<()> {
        Ok(())
    }
    fn unregister_mmio(&self, _: u64, _: Option<u32>, _: &EventFd) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
    let rng = || Arc::new(Mutex::new(Rng::new("rng", Path::new("/dev/urandom")).unwrap()));
    let mut mmio = MmioTransport::new(rng(), mem.clone(), Arc::new(CountingLine::default())).unwrap();
    let mut pci = VirtioPciDevice::new(rng(), mem, Arc::new(Msi), Arc::new(Io)).unwrap();
    for op in data.chunks_exact(8) {
        let off = u16::from_le_bytes([op[1], op[2]]) as u64;
        let val = u32::from_le_bytes([op[3], op[4], op[5], op[6]]);
        let len = [1usize, 2, 4, 8][(op[7] & 3) as usize];
        let bytes = (val as u64 | (val as u64) << 32).to_le_bytes();
        let mut out = [0u8; 8];
        match op[0] % 6 {
            0 => mmio.write(off & 0x1ff, &bytes[..len]),
            1 => mmio.read(off & 0x1ff, &mut out[..len]),
            2 => pci.bar_write(0, off & 0x7fff, &bytes[..len]),
            3 => pci.bar_read(0, off & 0x7fff, &mut out[..len]),
            4 => pci.write_config((off & 0xfff) as usize, &bytes[..len.min(4)]),
            _ => {
                let _ = pci.config().read_reg((off & 0x3ff) as usize);
            }
        }
    }
});
