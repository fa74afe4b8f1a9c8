//! The Tern test guest: a freestanding x86-64 ELF built by this crate's
//! build script (sources in `guest/`) and embedded as [`GUEST_ELF`].
//!
//! # Booting it
//!
//! One image, two boot protocols, loaded at 1 MiB (`arch::layout::HIMEM_START`):
//!
//! * **PVH**: an ELF note `XEN_ELFNOTE_PHYS32_ENTRY` (type 18, name "Xen")
//!   names a 32-bit entry: protected mode, paging off, `ebx` = physical
//!   address of `hvm_start_info`. QEMU (`-M microvm -kernel`), Cloud
//!   Hypervisor and Firecracker boot it this way.
//! * **Linux 64-bit boot protocol**: ELF `e_entry` is a 64-bit entry reached
//!   in long mode on the VMM's identity-mapped page tables with `rsi` = the
//!   zero page (`boot_params`: `cmd_line_ptr` at 0x228, e820 count at 0x1e8,
//!   table at 0x2d0, `acpi_rsdp_addr` at 0x70).
//!
//! The command line comes from `start_info.cmdline_paddr` (PVH) or
//! `boot_params.hdr.cmd_line_ptr` (Linux); memory from the PVH memmap or
//! e820; ACPI from `start_info.rsdp_paddr` / `boot_params.acpi_rsdp_addr`,
//! else a scan of the EBDA and 0xe0000..0xfffff.
//!
//! After entry the guest loads its own GDT (user segments, one TSS
//! descriptor per CPU), static page tables (identity map of 0..4 GiB with
//! 2 MiB pages, all user-accessible, 3..4 GiB uncached), a 32-vector IDT,
//! and `iretq`s to CPL3 after a few hundred instructions (it first records
//! a dozen CPUID leaves at CPL0: CPUID at CPL3 runs natively on PVM and
//! shows the host CPU, not the VMM's model). Port I/O at CPL3
//! is allowed through the TSS I/O permission bitmap (all ports; PVM ignores
//! RFLAGS.IOPL but honours the bitmap) and IOPL=3.
//!
//! # Protocol
//!
//! * **Serial**: 16550 at COM1 (0x3f8), polled (THRE, then up to 16 bytes per
//!   poll: FIFO depth). Result lines read `TERN key=value ...`; the final one
//!   of a scenario is `TERN test=<name> result=pass|fail [key=value...]`;
//!   numbers are `TERN metric=<name> value=<n> unit=<u>`.
//! * **Test exit**: the guest writes a 32-bit code to port 0xf4 (QEMU
//!   `isa-debug-exit` semantics: the VMM exits with status `code << 1 | 1`).
//!   See [`EXIT_PASS`] and friends. If the VM is still running afterwards
//!   (no such port), the guest tries ACPI soft-off, then spins at CPL3.
//! * **Power off** (demo, poweroff): ACPI S5 via the FADT: SLP_TYP from the
//!   DSDT `_S5_` package (default 5); `SLP_TYP << 10 | SLP_EN` to
//!   PM1a_CNT_BLK (Tern: port 0x604), or `SLP_TYP << 2 | SLP_EN` to
//!   SLEEP_CONTROL_REG on HW-reduced FADTs (QEMU microvm). If still
//!   running ~100 ms later: test-exit with [`EXIT_PASS`].
//! * **Reset**: i8042 `0x64 <- 0xfe`, then the FADT reset register, then
//!   `0xcf9 <- 0x06`.
//! * **Exceptions** (any vector 0..31, any CPU): `TERN exception vector=..
//!   error=.. rip=.. cr2=.. cs=.. rflags=..` then `TERN test=<name>
//!   result=fail reason=exception`, exit code [`EXIT_EXCEPTION`].
//!
//! # Memory the guest uses
//!
//! * 0x100000..0x1f0000: the image (code, data, page tables, GDT/IDT/TSS,
//!   stacks: BSP 64 KiB, exception 16 KiB, 64 × 8 KiB AP stacks; 64 page
//!   directories for RAM above 4 GiB).
//! * 0x10000..0x11000: the AP trampoline (smp scenario only; SIPI vector 0x10).
//! * Everything below 2 MiB is the guest's; the `memory` scenario tests RAM
//!   from 2 MiB up (it maps RAM above 4 GiB at CPL3 first).
//! * virtio scenarios only: 2..4 MiB DMA pages (virtqueues, buffers), 4..6 MiB
//!   heap (bump allocators, never freed); `virtio-balloon` gives away the
//!   highest pages of RAM below 4 GiB.
//! * The VMM's boot structures (zero page, start_info, cmdline, ACPI) are
//!   only read, before any scenario writes memory.
//!
//! # Scenarios (`tern.test=<name>`, default `demo`)
//!
//! See [`SCENARIOS`] and [`VIRTIO_SCENARIOS`]; parameters are further
//! `key=value` words. Checked by hand against `tern run` (both `--boot pvh`
//! and `--boot linux`, both `--transport`s), e.g.:
//!
//! * `tern run --kernel g.elf --cpus 4 --cmdline tern.test=smp` (status 1)
//! * `tern run --kernel g.elf --disk path=d.raw --cmdline "tern.test=virtio-blk tern.blk_sectors=100"`
//! * in a netns with a TAP `t0` holding 10.0.2.2/24 (the host kernel answers
//!   ARP and ping): `tern run --kernel g.elf --net tap=t0 --cmdline tern.test=virtio-net`
//! * with a Unix listener on `v.sock_1234` that answers:
//!   `tern run --kernel g.elf --vsock cid=3,socket=v.sock --cmdline tern.test=virtio-vsock`
//! * `tern run --kernel g.elf --balloon size=64 --cmdline tern.test=virtio-balloon`
//!   (inflates by the device's `num_pages`)

