//! The Intel MultiProcessor table (MP spec 1.4): a floating pointer and a
//! configuration table at the EBDA listing the CPUs, the ISA bus, the IOAPIC
//! and the interrupt wiring. Linux prefers ACPI's MADT but falls back to
//! this with `acpi=off`, and older guests need it.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{APIC_START, EBDA_START, IOAPIC_PINS, IOAPIC_START};

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("too many vCPUs for the MP table: {0} (at most 254)")]
    TooManyCpus(u32),
    #[error("cannot write the MP table to guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)))
}

/// Build the floating pointer and configuration table as bytes, for a
/// table placed at `base`.
pub fn build_mptable(base: u64, vcpus: u32) -> Result<Vec<u8>, MpTableError> {
    if vcpus > 254 {
        return Err(MpTableError::TooManyCpus(vcpus));
    }
    let ioapic_id = vcpus as u8;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[0, id as u8, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU + APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS as u8 {
        let kind = if irq == 0 { INT_TYPE_EXTINT } else { INT_TYPE_INT };
        entries.extend_from_slice(&[3, kind, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[4, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = base + 16;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"TERN    ");
    table.extend_from_slice(b"TERNVM      ");
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Write the MP table at the EBDA.
pub fn write_mptable<M: GuestMemory>(mem: &M, vcpus: u32) -> Result<(), MpTableError> {
    let bytes = build_mptable(EBDA_START, vcpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START)).map_err(MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floating_pointer_and_table_checksum_and_count() {
        let b = build_mptable(EBDA_START, 4).unwrap();
        assert_eq!(&b[..4], b"_MP_");
        assert_eq!(b[..16].iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        let ptr = u32::from_le_bytes(b[4..8].try_into().unwrap()) as u64;
        assert_eq!(ptr, EBDA_START + 16);
        let t = &b[16..];
        assert_eq!(&t[..4], b"PCMP");
        let len = u16::from_le_bytes([t[4], t[5]]) as usize;
        assert_eq!(len, t.len());
        assert_eq!(t.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        let count = u16::from_le_bytes([t[34], t[35]]);
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
        // The first processor entry is the bootstrap processor.
        assert_eq!(t[44..48], [0, 0, APIC_VERSION, CPU_ENABLED | CPU_BOOTSTRAP]);
        assert!(build_mptable(EBDA_START, 255).is_err());
    }
}
