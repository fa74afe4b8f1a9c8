//! `smp`: start every other vCPU with INIT/SIPI from CPL3 (LAPIC MMIO),
//! each reports in at CPL3, the BSP counts them against the MADT.
//! Parameter: `tern.smp_timeout_ms=N` (default 10000).

use crate::acpi::Acpi;
use crate::boot::{BootInfo, param, parse_u64};
use crate::cpu::{self, rdtsc, read32, tsc_hz, write32};
use crate::tern;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Where the real-mode trampoline is copied (SIPI vector 0x10). Below the
/// VMM's cmdline (0x20000), above its boot structures (< 0xc000).
pub const TRAMPOLINE_ADDR: u64 = 0x10000;
const DEFAULT_LAPIC: u64 = 0xfee0_0000;
const MAX_CPUS: usize = 64;

const LAPIC_ID: u64 = 0x20;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_ICR_LO: u64 = 0x300;
const LAPIC_ICR_HI: u64 = 0x310;
const ICR_INIT_ALL_BUT_SELF: u32 = 0x000c_4500;
const ICR_SIPI_ALL_BUT_SELF: u32 = 0x000c_4600;
const ICR_PENDING: u32 = 1 << 12;

static ONLINE: AtomicU32 = AtomicU32::new(0);
static LAPIC: AtomicU64 = AtomicU64::new(DEFAULT_LAPIC);

fn wait_icr(lapic: u64) {
    for _ in 0..100_000 {
        if read32(lapic + LAPIC_ICR_LO) & ICR_PENDING == 0 {
            return;
        }
        cpu::pause();
    }
}

pub fn run(boot: &BootInfo) -> ! {
    let Some(acpi) = Acpi::discover(boot.rsdp) else {
        crate::finish(false, format_args!(" reason=no-acpi"));
    };
    let mut ids = [0u32; MAX_CPUS];
    let Some(cpus) = acpi.cpus(&mut ids) else {
        crate::finish(false, format_args!(" reason=no-madt"));
    };
    if cpus > MAX_CPUS {
        crate::finish(false, format_args!(" reason=too-many-cpus cpus={} max={}", cpus, MAX_CPUS));
    }
    let timeout_ms = param(boot.cmdline, "tern.smp_timeout_ms").and_then(parse_u64).unwrap_or(10_000);
    let madt = acpi.find(b"APIC").unwrap_or(0);
    let lapic = match crate::cpu::read32u(madt + 36) as u64 {
        0 => DEFAULT_LAPIC,
        a => a,
    };
    LAPIC.store(lapic, Ordering::SeqCst);
    let bsp_id = read32(lapic + LAPIC_ID) >> 24;
    tern!("cpu={} online bsp=1", bsp_id);
    if cpus <= 1 {
        crate::finish(cpus == 1, format_args!(" cpus={}", cpus));
    }

    let tramp = crate::trampoline();
    // SAFETY: TRAMPOLINE_ADDR is conventional RAM no one else uses (see the
    // protocol docs); identity mapped and user accessible.
    unsafe { core::ptr::copy_nonoverlapping(tramp.as_ptr(), TRAMPOLINE_ADDR as *mut u8, tramp.len()) };
    crate::ap_index_counter().store(1, Ordering::SeqCst);
    ONLINE.store(0, Ordering::SeqCst);

    let hz = tsc_hz();
    let started = rdtsc();
    write32(lapic + LAPIC_SVR, read32(lapic + LAPIC_SVR) | 0x1ff);
    write32(lapic + LAPIC_ICR_HI, 0);
    write32(lapic + LAPIC_ICR_LO, ICR_INIT_ALL_BUT_SELF);
    wait_icr(lapic);
    cpu::delay_us(10_000);
    let sipi = ICR_SIPI_ALL_BUT_SELF | (TRAMPOLINE_ADDR >> 12) as u32;
    for _ in 0..2 {
        write32(lapic + LAPIC_ICR_HI, 0);
        write32(lapic + LAPIC_ICR_LO, sipi);
        wait_icr(lapic);
        cpu::delay_us(200);
    }

    let deadline = hz / 1000 * timeout_ms;
    let want = cpus as u32 - 1;
    while ONLINE.load(Ordering::SeqCst) < want && rdtsc().wrapping_sub(started) < deadline {
        cpu::pause();
    }
    let online = ONLINE.load(Ordering::SeqCst) + 1;
    let ms = rdtsc().wrapping_sub(started) * 1000 / hz;
    tern!("metric=smp-bringup value={} unit=ms", ms);
    if online as usize == cpus {
        crate::finish(true, format_args!(" cpus={}", cpus))
    } else {
        crate::finish(false, format_args!(" cpus={} online={} reason=timeout", cpus, online))
    }
}

/// Every AP lands here at CPL3 with its own stack.
pub fn ap_main(_index: u64) -> ! {
    // The LAPIC, not CPUID: on PVM, CPUID at CPL3 is the host's.
    let apic_id = read32(LAPIC.load(Ordering::Relaxed) + LAPIC_ID) >> 24;
    // Report first, then count: the BSP ends the VM once all have counted.
    tern!("cpu={} online", apic_id);
    ONLINE.fetch_add(1, Ordering::SeqCst); // lock xadd, at CPL3
    loop {
        cpu::pause();
    }
}
