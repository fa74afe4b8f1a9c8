//! ACPI tables (RSDP, XSDT, FADT, FACS, MADT, MCFG, DSDT) built with the
//! `acpi_tables` crate: enough for Linux to find the CPUs, the IOAPIC, the
//! PCI host bridge, the PM timer, the fixed power button and S5 soft-off.

use acpi_tables::aml;
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use zerocopy::{Immutable, IntoBytes};

use crate::layout::*;

const OEM_ID: [u8; 6] = *b"TERN  ";
const OEM_TABLE: [u8; 8] = *b"TERNVM  ";

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables ({0} bytes) do not fit below 1 MiB")]
    TooLarge(usize),
    #[error("cannot write ACPI table {what} to guest memory: {source}")]
    Write { what: &'static str, source: vm_memory::GuestMemoryError },
}

/// What the tables describe.
#[derive(Debug, Clone, Copy)]
pub struct AcpiConfig {
    pub vcpus: u32,
    /// Describe a PCI host bridge (MCFG + PNP0A08 in the DSDT).
    pub pci: bool,
    /// End of guest RAM; the 64-bit PCI window starts above it.
    pub ram_end: u64,
}

/// MADT interrupt source override (type 2), which the crate lacks.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    kind: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut madt = MADT::new(OEM_ID, OEM_TABLE, 1, LocalInterruptController::Address(APIC_START as u32));
    for id in 0..cfg.vcpus {
        madt.add_structure(ProcessorLocalApic::new(id as u8, id as u8, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_START as u32, 0));
    // SCI: level-triggered, active-high (flags: polarity 01, trigger 11),
    // the same as QEMU; the PIT's IRQ0 arrives on pin 2.
    madt.add_structure(InterruptSourceOverride { kind: 2, length: 10, bus: 0, source: 0, gsi: 2, flags: 0 });
    madt.add_structure(InterruptSourceOverride {
        kind: 2,
        length: 10,
        bus: 0,
        source: SCI_GSI as u8,
        gsi: SCI_GSI,
        flags: 0x000d,
    });
    let mut v = Vec::new();
    madt.to_aml_bytes(&mut v);
    v
}

fn fadt(dsdt: u64, facs: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE, 1).dsdt_64(dsdt).firmware_ctrl_64(facs);
    b.sci_int = (SCI_GSI as u16).into();
    b.pm1a_evt_blk = u32::from(PM1A_EVT_PORT).into();
    b.pm1a_cnt_blk = u32::from(PM1A_CNT_PORT).into();
    b.pm_tmr_blk = u32::from(PM_TMR_PORT).into();
    b.pm1_evt_len = 4;
    b.pm1_cnt_len = 2;
    b.pm_tmr_len = 4;
    // Legacy devices and an i8042 are present.
    b.iapc_boot_arch = 0x3u16.into();
    // Fixed power button (PwrButton bit clear), no sleep button, 32-bit PM timer.
    let b = b.flag(Flags::Wbinvd).flag(Flags::ProcC1).flag(Flags::SlpButton).flag(Flags::TmrValExt);
    let mut v = Vec::new();
    b.finalize().to_aml_bytes(&mut v);
    v
}

fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut body: Vec<u8> = Vec::new();
    // \_S5: SLP_TYPa, SLP_TYPb, reserved, reserved.
    let s5 = S5_SLP_TYP as u8;
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&s5, &s5, &0u8, &0u8])).to_aml_bytes(&mut body);
    if cfg.pci {
        let mmio64_start = cfg.ram_end.next_multiple_of(1 << 30).max(RAM_64BIT_START);
        let bus = aml::AddressSpace::new_bus_number(0u16, (PCI_ECAM_BUSES - 1) as u16);
        let cfg_io = aml::IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, 8);
        let io_lo = aml::AddressSpace::new_io(0u16, 0x0cf7, None);
        let io_hi = aml::AddressSpace::new_io(0x0d00u16, 0xffff, None);
        let mmio32 = aml::AddressSpace::new_memory(
            aml::AddressSpaceCacheable::NotCacheable,
            true,
            PCI_MMIO32_START as u32,
            (PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32,
            None,
        );
        let mmio64 = aml::AddressSpace::new_memory(
            aml::AddressSpaceCacheable::NotCacheable,
            true,
            mmio64_start,
            mmio64_start + PCI_MMIO64_SIZE - 1,
            None,
        );
        let crs = aml::ResourceTemplate::new(vec![&bus, &cfg_io, &io_lo, &io_hi, &mmio32, &mmio64]);
        aml::Device::new(
            "_SB_.PCI0".into(),
            vec![
                &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
                &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
                &aml::Name::new("_ADR".into(), &0u8),
                &aml::Name::new("_SEG".into(), &0u8),
                &aml::Name::new("_UID".into(), &0u8),
                &aml::Name::new("_BBN".into(), &0u8),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut body);
    }
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    for b in body {
        sdt.append(b);
    }
    sdt.as_slice().to_vec()
}