use std::io;
use std::path::Path;

/// The guest ELF image (PVH note + 64-bit entry), loaded at 1 MiB.
pub const GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tern-test-guest.elf"));

/// Physical load address of the image (lowest PT_LOAD paddr).
pub const LOAD_ADDR: u64 = 0x10_0000;
/// Where the smp scenario copies its real-mode AP trampoline.
pub const AP_TRAMPOLINE_ADDR: u64 = 0x1_0000;
/// The `memory` scenario tests RAM from here up.
pub const MEMORY_TEST_START: u64 = 0x20_0000;

/// Test-exit port (QEMU isa-debug-exit compatible).
pub const EXIT_PORT: u16 = 0xf4;
/// The scenario passed (status 1).
pub const EXIT_PASS: u32 = 0;
/// The scenario failed; the result line says why (status 3).
pub const EXIT_FAIL: u32 = 1;
/// A CPU exception in the guest (status 5).
pub const EXIT_EXCEPTION: u32 = 2;
/// A Rust panic in the guest (status 7).
pub const EXIT_PANIC: u32 = 3;
/// A CPL0 scenario that should have stopped the VM (triple fault, internal
/// error) kept running (status 9).
pub const EXIT_NOT_STOPPED: u32 = 4;

/// The process status a VMM with isa-debug-exit semantics ends with.
pub const fn exit_status(code: u32) -> i32 {
    ((code << 1) | 1) as i32
}

/// One scenario: its `tern.test=` name, parameters and what it prints.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub params: &'static str,
    pub reports: &'static str,
    /// How the VM ends when it works.
    pub ends_with: &'static str,
}

