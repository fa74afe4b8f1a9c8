//! `memory`: write and verify a pattern over RAM above 2 MiB.
//! Parameters: `tern.mem_mib=N` or `tern.mem=<size>[K|M|G]` (default: all
//! RAM in the memory map from 2 MiB up), `tern.mem_start=<addr>[K|M|G]`
//! (default 2M) to test from a higher address, e.g. 4G.

use crate::boot::{BootInfo, E820_RAM, param, parse_u64};
use crate::cpu::{rdtsc, tsc_hz};
use crate::tern;

const TEST_START: u64 = 2 << 20;

fn pattern(addr: u64) -> u64 {
    (addr ^ 0x5a5a_5a5a_5a5a_5a5a).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

pub fn run(boot: &BootInfo) -> ! {
    let limit = match (param(boot.cmdline, "tern.mem_mib"), param(boot.cmdline, "tern.mem")) {
        (Some(mib), _) => parse_u64(mib).and_then(|m| m.checked_mul(1 << 20)),
        (None, Some(size)) => parse_u64(size),
        (None, None) => Some(u64::MAX),
    };
    let Some(mut remaining) = limit else {
        crate::finish(false, format_args!(" reason=bad-parameter"));
    };
    let requested = remaining;
    let test_start = match param(boot.cmdline, "tern.mem_start").map(parse_u64) {
        None => TEST_START,
        Some(Some(start)) if start >= TEST_START => start,
        Some(_) => crate::finish(false, format_args!(" reason=bad-parameter")),
    };
    let ram_top = boot.regions().iter().filter(|r| r.kind == E820_RAM).map(|r| r.addr + r.size).max().unwrap_or(0);
    let mapped = crate::highmem::map_up_to(ram_top);
    if mapped < ram_top {
        crate::tern!("memory unmapped_from={:#x} ram_top={:#x}", mapped, ram_top);
    }
    let start_tsc = rdtsc();
    let mut touched = 0u64;
    let mut checksum = 0u64;
    let mut bad: Option<(u64, u64, u64)> = None;
    for r in boot.regions().iter().filter(|r| r.kind == E820_RAM) {
        let start = r.addr.max(test_start).next_multiple_of(8);
        let end = (r.addr + r.size).min(mapped) & !7;
        if start >= end || remaining == 0 {
            continue;
        }
        let len = (end - start).min(remaining) & !7;
        remaining -= len;
        touched += len;
        let words = (len / 8) as usize;
        // SAFETY: RAM from the memory map, above the guest image (< 2 MiB)
        // and identity mapped (below `mapped`); nothing else uses it.
        let mem = unsafe { core::slice::from_raw_parts_mut(start as *mut u64, words) };
        for (i, w) in mem.iter_mut().enumerate() {
            *w = pattern(start + i as u64 * 8);
        }
        for (i, w) in mem.iter().enumerate() {
            let addr = start + i as u64 * 8;
            // SAFETY: reading back through a volatile load so the check is real.
            let got = unsafe { (w as *const u64).read_volatile() };
            checksum = checksum.rotate_left(1) ^ got;
            if got != pattern(addr) && bad.is_none() {
                bad = Some((addr, pattern(addr), got));
            }
        }
    }
    let cycles = rdtsc().wrapping_sub(start_tsc);
    if touched == 0 || (requested != u64::MAX && touched < requested) {
        crate::finish(false, format_args!(" reason=not-enough-ram bytes={} requested={}", touched, requested));
    }
    let hz = tsc_hz();
    let us = (cycles as u128 * 1_000_000 / hz as u128) as u64;
    tern!("metric=memory-pattern value={} unit=us", us);
    match bad {
        None => crate::finish(true, format_args!(" bytes={} checksum={:#018x}", touched, checksum)),
        Some((addr, want, got)) => crate::finish(
            false,
            format_args!(" bytes={} reason=mismatch addr={:#x} expected={:#x} got={:#x}", touched, addr, want, got),
        ),
    }
}
