//! A function's configuration space: the type 0 header, BARs with size
//! probing, and the capability list. Writes go through a per-bit writable
//! mask so a guest can only change what real hardware would let it change.

/// Size of a PCIe function's configuration space (ECAM gives 4 KiB).
pub const CONFIG_SIZE: usize = 4096;
const REGS: usize = CONFIG_SIZE / 4;

pub const COMMAND_REG: usize = 1;
pub const COMMAND_IO: u32 = 1;
pub const COMMAND_MEMORY: u32 = 2;
pub const COMMAND_BUS_MASTER: u32 = 4;
const STATUS_CAP_LIST: u32 = 1 << 20;
const BAR0_REG: usize = 4;
const CAP_PTR_REG: usize = 13;
const INTERRUPT_REG: usize = 15;
pub const NUM_BARS: usize = 6;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR {0} does not exist or is taken")]
    BarTaken(usize),
    #[error("BAR size {0:#x} is not a power of two of at least 16 bytes")]
    BarSize(u64),
    #[error("no room left in configuration space for a {0}-byte capability")]
    NoCapRoom(usize),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bar {
    pub size: u64,
    pub is_64bit: bool,
    pub used: bool,
}

/// Vendor/device identity of a function.
#[derive(Clone, Copy, Debug)]
pub struct PciIdentity {
    pub vendor: u16,
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

pub struct PciConfig {
    regs: Box<[u32; REGS]>,
    wmask: Box<[u32; REGS]>,
    bars: [Bar; NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
}

impl PciConfig {
    pub fn new(id: PciIdentity) -> Self {
        let mut c = Self {
            regs: Box::new([0; REGS]),
            wmask: Box::new([0; REGS]),
            bars: [Bar::default(); NUM_BARS],
            last_cap: None,
            next_cap: 0x40,
        };
        c.regs[0] = id.vendor as u32 | (id.device as u32) << 16;
        c.regs[2] =
            id.revision as u32 | (id.prog_if as u32) << 8 | (id.subclass as u32) << 16 | (id.class as u32) << 24;
        c.regs[11] = id.subsystem_vendor as u32 | (id.subsystem as u32) << 16;
        c.wmask[COMMAND_REG] = COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | 1 << 10;
        // Interrupt line is scratch for the OS; pin 0 = no INTx.
        c.wmask[INTERRUPT_REG] = 0xff;
        c
    }

    pub fn read_reg(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0xffff_ffff)
    }

