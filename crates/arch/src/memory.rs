//! Guest RAM regions and the e820 map for a given memory size.

use crate::layout::{EBDA_START, HIMEM_START, MMIO32_HOLE_END, MMIO32_HOLE_START, RAM_64BIT_START};

/// e820 entry types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// Smallest guest the layout supports: enough for boot structures and a kernel.
pub const MIN_MEMORY: u64 = 16 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryLayoutError {
    #[error("guest memory {0} bytes is too small: give at least 16M")]
    TooSmall(u64),
    #[error("guest memory {0} bytes is not a multiple of 4 KiB")]
    Unaligned(u64),
}

/// RAM regions (guest address, size): below the 32-bit MMIO hole, and the
/// remainder from 4 GiB up.
pub fn ram_regions(size: u64) -> Result<Vec<(u64, u64)>, MemoryLayoutError> {
    if size < MIN_MEMORY {
        return Err(MemoryLayoutError::TooSmall(size));
    }
    if !size.is_multiple_of(4096) {
        return Err(MemoryLayoutError::Unaligned(size));
    }
    if size <= MMIO32_HOLE_START {
        Ok(vec![(0, size)])
    } else {
        Ok(vec![(0, MMIO32_HOLE_START), (RAM_64BIT_START, size - MMIO32_HOLE_START)])
    }
}

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map the guest sees: conventional memory up to the EBDA, the
/// BIOS area reserved, RAM from 1 MiB, the MMIO hole reserved (so the guest
/// never puts anything there), and RAM above 4 GiB.
pub fn e820_map(size: u64) -> Result<Vec<E820Entry>, MemoryLayoutError> {
    let regions = ram_regions(size)?;
    let mut map = vec![
        E820Entry { addr: 0, size: EBDA_START, kind: E820_RAM },
        E820Entry { addr: EBDA_START, size: HIMEM_START - EBDA_START, kind: E820_RESERVED },
    ];
    let low_end = regions[0].1;
    map.push(E820Entry { addr: HIMEM_START, size: low_end - HIMEM_START, kind: E820_RAM });
    if let Some(&(start, len)) = regions.get(1) {
        map.push(E820Entry { addr: start, size: len, kind: E820_RAM });
    }
    // The hole itself holds PCI windows, ECAM, the IOAPIC and LAPIC.
    map.push(E820Entry {
        addr: crate::layout::PCI_ECAM_START,
        size: crate::layout::PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    const { assert!(MMIO32_HOLE_END == RAM_64BIT_START) };
    Ok(map)
}

/// First guest address after RAM, where the 64-bit PCI window can start.
pub fn ram_end(size: u64) -> u64 {
    if size <= MMIO32_HOLE_START { size } else { RAM_64BIT_START + (size - MMIO32_HOLE_START) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(256 << 20).unwrap(), vec![(0, 256 << 20)]);
        let map = e820_map(256 << 20).unwrap();
        assert_eq!(map[2], E820Entry { addr: HIMEM_START, size: (256 << 20) - HIMEM_START, kind: E820_RAM });
    }

    #[test]
    fn large_guest_splits_around_the_hole() {
        let r = ram_regions(4 << 30).unwrap();
        assert_eq!(r, vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        assert_eq!(ram_end(4 << 30), 5 << 30);
        let map = e820_map(4 << 30).unwrap();
        assert!(map.iter().any(|e| e.addr == 4 << 30 && e.size == 1 << 30 && e.kind == E820_RAM));
        // Nothing marked RAM overlaps the hole.
        assert!(
            map.iter()
                .filter(|e| e.kind == E820_RAM)
                .all(|e| e.addr + e.size <= MMIO32_HOLE_START || e.addr >= 4 << 30)
        );
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(ram_regions(1 << 20), Err(MemoryLayoutError::TooSmall(1 << 20)));
        assert_eq!(ram_regions((64 << 20) + 1), Err(MemoryLayoutError::Unaligned((64 << 20) + 1)));
    }
}
