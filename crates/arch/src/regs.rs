//! Initial vCPU state for the two entry protocols we support: PVH (32-bit
//! protected mode, paging off, %ebx = start info) and the Linux 64-bit boot
//! protocol (long mode with an identity map, %rsi = zero page). Plus the
//! boot GDT and page tables they need in guest memory.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START};

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write boot {what} to guest memory: {source}")]
    Write { what: &'static str, source: vm_memory::GuestMemoryError },
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EntryMode {
    /// PVH: 32-bit flat protected mode, `ebx` = start info.
    Pvh { entry: u64, start_info: u64 },
    /// Linux 64-bit boot protocol: long mode, `rsi` = zero page.
    Linux64 { entry: u64, zero_page: u64 },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Boot GDT: 0x08 32-bit code (PVH), 0x10 64-bit code and 0x18 data (the
/// selectors the Linux boot protocol calls __BOOT_CS/__BOOT_DS), 0x20 TSS.
const GDT: [u64; 5] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    (((base as u64) & 0xff00_0000) << (56 - 24))
        | (((flags as u64) & 0x0000_f0ff) << 40)
        | (((limit as u64) & 0x000f_0000) << (48 - 16))
        | (((base as u64) & 0x00ff_ffff) << 16)
        | ((limit as u64) & 0x0000_ffff)
}

/// The hidden part of a segment register, decoded from a GDT entry.
fn segment(index: u16, entry: u64) -> kvm_segment {
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Write the GDT, an empty IDT and (for 64-bit entry) identity page tables
/// covering the first 1 GiB with 2 MiB pages.
pub fn write_boot_tables<M: GuestMemory>(mem: &M, mode: EntryMode) -> Result<(), RegsError> {
    let w = |what| move |source| RegsError::Write { what, source };
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64)).map_err(w("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START)).map_err(w("IDT"))?;
    if matches!(mode, EntryMode::Linux64 { .. }) {
        mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START)).map_err(w("PML4"))?;
        mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START)).map_err(w("PDPTE"))?;
        for i in 0..512u64 {
            // present | writable | page size (2 MiB)
            mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8)).map_err(w("PDE"))?;
        }
    }
    Ok(())
}

/// Special registers for `mode`, starting from the vCPU's current ones.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let (code, data) = match mode {
        EntryMode::Pvh { .. } => (segment(1, GDT[1]), segment(3, GDT[3])),
        EntryMode::Linux64 { .. } => (segment(2, GDT[2]), segment(3, GDT[3])),
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(4, GDT[4]);
    match mode {
        EntryMode::Pvh { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Linux64 { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    sregs
}

/// General registers for `mode`.
pub fn boot_regs(mode: EntryMode) -> kvm_regs {
    let mut r = kvm_regs { rflags: 0x2, rsp: BOOT_STACK_POINTER, rbp: BOOT_STACK_POINTER, ..Default::default() };
    match mode {
        EntryMode::Pvh { entry, start_info } => {
            r.rip = entry;
            r.rbx = start_info;
        }
        EntryMode::Linux64 { entry, zero_page } => {
            r.rip = entry;
            r.rsi = zero_page;
        }
    }
    r
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

/// MSRs set at boot on every vCPU: syscall MSRs cleared, fast strings on,
/// write-back default memory type.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (0x174, 0),             // IA32_SYSENTER_CS
        (0x175, 0),             // IA32_SYSENTER_ESP
        (0x176, 0),             // IA32_SYSENTER_EIP
        (0xc000_0081, 0),       // STAR
        (0xc000_0082, 0),       // LSTAR
        (0xc000_0083, 0),       // CSTAR
        (0xc000_0102, 0),       // KERNEL_GS_BASE
        (0xc000_0084, 0),       // SYSCALL_MASK
        (0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
        (0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
    ]
}

/// Program LINT0 as ExtINT and LINT1 as NMI in a LAPIC register page, as a
/// BIOS would (Linux relies on it for the legacy PIC and NMI watchdog paths).
pub fn set_lapic_lints(regs: &mut [std::os::raw::c_char; 1024]) {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_NMI: u32 = 0x4;
    const APIC_MODE_EXTINT: u32 = 0x7;
    let set = |regs: &mut [std::os::raw::c_char; 1024], off: usize, mode: u32| {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = regs[off + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            regs[off + i] = *x as std::os::raw::c_char;
        }
    };
    set(regs, APIC_LVT0, APIC_MODE_EXTINT);
    set(regs, APIC_LVT1, APIC_MODE_NMI);
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let cs64 = segment(2, GDT[2]);
        assert_eq!((cs64.l, cs64.db, cs64.present, cs64.limit, cs64.selector), (1, 0, 1, 0xffff_ffff, 0x10));
        let cs32 = segment(1, GDT[1]);
        assert_eq!((cs32.l, cs32.db, cs32.type_), (0, 1, 0xb));
        let ds = segment(3, GDT[3]);
        assert_eq!((ds.type_, ds.s, ds.base), (0x3, 1, 0));
    }

    #[test]
    fn long_mode_entry_has_paging_and_identity_map() {
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mode = EntryMode::Linux64 { entry: 0x100_0000, zero_page: 0x7000 };
        write_boot_tables(&mem, mode).unwrap();
        let s = boot_sregs(kvm_sregs::default(), mode);
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        let pde5: u64 = mem.read_obj(GuestAddress(PDE_START + 5 * 8)).unwrap();
        assert_eq!(pde5, (5 << 21) | 0x83);
        let r = boot_regs(mode);
        assert_eq!((r.rip, r.rsi), (0x100_0000, 0x7000));
    }

    #[test]
    fn pvh_entry_is_flat_32_bit_without_paging() {
        let mode = EntryMode::Pvh { entry: 0x10_0040, start_info: 0x6000 };
        let s = boot_sregs(kvm_sregs::default(), mode);
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cs.db, 1);
        assert_eq!(boot_regs(mode).rbx, 0x6000);
    }

    #[test]
    fn lints_are_programmed() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set_lapic_lints(&mut regs);
        assert_eq!(regs[0x351] as u8 & 0x7, 0x7);
        assert_eq!(regs[0x361] as u8 & 0x7, 0x4);
    }
}