fn mcfg() -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, OEM_TABLE, 1);
    m.add_ecam(PCI_ECAM_START, 0, 0, (PCI_ECAM_BUSES - 1) as u8);
    let mut v = Vec::new();
    m.to_aml_bytes(&mut v);
    v
}

/// Build all tables and write them to guest memory. Returns the RSDP address.
pub fn write_acpi_tables<M: GuestMemory>(mem: &M, cfg: &AcpiConfig) -> Result<u64, AcpiError> {
    let mut next = ACPI_TABLES_START;
    let mut place = |what: &'static str, bytes: &[u8]| -> Result<u64, AcpiError> {
        let at = next;
        next = (next + bytes.len() as u64).next_multiple_of(64);
        if next > HIMEM_START {
            return Err(AcpiError::TooLarge((next - ACPI_TABLES_START) as usize));
        }
        mem.write_slice(bytes, GuestAddress(at)).map_err(|source| AcpiError::Write { what, source })?;
        Ok(at)
    };
    let dsdt_addr = place("DSDT", &dsdt(cfg))?;
    let mut facs = Vec::new();
    FACS::new().to_aml_bytes(&mut facs);
    let facs_addr = place("FACS", &facs)?;
    let fadt_addr = place("FADT", &fadt(dsdt_addr, facs_addr))?;
    let madt_addr = place("MADT", &madt(cfg))?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if cfg.pci {
        xsdt.add_entry(place("MCFG", &mcfg())?);
    }
    let mut x = Vec::new();
    xsdt.to_aml_bytes(&mut x);
    let xsdt_addr = place("XSDT", &x)?;
    let mut r = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut r);
    mem.write_slice(&r, GuestAddress(RSDP_START)).map_err(|source| AcpiError::Write { what: "RSDP", source })?;
    Ok(RSDP_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn tables_are_linked_and_checksummed() {
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let rsdp = write_acpi_tables(&mem, &AcpiConfig { vcpus: 4, pci: true, ram_end: 16 << 20 }).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp)).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert!(checksum_ok(&r[..20]) && checksum_ok(&r));
        let xsdt = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let read_table = |addr: u64| {
            let mut h = [0u8; 8];
            mem.read_slice(&mut h, GuestAddress(addr)).unwrap();
            let len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
            let mut t = vec![0u8; len];
            mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
            t
        };
        let x = read_table(xsdt);
        assert_eq!(&x[..4], b"XSDT");
        assert!(checksum_ok(&x));
        let sigs: Vec<[u8; 4]> = x[36..]
            .chunks(8)
            .map(|c| {
                let t = read_table(u64::from_le_bytes(c.try_into().unwrap()));
                assert!(checksum_ok(&t), "bad checksum in {:?}", &t[..4]);
                t[..4].try_into().unwrap()
            })
            .collect();
        assert_eq!(sigs, vec![*b"FACP", *b"APIC", *b"MCFG"]);
        // MADT: 4 local APICs (type 0, 8 bytes each) after the 44-byte header.
        let madt = read_table(u64::from_le_bytes(x[44..52].try_into().unwrap()));
        assert_eq!(madt.iter().skip(44).step_by(8).take(4).filter(|&&t| t == 0).count(), 4);
    }

    #[test]
    fn dsdt_declares_s5_and_pci_root() {
        let d = dsdt(&AcpiConfig { vcpus: 1, pci: true, ram_end: 1 << 30 });
        assert!(checksum_ok(&d));
        assert!(d.windows(4).any(|w| w == b"_S5_"));
        assert!(d.windows(4).any(|w| w == b"PCI0"));
        let no_pci = dsdt(&AcpiConfig { vcpus: 1, pci: false, ram_end: 1 << 30 });
        assert!(!no_pci.windows(4).any(|w| w == b"PCI0"));
    }
}
