//! Extend the identity map above 4 GiB, at CPL3 (the page tables are
//! user-writable): 1 GiB pages when the CPU has them, else 2 MiB pages in
//! page directories reserved in the image. Adding entries that were not
//! present needs no TLB flush.

use crate::cpu::boot_cpuid;

const GIB: u64 = 1 << 30;
const HIGH_PDS: u64 = 64;
/// PML4 slot 0 covers 512 GiB; that is as far as this goes.
const PML4_SLOT_LIMIT: u64 = 512 * GIB;
const PRESENT_RW_USER: u64 = 0x7;
const PAGE_SIZE_BIT: u64 = 0x80;

unsafe extern "C" {
    static mut pdpt: [u64; 512];
    static mut high_pds: [[u64; 512]; HIGH_PDS as usize];
}

/// Map physical memory up to `top`; returns the new mapped limit.
pub fn map_up_to(top: u64) -> u64 {
    let gib_pages = boot_cpuid(0x8000_0001).is_some_and(|r| r[3] & (1 << 26) != 0);
    let limit = if gib_pages { top.min(PML4_SLOT_LIMIT) } else { top.min(4 * GIB + HIGH_PDS * GIB) };
    let gibs = limit.div_ceil(GIB);
    let table = (&raw mut pdpt).cast::<u64>();
    let pds = (&raw mut high_pds).cast::<u64>();
    for g in 4..gibs {
        let entry = if gib_pages {
            (g * GIB) | PAGE_SIZE_BIT | PRESENT_RW_USER
        } else {
            let pd = (g - 4) as usize;
            for i in 0..512u64 {
                // SAFETY: pd < HIGH_PDS (limit above), i < 512: inside high_pds,
                // which only this function writes.
                unsafe {
                    pds.add(pd * 512 + i as usize)
                        .write_volatile((g * GIB + (i << 21)) | PAGE_SIZE_BIT | PRESENT_RW_USER)
                };
            }
            // The pages are identity mapped: their address is physical.
            // SAFETY: as above; in bounds.
            (unsafe { pds.add(pd * 512) } as u64) | PRESENT_RW_USER
        };
        // SAFETY: g < 512; the entry was not present (the static map covers
        // 0..4 GiB only), so no TLB entry can be stale.
        unsafe { table.add(g as usize).write_volatile(entry) };
    }
    gibs.max(4) * GIB
}
