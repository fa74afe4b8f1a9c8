//! MC146818 CMOS RTC and NVRAM at ports 0x70 (index; bit 7 = NMI disable)
//! and 0x71 (data).
//!
//! The clock is the host's UTC clock plus an offset the guest changes by
//! writing the time registers (while register B's SET bit is held, writes go
//! to a frozen copy committed when SET is cleared, like the chip's update
//! inhibit). Register B selects BCD/binary (DM) and 12/24-hour format;
//! register A's update-in-progress bit is set during the last 244 µs of each
//! host second, so guests that wait for it to clear read a stable time.
//! No interrupts are generated: register C's update-ended flag is derived
//! when read. The NVRAM carries the memory sizes firmware reads (like QEMU):
//! 0x15/0x16 base KiB, 0x17/0x18 and 0x30/0x31 extended KiB, 0x34/0x35
//! 64 KiB units between 16 MiB and 4 GiB, 0x5b-0x5d 64 KiB units above 4 GiB.

mod calendar;

use std::time::{SystemTime, UNIX_EPOCH};

use migration::{MigrationError, Pausable, Snapshot, Snapshottable};

pub use calendar::DateTime;

use crate::BusDevice;

/// Index and data port.
pub const CMOS_PORT_LEN: u64 = 2;
/// Bytes of CMOS RAM addressable through the 7-bit index.
pub const CMOS_SIZE: usize = 128;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

const A_UIP: u8 = 0x80;
const B_SET: u8 = 0x80;
const B_UIE: u8 = 0x10;
const B_DM_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_UF: u8 = 0x10;
const D_VRT: u8 = 0x80;
const HOUR_PM: u8 = 0x80;

/// 32.768 kHz time base, 1024 Hz periodic rate: what the BIOS leaves.
const DEFAULT_REG_A: u8 = 0x26;
const DEFAULT_REG_B: u8 = B_24H;
/// The chip sets UIP this long before each update.
const UIP_WINDOW_NS: u32 = 244_000;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CmosState {
    /// All 128 bytes; the clock registers in it are unused (the clock is
    /// `offset_secs` from the host's).
    pub memory: Vec<u8>,
    pub index: u8,
    pub nmi_disabled: bool,
    /// Guest clock minus host clock, seconds.
    pub offset_secs: i64,
    /// The time being set while register B's SET bit is on.
    pub frozen: Option<DateTime>,
    /// Guest second at the last register C read (for the UF flag).
    pub last_c_read: i64,
}

pub struct Cmos {
    memory: [u8; CMOS_SIZE],
    index: u8,
    nmi_disabled: bool,
    offset_secs: i64,
    frozen: Option<DateTime>,
    last_c_read: i64,
}

/// Host UTC time: whole seconds and the nanoseconds into the second.
fn host_now() -> (i64, u32) {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos().max(1))
        }
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    (v >> 4).min(9) * 10 + (v & 0x0f).min(9)
}

impl Cmos {
    /// `mem_below_4g`: bytes of guest RAM below the 32-bit MMIO hole;
    /// `mem_above_4g`: bytes of RAM from 4 GiB up.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        let mut memory = [0u8; CMOS_SIZE];
        memory[REG_A as usize] = DEFAULT_REG_A;
        memory[REG_B as usize] = DEFAULT_REG_B;
        memory[REG_D as usize] = D_VRT;

        let base_kib: u64 = 640;
        memory[0x15] = base_kib as u8;
        memory[0x16] = (base_kib >> 8) as u8;
        let ext_kib = (mem_below_4g.saturating_sub(MIB) / 1024).min(0xffff);
        for reg in [0x17, 0x30] {
            memory[reg] = ext_kib as u8;
            memory[reg + 1] = (ext_kib >> 8) as u8;
        }
        let above_16m = (mem_below_4g.min(4 * GIB).saturating_sub(16 * MIB) / (64 * 1024)).min(0xffff);
        memory[0x34] = above_16m as u8;
        memory[0x35] = (above_16m >> 8) as u8;
        let above_4g = (mem_above_4g / (64 * 1024)).min(0xff_ffff);
        memory[0x5b] = above_4g as u8;
        memory[0x5c] = (above_4g >> 8) as u8;
        memory[0x5d] = (above_4g >> 16) as u8;
        // Standard checksum over 0x10..=0x2d, stored big-endian at 0x2e.
        let sum: u16 = memory[0x10..=0x2d].iter().map(|&b| u16::from(b)).sum();
        memory[0x2e] = (sum >> 8) as u8;
        memory[0x2f] = sum as u8;

