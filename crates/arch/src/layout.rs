//! The guest physical and I/O address map every part of Tern agrees on.
//! Kept in one place so the VMM, the device models, the firmware tables and
//! the test guests cannot drift apart.

// ---- guest physical memory (x86-64) ----

/// PVH `hvm_start_info` and its module list.
pub const PVH_INFO_START: u64 = 0x6000;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Boot GDT used for 64-bit Linux boot protocol entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (empty) right after the GDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// Identity-map page tables built by the VMM for 64-bit entry: PML4, PDPTE, PDE.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Top of conventional memory (EBDA starts here); the MP table goes here.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI RSDP in the BIOS read-only area, where Linux scans for it.
pub const RSDP_START: u64 = 0xe0000;
/// Other ACPI tables follow the RSDP.
pub const ACPI_TABLES_START: u64 = 0xe0100;
/// Kernel load address (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole; RAM above this goes to 4 GiB and up.
pub const MMIO32_HOLE_START: u64 = 0xc000_0000;
pub const MMIO32_HOLE_END: u64 = 0x1_0000_0000;
/// Start of RAM above the hole.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;

/// PCI 32-bit BAR window.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
pub const PCI_MMIO32_SIZE: u64 = 0x1000_0000;
/// virtio-mmio device windows, `VIRTIO_MMIO_SIZE` apart.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const VIRTIO_MMIO_MAX_DEVICES: u64 = 64;
/// PCI Express ECAM (MCFG) for bus 0..=PCI_ECAM_BUSES-1.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_BUSES: u64 = 1;
pub const PCI_ECAM_SIZE: u64 = PCI_ECAM_BUSES << 20;
/// IOAPIC and local APIC.
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// 64-bit PCI BAR window size, placed above the end of RAM (1 GiB aligned).
pub const PCI_MMIO64_SIZE: u64 = 0x40_0000_0000;

// ---- port I/O ----

pub const COM1_PORT: u16 = 0x3f8;
pub const COM2_PORT: u16 = 0x2f8;
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_CMD_PORT: u16 = 0x64;
pub const CMOS_PORT: u16 = 0x70;
/// isa-debug-exit compatible test-exit port: writing v ends the VMM with
/// status (v << 1) | 1, exactly like QEMU's device, so one test guest gives
/// the same status under both.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// ACPI PM1a event block (status+enable, 4 bytes) and control block (2 bytes).
pub const PM1A_EVT_PORT: u16 = 0x600;
pub const PM1A_CNT_PORT: u16 = 0x604;
/// ACPI PM timer (4 bytes, 3.579545 MHz).
pub const PM_TMR_PORT: u16 = 0x608;
/// PCI configuration mechanism #1.
pub const PCI_CONFIG_PORT: u16 = 0xcf8;

// ---- interrupts (IOAPIC GSIs) ----

pub const COM1_GSI: u32 = 4;
pub const COM2_GSI: u32 = 3;
pub const KEYBOARD_GSI: u32 = 1;
pub const RTC_GSI: u32 = 8;
pub const SCI_GSI: u32 = 9;
/// GSIs handed to virtio-mmio devices, in order.
pub const VIRTIO_MMIO_GSIS: &[u32] = &[5, 6, 7, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23];
/// Number of IOAPIC pins; MSI routes use GSIs from here up.
pub const IOAPIC_PINS: u32 = 24;

/// ACPI sleep type written to PM1a_CNT.SLP_TYP for S5 (soft off); the DSDT's
/// `_S5` package announces this value.
pub const S5_SLP_TYP: u16 = 5;
