//! Just enough ACPI: find the RSDP, list tables, count CPUs in the MADT,
//! and use the FADT for soft-off and reset.

use crate::cpu::{self, MAPPED_LIMIT, outb, outl, outw, phys_slice, read8, read16, read32u, read64u};

const MAX_TABLES: usize = 32;

pub struct Acpi {
    pub rsdp: u64,
    tables: [([u8; 4], u64); MAX_TABLES],
    count: usize,
}

fn checksum_ok(addr: u64, len: usize) -> bool {
    phys_slice(addr, len).iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
}

fn valid_addr(addr: u64, len: u64) -> bool {
    addr != 0 && addr.checked_add(len).is_some_and(|end| end <= MAPPED_LIMIT)
}

fn find_rsdp(hint: u64) -> Option<u64> {
    let is_rsdp = |a: u64| phys_slice(a, 8) == b"RSD PTR " && checksum_ok(a, 20);
    if valid_addr(hint, 36) && is_rsdp(hint) {
        return Some(hint);
    }
    // The EBDA's first KiB, then the BIOS area, 16-byte aligned.
    let ebda = (read16(0x40e) as u64) << 4;
    if (0x80000..0xa0000).contains(&ebda)
        && let Some(a) = (ebda..ebda + 1024).step_by(16).find(|&a| is_rsdp(a))
    {
        return Some(a);
    }
    (0xe0000..0x100000u64).step_by(16).find(|&a| is_rsdp(a))
}

impl Acpi {
    pub fn discover(hint: u64) -> Option<Acpi> {
        let rsdp = find_rsdp(hint)?;
        let mut acpi = Acpi { rsdp, tables: [([0; 4], 0); MAX_TABLES], count: 0 };
        let revision = read8(rsdp + 15);
        let xsdt = if revision >= 2 { read64u(rsdp + 24) } else { 0 };
        let (root, entry_size) = if xsdt != 0 { (xsdt, 8) } else { (read32u(rsdp + 16) as u64, 4) };
        if !valid_addr(root, 36) {
            return Some(acpi);
        }
        let len = read32u(root + 4) as u64;
        if !valid_addr(root, len) || len < 36 {
            return Some(acpi);
        }
        let mut entry = root + 36;
        while entry + entry_size <= root + len {
            let table = if entry_size == 8 { read64u(entry) } else { read32u(entry) as u64 };
            acpi.add(table);
            entry += entry_size;
        }
        // The DSDT is reached through the FADT, not the XSDT.
        if let Some(fadt) = acpi.find(b"FACP") {
            let flen = read32u(fadt + 4) as u64;
            let x_dsdt = if flen >= 148 { read64u(fadt + 140) } else { 0 };
            let dsdt = if x_dsdt != 0 { x_dsdt } else { read32u(fadt + 40) as u64 };
            acpi.add(dsdt);
        }
        Some(acpi)
    }

    fn add(&mut self, table: u64) {
        if self.count < MAX_TABLES && valid_addr(table, 36) {
            let mut sig = [0u8; 4];
            sig.copy_from_slice(phys_slice(table, 4));
            self.tables[self.count] = (sig, table);
            self.count += 1;
        }
    }

