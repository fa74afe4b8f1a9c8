//! CPU primitives usable at CPL3 (IOPL=3 makes port I/O legal there).

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects; IOPL=3 permits it at CPL3.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

pub fn outw(port: u16, value: u16) {
    // SAFETY: as outb.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags)) }
}

pub fn outl(port: u16, value: u32) {
    // SAFETY: as outb.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) }
}

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as outb.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) }
    value
}

pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as outb.
    unsafe { asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack, preserves_flags)) }
    value
}

pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the time stamp counter (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

pub fn pause() {
    core::hint::spin_loop();
}

/// Physical memory is identity mapped and user accessible: these are plain
/// volatile accesses at a physical address.
pub fn read32(addr: u64) -> u32 {
    // SAFETY: addr is below 4 GiB (mapped) and naturally aligned by callers.
    unsafe { (addr as *const u32).read_volatile() }
}

pub fn write32(addr: u64, value: u32) {
    // SAFETY: as read32.
    unsafe { (addr as *mut u32).write_volatile(value) }
}

pub fn read8(addr: u64) -> u8 {
    // SAFETY: as read32.
    unsafe { (addr as *const u8).read_volatile() }
}

pub fn read16(addr: u64) -> u16 {
    // SAFETY: as read32.
    unsafe { (addr as *const u16).read_unaligned() }
}

pub fn read32u(addr: u64) -> u32 {
    // SAFETY: as read32, for table fields that may be unaligned.
    unsafe { (addr as *const u32).read_unaligned() }
}

pub fn read64u(addr: u64) -> u64 {
    // SAFETY: as read32u.
    unsafe { (addr as *const u64).read_unaligned() }
}

/// Bytes at a physical address (identity mapped).
pub fn phys_slice(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: identity-mapped guest memory below 4 GiB; the guest never
    // frees memory, so 'static is sound for read-only firmware data.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

/// Largest physical address the guest's page tables map.
pub const MAPPED_LIMIT: u64 = 1 << 32;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// TSC frequency: measured against the PIT (channel 2) when one counts,
/// else from CPUID leaves 0x15, 0x40000010 or 0x16, else assumed 2 GHz.
/// Returns (hz, source).
pub fn tsc_hz() -> u64 {
    let cached = TSC_HZ.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let (hz, _) = measure_tsc_hz();
    TSC_HZ.store(hz, Ordering::Relaxed);
    hz
}

pub fn measure_tsc_hz() -> (u64, &'static str) {
    if let Some(hz) = pit_calibrate() {
        return (hz, "pit");
    }
    let max_leaf = cpuid(0, 0)[0];
    if max_leaf >= 0x15 {
        let [den, num, crystal, _] = cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal != 0 {
            return (crystal as u64 * num as u64 / den as u64, "cpuid-15");
        }
    }
    let hv_max = cpuid(0x4000_0000, 0)[0];
    if (0x4000_0010..0x4000_0100).contains(&hv_max) {
        let khz = cpuid(0x4000_0010, 0)[0];
        if khz != 0 {
            return (khz as u64 * 1000, "cpuid-40000010");
        }
    }
    if max_leaf >= 0x16 {
        let mhz = cpuid(0x16, 0)[0] & 0xffff;
        if mhz != 0 {
            return (mhz as u64 * 1_000_000, "cpuid-16");
        }
    }
    (2_000_000_000, "assumed")
}

const PIT_HZ: u64 = 1_193_182;

/// Count PIT channel 2 (gated through port 0x61, no interrupt) down for
/// ~10 ms and compare with the TSC.
fn pit_calibrate() -> Option<u64> {
    // Port 0x61 gates channel 2; some machines (QEMU microvm) have no such
    // port (reads 0xff) yet the channel counts anyway.
    let gate = inb(0x61);
    let restore = |g: u8| {
        if g != 0xff {
            outb(0x61, g)
        }
    };
    if gate != 0xff {
        outb(0x61, (gate & 0xfd) | 0x01);
    }
    outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0, binary
    outb(0x42, 0xff);
    outb(0x42, 0xff);
    let read = || {
        outb(0x43, 0x80); // latch channel 2
        let lo = inb(0x42) as u64;
        let hi = inb(0x42) as u64;
        (hi << 8) | lo
    };
    let first = read();
    let start_tsc = rdtsc();
    let mut reads = 0u32;
    let mut last = first;
    let mut unchanged = 0u32;
    loop {
        let now = read();
        // A live PIT moves between two reads (each is a VM exit, > 1 us);
        // no PIT reads back a constant: give up quickly.
        if now == last {
            unchanged += 1;
            if unchanged > 100 {
                restore(gate);
                return None;
            }
        } else {
            unchanged = 0;
            last = now;
        }
        let elapsed = first.wrapping_sub(now) & 0xffff;
        if elapsed >= PIT_HZ / 100 && now < first {
            let cycles = rdtsc() - start_tsc;
            restore(gate);
            return Some(cycles * PIT_HZ / elapsed);
        }
        reads += 1;
        if reads > 100_000 {
            restore(gate);
            return None;
        }
    }
}

/// Busy-wait for `us` microseconds by the TSC.
pub fn delay_us(us: u64) {
    let hz = tsc_hz();
    let start = rdtsc();
    let cycles = hz / 1_000_000 * us;
    while rdtsc().wrapping_sub(start) < cycles {
        pause();
    }
}

#[repr(C)]
struct CpuidEntry {
    leaf: u32,
    subleaf: u32,
    regs: [u32; 4],
}

const CPUID_LEAVES: usize = 12;

unsafe extern "C" {
    /// Filled by entry.s at CPL0 before the drop to CPL3, never written after.
    static TERN_CPUID: [CpuidEntry; CPUID_LEAVES];
}

fn boot_cpuid_raw(leaf: u32) -> Option<[u32; 4]> {
    // SAFETY: written once at CPL0 before any Rust code runs; read-only now.
    let table = unsafe { &TERN_CPUID };
    table.iter().find(|e| e.leaf == leaf && e.subleaf == 0).map(|e| e.regs)
}

/// CPUID (subleaf 0) as the boot CPU saw it at CPL0, i.e. the VMM's CPU
/// model (CPUID at CPL3 may run natively on the host). None for leaves not
/// captured or beyond the range's maximum leaf.
pub fn boot_cpuid(leaf: u32) -> Option<[u32; 4]> {
    let range_base = leaf & 0xffff_0000;
    let max = boot_cpuid_raw(range_base)?[0];
    if range_base == 0x4000_0000 && !(0x4000_0000..0x4001_0000).contains(&max) {
        return None;
    }
    if leaf > max {
        return None;
    }
    boot_cpuid_raw(leaf)
}

/// Every captured leaf: (leaf, registers) in table order, valid ones only.
pub fn boot_cpuid_leaves() -> impl Iterator<Item = (u32, [u32; 4])> {
    // SAFETY: as boot_cpuid_raw.
    let table = unsafe { &TERN_CPUID };
    table.iter().filter_map(|e| boot_cpuid(e.leaf).map(|r| (e.leaf, r)))
}
