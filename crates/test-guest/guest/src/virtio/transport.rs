//! Find a virtio device of a given type on virtio-mmio (Tern's and QEMU
//! microvm's windows) or PCI bus 0 (ECAM), and hand back its transport.

use core::ptr::NonNull;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{BarInfo, Cam, Command, MemoryBarType, MmioCam, PciRoot};
use virtio_drivers::transport::{DeviceType, SomeTransport};

use super::hal::GuestHal;
use crate::acpi::Acpi;
use crate::cpu::read32;
use crate::scenario::demo::virtio_mmio_windows;

const VIRTIO_MAGIC: u32 = 0x7472_6976;
/// BARs the firmware left unassigned go here (Tern's 32-bit PCI window).
const BAR_WINDOW_START: u64 = 0xc000_0000;
const BAR_WINDOW_END: u64 = 0xd000_0000;

const VIRTIO_PCI_VENDOR: u16 = 0x1af4;

/// The virtio device id behind a PCI device id: modern 0x1040 + id, or a
/// transitional id. (virtio-drivers maps the balloon, id 5, to its type 13.)
fn pci_virtio_id(device_id: u16) -> Option<u32> {
    match device_id {
        0x1000 => Some(1),
        0x1001 => Some(2),
        0x1002 => Some(5),
        0x1003 => Some(3),
        0x1004 => Some(8),
        0x1005 => Some(4),
        0x1009 => Some(9),
        0x1040..=0x107f => Some((device_id - 0x1040) as u32),
        _ => None,
    }
}

/// Which transports to look at: `tern.virtio=mmio|pci` (default both, mmio first).
#[derive(Clone, Copy, PartialEq)]
pub enum Want {
    Any,
    Mmio,
    Pci,
}

pub fn find(
    kind: DeviceType,
    want: Want,
    acpi: Option<&Acpi>,
    ecam: u64,
) -> Option<(SomeTransport<'static>, &'static str)> {
    if want != Want::Pci {
        for (start, stride, slots) in virtio_mmio_windows(acpi) {
            for slot in 0..slots {
                let base = start + slot * stride;
                if read32(base) != VIRTIO_MAGIC || read32(base + 8) != kind as u32 {
                    continue;
                }
                let header = NonNull::new(base as *mut VirtIOHeader)?;
                // SAFETY: a virtio-mmio register window (magic checked), identity
                // mapped, used by nothing else in this guest.
                match unsafe { MmioTransport::new(header, stride as usize) } {
                    Ok(t) => return Some((SomeTransport::Mmio(t), "mmio")),
                    Err(e) => crate::tern!("virtio-mmio addr={:#x} error=\"{}\"", base, e),
                }
            }
        }
    }
    if want != Want::Mmio {
        // SAFETY: ECAM of bus 0, identity mapped; this guest is its only user.
        let cam = unsafe { MmioCam::new(ecam as *mut u8, Cam::Ecam) };
        let mut root = PciRoot::new(cam);
        let mut next_bar = BAR_WINDOW_START;
        let found = root.enumerate_bus(0).find(|(_, info)| {
            info.vendor_id == VIRTIO_PCI_VENDOR && pci_virtio_id(info.device_id) == Some(kind as u32)
        });
        if let Some((df, _)) = found {
            let mut bar = 0u8;
            while bar < 6 {
                let info = root.bar_info(df, bar).ok().flatten();
                if let Some(BarInfo::Memory { address_type, size, address, .. }) = info
                    && address == 0
                    && size != 0
                {
                    let at = next_bar.next_multiple_of(size.max(4096));
                    if at + size <= BAR_WINDOW_END {
                        match address_type {
                            MemoryBarType::Width64 => root.set_bar_64(df, bar, at),
                            _ => root.set_bar_32(df, bar, at as u32),
                        }
                        next_bar = at + size;
                    }
                }
                bar += if info.is_some_and(|i| i.takes_two_entries()) { 2 } else { 1 };
            }
            root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
            match PciTransport::new::<GuestHal, _>(&mut root, df) {
                Ok(t) => return Some((SomeTransport::Pci(t), "pci")),
                Err(e) => crate::tern!("virtio-pci dev={} error=\"{}\"", df, e),
            }
        }
    }
    None
}
