//! PCI bus 0 through ECAM (memory-mapped configuration space).

use crate::cpu::read32;

pub const DEFAULT_ECAM: u64 = 0xe000_0000;

#[derive(Clone, Copy)]
pub struct Function {
    pub ecam: u64,
    pub dev: u8,
    pub func: u8,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
}

impl Function {
    pub fn config(&self) -> u64 {
        self.ecam + ((self.dev as u64) << 15) + ((self.func as u64) << 12)
    }
    pub fn read(&self, off: u64) -> u32 {
        read32(self.config() + off)
    }
}

/// ECAM base from the MCFG table (segment 0), else the Tern default.
pub fn ecam_base(acpi: Option<&crate::acpi::Acpi>) -> u64 {
    acpi.and_then(|a| a.find(b"MCFG"))
        .map(|mcfg| crate::cpu::read64u(mcfg + 44))
        .filter(|&b| b != 0 && b < crate::cpu::MAPPED_LIMIT)
        .unwrap_or(DEFAULT_ECAM)
}

/// Every function present on bus 0.
pub fn scan(ecam: u64, mut found: impl FnMut(Function)) {
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let mut f = Function { ecam, dev, func, vendor: 0, device: 0, class: 0 };
            let id = f.read(0);
            let vendor = id as u16;
            if vendor == 0xffff || vendor == 0 {
                if func == 0 {
                    break;
                }
                continue;
            }
            f.vendor = vendor;
            f.device = (id >> 16) as u16;
            f.class = f.read(8) >> 8;
            found(f);
            let header_type = (f.read(0xc) >> 16) as u8;
            if func == 0 && header_type & 0x80 == 0 {
                break;
            }
        }
    }
}