    pub fn tables(&self) -> impl Iterator<Item = ([u8; 4], u64)> + '_ {
        self.tables[..self.count].iter().copied()
    }

    pub fn find(&self, sig: &[u8; 4]) -> Option<u64> {
        self.tables().find(|(s, _)| s == sig).map(|(_, a)| a)
    }

    /// Enabled (or online-capable) local APIC / x2APIC ids from the MADT.
    pub fn cpus(&self, ids: &mut [u32]) -> Option<usize> {
        let madt = self.find(b"APIC")?;
        let len = read32u(madt + 4) as u64;
        if !valid_addr(madt, len) {
            return None;
        }
        let mut n = 0;
        let mut at = madt + 44;
        while at + 2 <= madt + len {
            let (kind, elen) = (read8(at), read8(at + 1) as u64);
            if elen < 2 {
                break;
            }
            let entry = match kind {
                0 if elen >= 8 => Some((read8(at + 3) as u32, read32u(at + 4))),
                9 if elen >= 16 => Some((read32u(at + 4), read32u(at + 8))),
                _ => None,
            };
            if let Some((id, flags)) = entry
                && flags & 3 != 0
            {
                if n < ids.len() {
                    ids[n] = id;
                }
                n += 1;
            }
            at += elen;
        }
        Some(n)
    }

    /// SLP_TYP for S5 from the DSDT's `_S5_` package, if it has one.
    fn s5_slp_typ(&self) -> Option<u8> {
        let dsdt = self.find(b"DSDT")?;
        let len = read32u(dsdt + 4) as usize;
        if !valid_addr(dsdt, len as u64) {
            return None;
        }
        let aml = phys_slice(dsdt, len);
        let at = aml.windows(4).position(|w| w == b"_S5_")?;
        let rest = aml.get(at + 4..)?;
        if *rest.first()? != 0x12 {
            return None; // not a PackageOp
        }
        let pkglen_bytes = (rest.get(1)? >> 6) as usize;
        let first = rest.get(1 + 1 + pkglen_bytes + 1..)?; // PkgLength, NumElements
        match *first.first()? {
            0x0a => first.get(1).copied(), // BytePrefix
            0x00 => Some(0),               // ZeroOp
            0x01 => Some(1),               // OneOp
            v if v < 0x10 => Some(v),
            _ => None,
        }
    }

    fn fadt(&self) -> Option<(u64, u64)> {
        let fadt = self.find(b"FACP")?;
        let len = read32u(fadt + 4) as u64;
        valid_addr(fadt, len).then_some((fadt, len))
    }

    /// FADT flag HW_REDUCED_ACPI (no PM1 blocks; QEMU microvm).
    pub fn hw_reduced(&self) -> bool {
        self.fadt().is_some_and(|(fadt, len)| len >= 116 && read32u(fadt + 112) & (1 << 20) != 0)
    }

    /// The PM1a event block port (PM1_STS, then PM1_EN), when the FADT has one.
    pub fn pm1a_evt(&self) -> Option<u16> {
        let (fadt, len) = self.fadt()?;
        let port = if len >= 60 { read32u(fadt + 56) as u16 } else { 0 };
        (port != 0).then_some(port)
    }

    /// ACPI soft-off (S5). Returns only if the VM is still running.
    pub fn power_off(&self) {
        let Some((fadt, len)) = self.fadt() else { return };
        let slp_typ = self.s5_slp_typ().unwrap_or(5) as u32;
        let flags = if len >= 116 { read32u(fadt + 112) } else { 0 };
        let hw_reduced = flags & (1 << 20) != 0;
        let pm1a = if len >= 68 { read32u(fadt + 64) as u16 } else { 0 };
        if (hw_reduced || pm1a == 0) && len >= 256 {
            gas_write(fadt + 244, (slp_typ << 2 | 1 << 5) as u64);
        } else if pm1a != 0 {
            outw(pm1a, (slp_typ << 10 | 1 << 13) as u16);
        } else if len >= 184 {
            gas_write(fadt + 172, (slp_typ << 10 | 1 << 13) as u64);
        }
    }

    /// FADT reset register, when the FADT says it is supported.
    pub fn reset(&self) {
        let Some((fadt, len)) = self.fadt() else { return };
        if len >= 129 && read32u(fadt + 112) & (1 << 10) != 0 {
            gas_write(fadt + 116, read8(fadt + 128) as u64);
        }
    }
}

/// Write through an ACPI Generic Address Structure (memory or I/O space).
fn gas_write(gas: u64, value: u64) {
    let space = read8(gas);
    let width = read8(gas + 1);
    let addr = read64u(gas + 4);
    if addr == 0 {
        return;
    }
    match (space, width) {
        (0, 8) if valid_addr(addr, 1) => {
            // SAFETY: the FADT names this MMIO register; identity mapped.
            unsafe { (addr as *mut u8).write_volatile(value as u8) }
        }
        (0, 16) if valid_addr(addr, 2) => {
            // SAFETY: as above.
            unsafe { (addr as *mut u16).write_volatile(value as u16) }
        }
        (0, _) if valid_addr(addr, 4) => cpu::write32(addr, value as u32),
        (1, 8) => outb(addr as u16, value as u8),
        (1, 16) => outw(addr as u16, value as u16),
        (1, _) => outl(addr as u16, value as u32),
        _ => {}
    }
}