    /// Write `data` at byte `offset`, honouring the writable mask.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let off = offset + i;
            let reg = off / 4;
            if reg >= REGS {
                return;
            }
            let shift = (off % 4) * 8;
            let mask = (self.wmask[reg] >> shift) & 0xff;
            let old = (self.regs[reg] >> shift) & 0xff;
            let new = (old & !mask) | (b as u32 & mask);
            self.regs[reg] = (self.regs[reg] & !(0xff << shift)) | new << shift;
        }
    }

    /// Set bytes regardless of the mask (device-side updates).
    pub fn set_byte(&mut self, off: usize, v: u8) {
        let shift = (off % 4) * 8;
        self.regs[off / 4] = (self.regs[off / 4] & !(0xff << shift)) | (v as u32) << shift;
    }

    pub fn set_wmask_bytes(&mut self, off: usize, len: usize, mask: u8) {
        for o in off..off + len {
            let shift = (o % 4) * 8;
            self.wmask[o / 4] = (self.wmask[o / 4] & !(0xff << shift)) | (mask as u32) << shift;
        }
    }

    pub fn read_u16(&self, off: usize) -> u16 {
        (self.regs[off / 4] >> ((off % 4) * 8)) as u16
    }

    pub fn command(&self) -> u32 {
        self.regs[COMMAND_REG] & 0xffff
    }

    /// Declare a memory BAR (`is_64bit` takes `bar` and `bar + 1`).
    pub fn add_mem_bar(&mut self, bar: usize, size: u64, is_64bit: bool) -> Result<(), ConfigError> {
        if bar >= NUM_BARS || (is_64bit && bar + 1 >= NUM_BARS) || self.bars[bar].used {
            return Err(ConfigError::BarTaken(bar));
        }
        if !size.is_power_of_two() || size < 16 {
            return Err(ConfigError::BarSize(size));
        }
        self.bars[bar] = Bar { size, is_64bit, used: true };
        let mask = !(size - 1);
        self.regs[BAR0_REG + bar] = if is_64bit { 0b100 } else { 0 };
        self.wmask[BAR0_REG + bar] = mask as u32 & !0xf;
        if is_64bit {
            self.bars[bar + 1].used = true;
            self.wmask[BAR0_REG + bar + 1] = (mask >> 32) as u32;
        }
        Ok(())
    }

    pub fn bar(&self, bar: usize) -> Option<Bar> {
        self.bars.get(bar).copied().filter(|b| b.used && b.size > 0)
    }

    /// The address programmed in `bar` (both halves for 64-bit BARs).
    pub fn bar_addr(&self, bar: usize) -> u64 {
        let Some(b) = self.bar(bar) else { return 0 };
        let lo = (self.regs[BAR0_REG + bar] & !0xf) as u64;
        if b.is_64bit { lo | (self.regs[BAR0_REG + bar + 1] as u64) << 32 } else { lo }
    }

    pub fn set_bar_addr(&mut self, bar: usize, addr: u64) {
        let flags = self.regs[BAR0_REG + bar] & 0xf;
        self.regs[BAR0_REG + bar] = (addr as u32 & !0xf) | flags;
        if self.bars[bar].is_64bit {
            self.regs[BAR0_REG + bar + 1] = (addr >> 32) as u32;
        }
    }

    /// Append a capability (`body` starts with the id byte; the next
    /// pointer byte is filled in). Returns its offset.
    pub fn add_capability(&mut self, body: &[u8]) -> Result<usize, ConfigError> {
        let len = body.len().max(2);
        let off = self.next_cap;
        if off + len > 0x100 {
            return Err(ConfigError::NoCapRoom(len));
        }
        for (i, &b) in body.iter().enumerate() {
            self.set_byte(off + i, b);
        }
        self.set_byte(off + 1, 0);
        match self.last_cap {
            Some(prev) => self.set_byte(prev + 1, off as u8),
            None => self.set_byte(CAP_PTR_REG * 4, off as u8),
        }
        self.regs[COMMAND_REG] |= STATUS_CAP_LIST;
        self.last_cap = Some(off);
        self.next_cap = (off + len + 3) & !3;
        Ok(off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> PciIdentity {
        PciIdentity {
            vendor: 0x1af4,
            device: 0x1042,
            class: 1,
            subclass: 0,
            prog_if: 0,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        }
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = PciConfig::new(id());
        c.add_mem_bar(0, 0x4000, true).unwrap();
        c.write(0x10, &0xffff_ffffu32.to_le_bytes());
        c.write(0x14, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(c.read_reg(4), 0xffff_c004);
        assert_eq!(c.read_reg(5), 0xffff_ffff);
        c.write(0x10, &0xc000_0000u32.to_le_bytes());
        c.write(0x14, &0u32.to_le_bytes());
        assert_eq!(c.bar_addr(0), 0xc000_0000);
        // Read-only identity.
        c.write(0, &[0, 0, 0, 0]);
        assert_eq!(c.read_reg(0), 0x1042_1af4);
        assert_eq!(c.add_mem_bar(1, 0x1000, false), Err(ConfigError::BarTaken(1)));
        assert_eq!(c.add_mem_bar(2, 0x1001, false), Err(ConfigError::BarSize(0x1001)));
    }

    #[test]
    fn capabilities_form_a_list() {
        let mut c = PciConfig::new(id());
        let a = c.add_capability(&[0x11, 0, 1, 2]).unwrap();
        let b = c.add_capability(&[0x09, 0, 16, 1, 0, 0, 0, 0]).unwrap();
        assert_eq!(c.read_reg(13) & 0xff, a as u32);
        assert_eq!((c.read_reg(a / 4) >> 8) & 0xff, b as u32);
        assert_eq!((c.read_reg(b / 4) >> 8) & 0xff, 0);
        assert_ne!(c.read_reg(1) & (1 << 20), 0);
    }
}