/// Every scenario the guest knows.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "demo",
        params: "",
        reports: "`Tern demo guest`, `TERN boot protocol=.. cmdline=\"..\"`, \
                  `TERN cpu vendor=.. brand=\"..\" family=0x.. model=0x.. stepping=N hypervisor=KVMKVMKVM|none` \
                  (CPUID captured at CPL0: the VMM's CPU model), `TERN memory ram_mib=N`, \
                  `TERN acpi rsdp=.. tables=..`, `TERN cpus=N source=madt`, `TERN virtio-mmio slot=..`, \
                  `TERN pci dev=..`, `TERN devices virtio_mmio=N pci=N`, \
                  `TERN metric=boot-cpl0 value=N unit=tsc-cycles` (first instruction to CPL3), \
                  `TERN metric=demo-cpl3 value=N unit=tsc-cycles` (time at CPL3 so far), `TERN test=demo result=pass`",
        ends_with: "ACPI soft-off; exit code 0 if still running",
    },
    Scenario {
        name: "smp",
        params: "tern.smp_timeout_ms=N (10000)",
        reports: "`TERN cpu=<apic id> online` per CPU, `TERN metric=smp-bringup value=N unit=ms`, \
                  `TERN test=smp result=pass cpus=N` (N from the MADT)",
        ends_with: "exit code 0 / 1",
    },
    Scenario {
        name: "memory",
        params: "tern.mem_mib=N or tern.mem=<size>[K|M|G] (all RAM from 2 MiB up), tern.mem_start=<addr> (2M); \
                 RAM above 4 GiB is mapped at CPL3 first (1 GiB pages, else 2 MiB pages: up to 68 GiB)",
        reports: "`TERN metric=memory-pattern value=N unit=us`, \
                  `TERN test=memory result=pass bytes=N checksum=0x..`",
        ends_with: "exit code 0 / 1",
    },
    Scenario {
        name: "exit:<code>",
        params: "code: decimal or 0x-hex u32",
        reports: "`TERN test=exit:<code> code=<code>`",
        ends_with: "exit code <code>",
    },
    Scenario {
        name: "reboot",
        params: "",
        reports: "`TERN test=reboot state=resetting method=i8042|acpi|cf9`",
        ends_with: "reset (i8042 first)",
    },
    Scenario {
        name: "poweroff",
        params: "",
        reports: "`TERN test=poweroff state=powering-off`",
        ends_with: "ACPI soft-off only",
    },
    Scenario {
        name: "cpuid",
        params: "",
        reports: "`TERN cpuid leaf=0x.. eax=0x.. ebx=0x.. ecx=0x.. edx=0x..` for leaves 0, 1, 6, 7, 0xd, \
                  0x40000000, 0x40000001, 0x80000000..0x80000004 (subleaf 0, as the boot CPU saw them at CPL0; \
                  leaves above the range maximum are left out), `TERN test=cpuid result=pass leaves=N`",
        ends_with: "exit code 0",
    },
    Scenario {
        name: "fault",
        params: "",
        reports: "`TERN test=fault state=faulting addr=..`, then the exception lines (vector 14)",
        ends_with: "exit code 2 (EXIT_EXCEPTION)",
    },
    Scenario {
        name: "spin",
        params: "tern.tick_ms=N (100)",
        reports: "`TERN test=spin tsc_hz=N tick_ms=N`, then `TERN tick=<n>` every tick, forever",
        ends_with: "never",
    },
    Scenario {
        name: "hlt",
        params: "",
        reports: "`TERN test=hlt state=halted` (printed at CPL0)",
        ends_with: "never: `cli; hlt` at CPL0",
    },
    Scenario {
        name: "triple-fault",
        params: "",
        reports: "`TERN test=triple-fault state=faulting`",
        ends_with: "triple fault (shutdown exit) from CPL0 with a null IDT",
    },
    Scenario {
        name: "internal-error",
        params: "",
        reports: "`TERN test=internal-error state=executing`",
        ends_with: "KVM_EXIT_INTERNAL_ERROR: POPCNT with an MMIO operand at CPL0 (KVM's emulator lacks POPCNT)",
    },
];

/// virtio scenarios (all at CPL3, polling, driven by the `virtio-drivers`
/// crate). The device is found on virtio-mmio (Tern's window 0xd0000000 +
/// i * 0x1000, 64 slots, then, only without ACPI or with a HW-reduced FADT,
/// QEMU microvm's 0xfeb00000 + i * 0x200, 32 slots; by magic) or PCI bus 0 through ECAM (MCFG base, else 0xe0000000;
/// unassigned BARs get addresses from 0xc0000000). `tern.virtio=mmio|pci`
/// restricts the search. Every one ends with `TERN test=<name>
/// result=pass|fail ... transport=mmio|pci` and exit code 0 / 1;
/// `reason=no-device` when there is none.
pub const VIRTIO_SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "virtio-blk",
        params: "tern.blk_sectors=N (64), tern.blk_start=N (0), tern.blk_mode=read (only read)",
        reports: "`TERN virtio-blk transport=.. capacity=N readonly=..`, `TERN test=virtio-blk result=pass sectors=N \
                  mode=write-read|read checksum=0x.. mismatches=0 transport=..` (checksum: FNV-1a over the \
                  sectors read, see [`blk_checksum`]; written data: [`blk_sector_pattern`])",
        ends_with: "exit code 0 / 1",
    },
    Scenario {
        name: "virtio-net",
        params: "tern.net_ip (10.0.2.15), tern.net_peer (10.0.2.2), tern.net_ping=0, tern.net_timeout_ms (3000)",
        reports: "`TERN virtio-net transport=.. mac=..`, `TERN virtio-net arp peer_mac=..`, \
                  `TERN metric=virtio-net-ping-rtt value=N unit=us`, \
                  `TERN test=virtio-net result=pass tx=N rx=N arp=ok ping=ok transport=..` \
                  (ARP request for the peer, then an ICMP echo to it)",
        ends_with: "exit code 0 / 1",
    },
    Scenario {
        name: "virtio-rng",
        params: "tern.rng_bytes=N (64)",
        reports: "`TERN test=virtio-rng result=pass bytes=N distinct=N transport=..` (fails if all bytes are equal)",
        ends_with: "exit code 0 / 1",
    },
    Scenario {
        name: "virtio-console",
        params: "",
        reports: "writes `TERN virtio-console hello\\n` to the device; `TERN test=virtio-console result=pass bytes=26 ..`",
        ends_with: "exit code 0 / 1",
    },
    Scenario {
        name: "virtio-vsock",
        params: "tern.vsock_port=N (1234), tern.vsock_timeout_ms (5000)",
        reports: "connects to CID 2 port N from guest port 50000, sends `TERN vsock hello\\n`, waits for any reply: \
                  `TERN virtio-vsock received=\"..\"`, `TERN test=virtio-vsock result=pass sent=17 received=N ..`",
        ends_with: "exit code 0 / 1",
    },
    Scenario {
        name: "virtio-balloon",
        params: "tern.balloon_pages=N (the device's num_pages, else 256)",
        reports: "`TERN virtio-balloon transport=.. num_pages=N inflating=N`, \
                  `TERN test=virtio-balloon result=pass pages=N ..` (then `actual` = N)",
        ends_with: "exit code 0 / 1",
    },
];

