//! Small scenarios: `exit:<code>`, `reboot`, `spin`, `poweroff`.

use crate::acpi::Acpi;
use crate::boot::{BootInfo, param, parse_u64};
use crate::cpu::{self, inw, outb, outw, rdtsc, tsc_hz};
use crate::tern;

/// `exit:<code>`: write <code> (decimal or 0x-hex) to the test-exit port.
pub fn exit_with(code: &[u8]) -> ! {
    match parse_u64(code).and_then(|c| u32::try_from(c).ok()) {
        Some(code) => {
            tern!("test={} code={}", crate::test_name(), code);
            crate::exit(code)
        }
        None => crate::finish(false, format_args!(" reason=bad-exit-code")),
    }
}

fn settle() {
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < 200_000_000 {
        cpu::pause();
    }
}

/// `reboot`: i8042 pulse-reset; then the FADT reset register; then 0xcf9.
pub fn reboot(boot: &BootInfo) -> ! {
    tern!("test=reboot state=resetting method=i8042");
    outb(0x64, 0xfe);
    settle();
    if let Some(acpi) = Acpi::discover(boot.rsdp) {
        tern!("test=reboot state=resetting method=acpi");
        acpi.reset();
        settle();
    }
    tern!("test=reboot state=resetting method=cf9");
    outb(0xcf9, 0x02);
    outb(0xcf9, 0x06);
    settle();
    crate::finish(false, format_args!(" reason=still-running"))
}

/// PM1_STS/PM1_EN power-button bit.
const PWRBTN: u16 = 1 << 8;

/// `spin`: `TERN tick=<n>` every `tern.tick_ms` (default 100) ms, until the
/// ACPI power button is pressed: then `TERN test=spin state=power-button`
/// and soft-off, like a cooperative OS. The button status is polled (no
/// interrupts at CPL3) every 10 ms.
pub fn spin(boot: &BootInfo) -> ! {
    let ms = param(boot.cmdline, "tern.tick_ms").and_then(parse_u64).unwrap_or(100).max(1);
    let hz = tsc_hz();
    tern!("test=spin tsc_hz={} tick_ms={}", hz, ms);
    let acpi = Acpi::discover(boot.rsdp);
    let pm1a = acpi.as_ref().and_then(|a| a.pm1a_evt());
    if let Some(port) = pm1a {
        outw(port + 2, PWRBTN);
    }
    let period = hz / 1000 * ms;
    let poll = (hz / 100).max(1);
    let mut next = rdtsc();
    let mut next_poll = next;
    let mut tick = 0u64;
    loop {
        while rdtsc() < next {
            if let (Some(port), Some(a)) = (pm1a, acpi.as_ref())
                && rdtsc() >= next_poll
            {
                next_poll = rdtsc() + poll;
                if inw(port) & PWRBTN != 0 {
                    outw(port, PWRBTN);
                    tern!("test=spin state=power-button");
                    a.power_off();
                    settle();
                    crate::finish(false, format_args!(" reason=still-running-after-poweroff"));
                }
            }
            cpu::pause();
        }
        tern!("tick={}", tick);
        tick += 1;
        next += period;
    }
}

/// `poweroff`: ACPI soft-off only (no exit-port fallback unless it fails).
pub fn poweroff(boot: &BootInfo) -> ! {
    tern!("test=poweroff state=powering-off");
    if let Some(acpi) = Acpi::discover(boot.rsdp) {
        acpi.power_off();
        settle();
    }
    crate::finish(false, format_args!(" reason=still-running"))
}

/// `fault`: touch an unmapped address at CPL3; the CPL0 handler reports
/// the page fault (vector 14) and exits with EXIT_EXCEPTION.
pub fn fault() -> ! {
    tern!("test=fault state=faulting addr=0x10000000000");
    // SAFETY: deliberately faults: 1 TiB is outside the guest's page tables.
    let value = unsafe { (0x100_0000_0000 as *const u64).read_volatile() };
    crate::finish(false, format_args!(" reason=no-fault value={value}"))
}

/// `cpuid`: the CPUID leaves the boot CPU captured at CPL0 (the VMM's CPU
/// model), one `TERN cpuid leaf=.. eax=.. ebx=.. ecx=.. edx=..` line each.
pub fn cpuid() -> ! {
    let mut n = 0;
    for (leaf, [a, b, c, d]) in cpu::boot_cpuid_leaves() {
        tern!("cpuid leaf={:#010x} eax={:#010x} ebx={:#010x} ecx={:#010x} edx={:#010x}", leaf, a, b, c, d);
        n += 1;
    }
    crate::finish(n > 0, format_args!(" leaves={}", n))
}