        let (now, _) = host_now();
        Self { memory, index: 0, nmi_disabled: false, offset_secs: 0, frozen: None, last_c_read: now }
    }

    /// Whether the guest last wrote the index port with bit 7 set. The VMM
    /// may consult it before injecting an NMI.
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    /// The guest's current RTC time.
    pub fn guest_time(&self) -> DateTime {
        self.frozen.unwrap_or_else(|| DateTime::from_unix(host_now().0 + self.offset_secs))
    }

    pub fn state(&self) -> CmosState {
        CmosState {
            memory: self.memory.to_vec(),
            index: self.index,
            nmi_disabled: self.nmi_disabled,
            offset_secs: self.offset_secs,
            frozen: self.frozen,
            last_c_read: self.last_c_read,
        }
    }

    fn reg_b(&self) -> u8 {
        self.memory[REG_B as usize]
    }

    /// Encode a binary field per register B's data mode.
    fn encode(&self, v: u8) -> u8 {
        if self.reg_b() & B_DM_BINARY != 0 { v } else { to_bcd(v) }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.reg_b() & B_DM_BINARY != 0 { v } else { from_bcd(v) }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.reg_b() & B_24H != 0 {
            return self.encode(hour);
        }
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | if hour >= 12 { HOUR_PM } else { 0 }
    }

    fn decode_hour(&self, raw: u8) -> u8 {
        if self.reg_b() & B_24H != 0 {
            return self.decode(raw).min(23);
        }
        let h12 = self.decode(raw & !HOUR_PM).clamp(1, 12) % 12;
        if raw & HOUR_PM != 0 { h12 + 12 } else { h12 }
    }

    /// Register A when the host clock is `nanos` into its second.
    fn reg_a_at(&self, nanos: u32) -> u8 {
        let updating = self.frozen.is_none() && nanos >= 1_000_000_000 - UIP_WINDOW_NS;
        (self.memory[REG_A as usize] & !A_UIP) | if updating { A_UIP } else { 0 }
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        let t = self.guest_time();
        match reg {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hour(t.hour),
            REG_WEEKDAY => self.encode(t.weekday()),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(t.year.rem_euclid(100) as u8),
            REG_CENTURY => self.encode(t.year.div_euclid(100).clamp(0, 99) as u8),
            REG_A => self.reg_a_at(host_now().1),
            REG_C => {
                // Reading C clears it; report an update-ended since the last read.
                let now = host_now().0 + self.offset_secs;
                let mut c = 0;
                if self.frozen.is_none() && now != self.last_c_read {
                    c |= C_UF;
                    if self.reg_b() & B_UIE != 0 {
                        c |= C_IRQF;
                    }
                }
                self.last_c_read = now;
                c
            }
            REG_D => D_VRT,
            _ => self.memory[reg as usize],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY | REG_MONTH | REG_YEAR | REG_CENTURY => {
                let mut t = self.guest_time();
                match reg {
                    REG_SECONDS => t.second = self.decode(value).min(59),
                    REG_MINUTES => t.minute = self.decode(value).min(59),
                    REG_HOURS => t.hour = self.decode_hour(value),
                    REG_DAY => t.day = self.decode(value).clamp(1, 31),
                    REG_MONTH => t.month = self.decode(value).clamp(1, 12),
                    REG_YEAR => t.year = t.year.div_euclid(100) * 100 + i64::from(self.decode(value).min(99)),
                    _ => t.year = i64::from(self.decode(value).min(99)) * 100 + t.year.rem_euclid(100),
                }
                if self.frozen.is_some() {
                    self.frozen = Some(t);
                } else {
                    self.offset_secs = t.to_unix() - host_now().0;
                }
            }
            // The weekday is derived from the date.
            REG_WEEKDAY => {}
            REG_A => self.memory[REG_A as usize] = value & !A_UIP,
            REG_B => {
                let was_set = self.reg_b() & B_SET != 0;
                self.memory[REG_B as usize] = value;
                match (was_set, value & B_SET != 0) {
                    (false, true) => self.frozen = Some(self.guest_time()),
                    (true, false) => {
                        if let Some(t) = self.frozen.take() {
                            self.offset_secs = t.to_unix() - host_now().0;
                        }
                    }
                    _ => {}
                }
            }
            REG_C | REG_D => {}
            _ => self.memory[reg as usize] = value,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(first) = data.first_mut() else { return };
        *first = match offset {
            // The index register is write-only.
            0 => 0xff,
            1 => self.read_register(self.index),
            _ => 0xff,
        };
        data[1..].fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0 => {
                self.index = value & 0x7f;
                self.nmi_disabled = value & 0x80 != 0;
            }
            1 => self.write_register(self.index, value),
            _ => {}
        }
    }
}

impl Pausable for Cmos {}

impl Snapshottable for Cmos {
    fn id(&self) -> String {
        "cmos".into()
    }
    fn snapshot(&mut self) -> Result<Option<Snapshot>, MigrationError> {
        Snapshot::new(&self.id(), &self.state()).map(Some)
    }
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), MigrationError> {
        let s: CmosState = snapshot.to_state()?;
        let memory: [u8; CMOS_SIZE] =
            s.memory.as_slice().try_into().map_err(|_| {
                MigrationError::Restore(self.id(), format!("{} bytes of CMOS, want 128", s.memory.len()))
            })?;
        self.memory = memory;
        self.index = s.index & 0x7f;
        self.nmi_disabled = s.nmi_disabled;
        self.offset_secs = s.offset_secs;
        self.frozen = s.frozen;
        self.last_c_read = s.last_c_read;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