/// The 512 bytes the `virtio-blk` scenario writes to `sector`: `TERNBLK\0`,
/// the sector number (u64 LE), then `(sector * 7 + i) as u8` for i in 16..512.
pub fn blk_sector_pattern(sector: u64) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[..8].copy_from_slice(b"TERNBLK\0");
    s[8..16].copy_from_slice(&sector.to_le_bytes());
    for (i, b) in s.iter_mut().enumerate().skip(16) {
        *b = (sector.wrapping_mul(7).wrapping_add(i as u64)) as u8;
    }
    s
}

/// The checksum `virtio-blk` reports: FNV-1a 64 over the bytes it read.
pub fn blk_checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// One `TERN key=value ...` line from the guest's serial output. Values
/// may be double-quoted (`cmdline="..."`); a word without `=` is kept with
/// an empty value (e.g. `online` in `TERN cpu=1 online`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TernLine {
    pub pairs: Vec<(String, String)>,
}

impl TernLine {
    pub fn parse(line: &str) -> Option<TernLine> {
        let rest = line.trim_end().strip_prefix("TERN ")?;
        let mut pairs = Vec::new();
        let mut chars = rest.chars().peekable();
        while chars.peek().is_some() {
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                chars.next();
                if c == '=' || c == ' ' {
                    if c == ' ' {
                        break;
                    }
                    let mut value = String::new();
                    let quoted = chars.peek() == Some(&'"');
                    if quoted {
                        chars.next();
                    }
                    for c in chars.by_ref() {
                        if (quoted && c == '"') || (!quoted && c == ' ') {
                            break;
                        }
                        value.push(c);
                    }
                    if quoted && chars.peek() == Some(&' ') {
                        chars.next();
                    }
                    pairs.push((std::mem::take(&mut key), value));
                    break;
                }
                key.push(c);
            }
            if !key.is_empty() {
                pairs.push((key, String::new()));
            }
        }
        Some(TernLine { pairs })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Every `TERN` line in `output`, in order.
pub fn tern_lines(output: &str) -> impl Iterator<Item = TernLine> + '_ {
    output.lines().filter_map(TernLine::parse)
}

/// The scenario's final `TERN test=<name> result=pass|fail ...` line.
pub fn scenario_result(output: &str) -> Option<TernLine> {
    tern_lines(output).filter(|l| l.get("test").is_some() && l.get("result").is_some()).last()
}

/// Every `TERN metric=<name> value=<n> unit=<u>` as (name, value, unit).
pub fn metrics(output: &str) -> Vec<(String, u64, String)> {
    tern_lines(output)
        .filter_map(|l| {
            let value = l.get("value")?.parse().ok()?;
            Some((l.get("metric")?.to_owned(), value, l.get("unit").unwrap_or("").to_owned()))
        })
        .collect()
}

