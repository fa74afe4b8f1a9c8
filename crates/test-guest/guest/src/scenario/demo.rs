//! `demo`: print what the guest sees, then power off through ACPI.

use crate::acpi::Acpi;
use crate::boot::BootInfo;
use crate::cpu::{self, boot_cpuid, read32};
use crate::serial::Printable;
use crate::{pci, println, tern};

/// Where virtio-mmio transports may sit: (base, stride, slots). Tern's
/// layout (arch::layout::VIRTIO_MMIO_START), then QEMU microvm's.
const TERN_VIRTIO_WINDOW: (u64, u64, u64) = (0xd000_0000, 0x1000, 64);
const MICROVM_VIRTIO_WINDOW: (u64, u64, u64) = (0xfeb0_0000, 0x200, 32);

/// The windows to probe. Every probe is a VM exit, so QEMU microvm's window
/// is only probed where it can be: without ACPI or with a HW-reduced FADT
/// (microvm's; Tern's FADT has PM1 blocks).
pub fn virtio_mmio_windows(acpi: Option<&Acpi>) -> impl Iterator<Item = (u64, u64, u64)> {
    let microvm = acpi.is_none_or(|a| a.hw_reduced());
    core::iter::once(TERN_VIRTIO_WINDOW).chain(microvm.then_some(MICROVM_VIRTIO_WINDOW))
}
const VIRTIO_MAGIC: u32 = 0x7472_6976; // "virt"

pub fn cpu_vendor() -> [u8; 12] {
    let [_, b, c, d] = boot_cpuid(0).unwrap_or_default();
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&b.to_le_bytes());
    v[4..8].copy_from_slice(&d.to_le_bytes());
    v[8..12].copy_from_slice(&c.to_le_bytes());
    v
}

pub fn cpu_brand(out: &mut [u8; 48]) -> &[u8] {
    for (i, leaf) in (0x8000_0002..=0x8000_0004u32).enumerate() {
        let Some(regs) = boot_cpuid(leaf) else { return &[] };
        for (j, r) in regs.iter().enumerate() {
            out[i * 16 + j * 4..i * 16 + j * 4 + 4].copy_from_slice(&r.to_le_bytes());
        }
    }
    let end = out.iter().position(|&b| b == 0).unwrap_or(48);
    let start = out[..end].iter().position(|&b| b != b' ').unwrap_or(end);
    &out[start..end]
}

pub fn virtio_device_name(id: u32) -> &'static str {
    match id {
        1 => "net",
        2 => "block",
        3 => "console",
        4 => "rng",
        5 => "balloon",
        16 => "gpu",
        18 => "input",
        19 => "vsock",
        26 => "fs",
        _ => "other",
    }
}

/// Slots at VIRTIO_MMIO_BASE that answer with the virtio magic and a
/// non-zero device id: (slot, base, device id, version).
pub fn virtio_mmio_scan(acpi: Option<&Acpi>, mut found: impl FnMut(u64, u64, u32, u32)) {
    for (start, stride, slots) in virtio_mmio_windows(acpi) {
        for slot in 0..slots {
            let base = start + slot * stride;
            if read32(base) != VIRTIO_MAGIC {
                continue;
            }
            let device = read32(base + 8);
            if device != 0 {
                found(slot, base, device, read32(base + 4));
            }
        }
    }
}

pub fn run(boot: &BootInfo) -> ! {
    println!("Tern demo guest");
    tern!("boot protocol={} cmdline=\"{}\"", boot.protocol, Printable(boot.cmdline));

    let mut brand = [0u8; 48];
    let vendor = cpu_vendor();
    let mut hv = [0u8; 12];
    if let Some([_, b, c, d]) = boot_cpuid(0x4000_0000) {
        for (i, r) in [b, c, d].iter().enumerate() {
            hv[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
        }
    }
    let hv_len = hv.iter().position(|&b| b == 0).unwrap_or(12);
    let [sig, ..] = boot_cpuid(1).unwrap_or_default();
    let family = ((sig >> 8) & 0xf) + if (sig >> 8) & 0xf == 0xf { (sig >> 20) & 0xff } else { 0 };
    let model = ((sig >> 4) & 0xf) | ((sig >> 12) & 0xf0);
    tern!(
        "cpu vendor={} brand=\"{}\" family={:#x} model={:#x} stepping={} hypervisor={}",
        Printable(&vendor),
        Printable(cpu_brand(&mut brand)),
        family,
        model,
        sig & 0xf,
        if hv_len == 0 { "none" } else { core::str::from_utf8(&hv[..hv_len]).unwrap_or("?") }
    );

    let ram = boot.ram_bytes();
    tern!("memory ram_mib={} regions={}", ram >> 20, boot.region_count);

    let acpi = Acpi::discover(boot.rsdp);
    match &acpi {
        Some(acpi) => {
            let mut line = crate::serial::Line::new();
            use core::fmt::Write;
            let _ = write!(line, "TERN acpi rsdp={:#x} tables=", acpi.rsdp);
            for (i, (sig, _)) in acpi.tables().enumerate() {
                let _ = write!(line, "{}{}", if i == 0 { "" } else { "," }, Printable(&sig));
            }
            let _ = line.write_str("\n");
            line.flush();
            let mut ids = [0u32; 1];
            match acpi.cpus(&mut ids) {
                Some(n) => tern!("cpus={} source=madt", n),
                None => tern!("cpus=unknown source=none"),
            }
        }
        None => tern!("acpi none"),
    }

    let mut virtio = 0;
    virtio_mmio_scan(acpi.as_ref(), |slot, base, device, version| {
        virtio += 1;
        tern!(
            "virtio-mmio slot={} addr={:#x} device={} type={} version={}",
            slot,
            base,
            device,
            virtio_device_name(device),
            version
        );
    });

    let mut pci_count = 0;
    let ecam = pci::ecam_base(acpi.as_ref());
    pci::scan(ecam, |f| {
        pci_count += 1;
        tern!(
            "pci dev=00:{:02x}.{} vendor={:#06x} device={:#06x} class={:#08x}",
            f.dev,
            f.func,
            f.vendor,
            f.device,
            f.class
        );
    });
    tern!("devices virtio_mmio={} pci={}", virtio, pci_count);
    let start = crate::CPL3_START_TSC.load(core::sync::atomic::Ordering::Relaxed);
    tern!("metric=boot-cpl0 value={} unit=tsc-cycles", crate::cpl0_boot_cycles());
    tern!("metric=demo-cpl3 value={} unit=tsc-cycles", cpu::rdtsc().wrapping_sub(start));
    tern!("test=demo result=pass");

    if let Some(acpi) = &acpi {
        acpi.power_off();
        // Give an asynchronous power-off a moment before falling back.
        let start = cpu::rdtsc();
        while cpu::rdtsc().wrapping_sub(start) < 200_000_000 {
            cpu::pause();
        }
        tern!("poweroff result=still-running fallback=exit-port");
    }
    crate::exit(crate::EXIT_PASS)
}
