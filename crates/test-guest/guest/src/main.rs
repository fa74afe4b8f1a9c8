//! Tern test guest: a freestanding x86-64 program that boots through PVH or
//! the Linux 64-bit boot protocol, leaves CPL0 after a few hundred
//! instructions (entry.s) and runs the scenario the command line names at
//! CPL3. See ../../src/lib.rs for the protocol it speaks to the VMM.

#![no_std]
#![no_main]

extern crate alloc;

mod acpi;
mod blk_pattern;
mod boot;
mod cpu;
mod highmem;
mod mem;
mod pci;
mod scenario;
mod virtio;
#[macro_use]
mod serial;

use core::sync::atomic::AtomicU32;

core::arch::global_asm!(include_str!("entry.s"));

/// Exit codes written to the test-exit port (status = code << 1 | 1).
pub const EXIT_PASS: u32 = 0;
pub const EXIT_FAIL: u32 = 1;
pub const EXIT_PANIC: u32 = 3;

const EXIT_PORT: u16 = 0xf4;
const TEST_NAME_MAX: usize = 31;

/// The running scenario's name, NUL-terminated, for the CPL0 exception
/// report in entry.s.
#[unsafe(no_mangle)]
static mut TERN_TEST_NAME: [u8; TEST_NAME_MAX + 1] = [0; TEST_NAME_MAX + 1];

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_next_index: AtomicU32;
    static TERN_ENTRY_TSC: u64;
}

/// TSC cycles from the boot CPU's first instruction to its first at CPL3:
/// the (emulated, on PVM) CPL0 part of the boot.
pub fn cpl0_boot_cycles() -> u64 {
    // SAFETY: written once by entry.s before CPL3; read-only afterwards.
    let entry = unsafe { (&raw const TERN_ENTRY_TSC).read_volatile() };
    CPL3_START_TSC.load(core::sync::atomic::Ordering::Relaxed).wrapping_sub(entry)
}

fn set_test_name(name: &[u8]) {
    let dst = (&raw mut TERN_TEST_NAME).cast::<u8>();
    let len = name.len().min(TEST_NAME_MAX);
    for (i, &b) in name[..len].iter().chain(core::iter::once(&0)).enumerate() {
        // SAFETY: i <= TEST_NAME_MAX, inside the array; only the BSP writes it.
        unsafe { dst.add(i).write_volatile(b) }
    }
}

pub fn test_name() -> &'static str {
    let src = (&raw const TERN_TEST_NAME).cast::<u8>();
    let mut len = 0;
    // SAFETY: the array is NUL-terminated by set_test_name (or all zero).
    while len < TEST_NAME_MAX && unsafe { src.add(len).read_volatile() } != 0 {
        len += 1;
    }
    // SAFETY: copied from the command line, which we only accept as ASCII
    // below; fall back to a fixed name otherwise.
    let bytes = unsafe { core::slice::from_raw_parts(src, len) };
    core::str::from_utf8(bytes).unwrap_or("?")
}

/// Leave through the test-exit port; if this VMM has none, power off; if
/// that fails too, spin (CPL3 cannot halt).
pub fn exit(code: u32) -> ! {
    cpu::outl(EXIT_PORT, code);
    if let Some(acpi) = acpi::Acpi::discover(RSDP_HINT.load(core::sync::atomic::Ordering::Relaxed)) {
        acpi.power_off();
    }
    loop {
        cpu::pause();
    }
}

/// Report the scenario result line and exit with pass/fail.
pub fn finish(pass: bool, extra: core::fmt::Arguments) -> ! {
    let result = if pass { "pass" } else { "fail" };
    tern!("test={} result={}{}", test_name(), result, extra);
    exit(if pass { EXIT_PASS } else { EXIT_FAIL })
}

pub fn trampoline() -> &'static [u8] {
    let start = &raw const ap_trampoline_start;
    let end = &raw const ap_trampoline_end;
    // SAFETY: both symbols delimit the trampoline bytes in .text.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}

pub fn ap_index_counter() -> &'static AtomicU32 {
    // SAFETY: a 4-byte aligned .data word only ever accessed atomically.
    unsafe { &ap_next_index }
}

/// The RSDP address the loader handed over (0: scan), for [`exit`].
static RSDP_HINT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// TSC when the boot CPU reached CPL3.
pub static CPL3_START_TSC: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

#[unsafe(no_mangle)]
extern "C" fn tern_bsp_main(info: u64, kind: u64) -> ! {
    CPL3_START_TSC.store(cpu::rdtsc(), core::sync::atomic::Ordering::Relaxed);
    serial::init();
    let boot = boot::parse(info, kind);
    RSDP_HINT.store(boot.rsdp, core::sync::atomic::Ordering::Relaxed);
    let test = boot::param(boot.cmdline, "tern.test").unwrap_or(b"demo");
    let test = if test.is_ascii() { test } else { b"?" };
    set_test_name(test);
    scenario::run(test, &boot)
}

#[unsafe(no_mangle)]
extern "C" fn tern_ap_main(index: u64) -> ! {
    scenario::smp::ap_main(index)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    tern!("panic {}", info);
    tern!("test={} result=fail reason=panic", test_name());
    exit(EXIT_PANIC)
}