/// Write the guest image to `path` (e.g. for `tern run --kernel` or QEMU).
pub fn write_guest(path: &Path) -> io::Result<()> {
    std::fs::write(path, GUEST_ELF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn image_is_a_static_x86_64_elf_loaded_at_1mib() {
        let elf = GUEST_ELF;
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "ELFCLASS64");
        assert_eq!(u16_at(elf, 16), 2, "ET_EXEC");
        assert_eq!(u16_at(elf, 18), 62, "EM_X86_64");
        let entry = u64_at(elf, 24);
        let phoff = u64_at(elf, 32) as usize;
        let phnum = u16_at(elf, 56) as usize;
        let mut lowest = u64::MAX;
        let mut highest = 0;
        for i in 0..phnum {
            let ph = phoff + i * 56;
            if u32_at(elf, ph) == 1 {
                let paddr = u64_at(elf, ph + 24);
                lowest = lowest.min(paddr);
                highest = highest.max(paddr + u64_at(elf, ph + 40));
            }
        }
        assert_eq!(lowest, LOAD_ADDR);
        assert!(highest <= MEMORY_TEST_START, "image ends at {highest:#x}, inside the memory test range");
        assert!((lowest..highest).contains(&entry));
    }

    #[test]
    fn image_has_a_pvh_note_pointing_into_the_image() {
        let elf = GUEST_ELF;
        let phoff = u64_at(elf, 32) as usize;
        let phnum = u16_at(elf, 56) as usize;
        let mut pvh_entry = None;
        for i in 0..phnum {
            let ph = phoff + i * 56;
            if u32_at(elf, ph) != 4 {
                continue;
            }
            let (mut at, end) = (u64_at(elf, ph + 8) as usize, (u64_at(elf, ph + 8) + u64_at(elf, ph + 32)) as usize);
            while at + 12 <= end {
                let (namesz, descsz, kind) =
                    (u32_at(elf, at) as usize, u32_at(elf, at + 4) as usize, u32_at(elf, at + 8));
                let name = &elf[at + 12..at + 12 + namesz];
                let desc = at + 12 + namesz.next_multiple_of(4);
                if kind == 18 && name == b"Xen\0" {
                    pvh_entry = Some(u32_at(elf, desc) as u64);
                }
                at = desc + descsz.next_multiple_of(4);
            }
        }
        let pvh_entry = pvh_entry.expect("XEN_ELFNOTE_PHYS32_ENTRY note");
        assert!((LOAD_ADDR..MEMORY_TEST_START).contains(&pvh_entry));
        assert_ne!(pvh_entry, u64_at(elf, 24), "PVH entry is 32-bit, e_entry 64-bit: they differ");
    }

    #[test]
    fn exit_status_matches_isa_debug_exit() {
        assert_eq!(exit_status(EXIT_PASS), 1);
        assert_eq!(exit_status(EXIT_FAIL), 3);
        assert_eq!(exit_status(42), 85);
    }

    #[test]
    fn tern_lines_parse_keys_values_and_quotes() {
        let out = "Tern demo guest\nTERN boot protocol=pvh cmdline=\"a b=c\"\nTERN cpu=3 online\n\
                   TERN metric=smp-bringup value=39 unit=ms\nTERN test=smp result=pass cpus=4\n";
        let lines: Vec<_> = tern_lines(out).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].get("boot"), Some(""));
        assert_eq!(lines[0].get("protocol"), Some("pvh"));
        assert_eq!(lines[0].get("cmdline"), Some("a b=c"));
        assert_eq!(lines[1].get("cpu"), Some("3"));
        assert_eq!(lines[1].get("online"), Some(""));
        let result = scenario_result(out).unwrap();
        assert_eq!(result.get("test"), Some("smp"));
        assert_eq!(result.get("result"), Some("pass"));
        assert_eq!(result.get("cpus"), Some("4"));
        assert_eq!(metrics(out), vec![("smp-bringup".to_owned(), 39, "ms".to_owned())]);
        assert!(scenario_result("TERN test=smp state=x\n").is_none());
        assert!(TernLine::parse("not a tern line").is_none());
    }

    #[test]
    fn blk_pattern_is_stable() {
        let s = blk_sector_pattern(3);
        assert_eq!(&s[..8], b"TERNBLK\0");
        assert_eq!(u64::from_le_bytes(s[8..16].try_into().unwrap()), 3);
        assert_eq!(s[16], 37);
        assert_eq!(blk_checksum(b""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn write_guest_writes_the_image() {
        let dir = std::env::temp_dir().join(format!("tern-test-guest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("guest.elf");
        write_guest(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), GUEST_ELF);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
