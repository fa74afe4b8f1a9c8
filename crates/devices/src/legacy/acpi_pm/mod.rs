//! ACPI fixed hardware: the PM1a event block (PM1_STS, PM1_EN), the PM1a
//! control block (PM1_CNT) and the PM timer, in one device spanning
//! [`PM1A_EVT_PORT`]..[`PM_TMR_PORT`]+4 (insert at `PM1A_EVT_PORT` with
//! length [`ACPI_PM_PORT_LEN`]):
//!
//! | offset | port  | register                     |
//! |--------|-------|------------------------------|
//! | 0..2   | 0x600 | PM1_STS (write 1 to clear)   |
//! | 2..4   | 0x602 | PM1_EN                       |
//! | 4..6   | 0x604 | PM1_CNT                      |
//! | 8..12  | 0x608 | PM_TMR, 32-bit (TMR_VAL_EXT) |
//!
//! The hardware is always in ACPI mode (SCI_EN reads 1; the FADT has no
//! SMI_CMD). The SCI (GSI 9) is a level: asserted while any enabled status
//! bit is set, lowered when the guest clears it. Writing SLP_TYP = S5 with
//! SLP_EN posts [`VmEvent::PowerOff`](super::VmEvent::PowerOff). The timer
//! counts at 3.579545 MHz from the host's monotonic clock, 32 bits wide: the
//! FADT must set TMR_VAL_EXT (flags bit 8). Timer overflow (TMR_STS) is not
//! generated; Linux uses the timer as a clocksource only.

use std::sync::Arc;
use std::time::Instant;

use arch::layout::{PM_TMR_PORT, PM1A_CNT_PORT, PM1A_EVT_PORT, S5_SLP_TYP};
use migration::{MigrationError, Pausable, Snapshot, Snapshottable};

use super::VmEvents;
use crate::BusDevice;
use crate::interrupt::SharedLine;

/// Bytes from PM1a_EVT to the end of PM_TMR.
pub const ACPI_PM_PORT_LEN: u64 = (PM_TMR_PORT - PM1A_EVT_PORT) as u64 + 4;
/// PM timer frequency, Hz.
pub const PM_TIMER_HZ: u64 = 3_579_545;

const STS_OFFSET: usize = 0;
const EN_OFFSET: usize = 2;
const CNT_OFFSET: usize = (PM1A_CNT_PORT - PM1A_EVT_PORT) as usize;
const TMR_OFFSET: usize = (PM_TMR_PORT - PM1A_EVT_PORT) as usize;

// PM1_STS / PM1_EN bits.
pub const TMR_STS: u16 = 1 << 0;
pub const GBL_STS: u16 = 1 << 5;
pub const PWRBTN_STS: u16 = 1 << 8;
pub const SLPBTN_STS: u16 = 1 << 9;
pub const RTC_STS: u16 = 1 << 10;
pub const WAK_STS: u16 = 1 << 15;
/// Status bits with an enable bit in the same position (those raise SCI).
const EVENT_BITS: u16 = TMR_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS;
/// PM1_EN's power-button enable sits at the same bit as its status.
pub const PWRBTN_EN: u16 = PWRBTN_STS;
const STS_BITS: u16 = EVENT_BITS | WAK_STS | (1 << 4); // + BM_STS

// PM1_CNT bits.
pub const SCI_EN: u16 = 1 << 0;
const GBL_RLS: u16 = 1 << 2;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0x7 << SLP_TYP_SHIFT;
pub const SLP_EN: u16 = 1 << 13;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AcpiPmState {
    pub pm1_sts: u16,
    pub pm1_en: u16,
    pub pm1_cnt: u16,
    /// PM timer value when the state was taken; the timer resumes from it.
    pub timer: u32,
    pub sci_asserted: bool,
}

pub struct AcpiPm {
    sts: u16,
    en: u16,
    cnt: u16,
    /// Timer = ticks since `timer_base` + `timer_offset`, or `frozen` while paused.
    timer_base: Instant,
    timer_offset: u32,
    frozen: Option<u32>,
    sci_asserted: bool,
    sci: SharedLine,
    events: Arc<VmEvents>,
    power_button_presses: u64,
}

impl AcpiPm {
    /// `sci` is the SCI line (GSI 9, level); `events` receives the power-off.
    pub fn new(sci: SharedLine, events: Arc<VmEvents>) -> Self {
        Self {
            sts: 0,
            en: 0,
            cnt: SCI_EN,
            timer_base: Instant::now(),
            timer_offset: 0,
            frozen: None,
            sci_asserted: false,
            sci,
            events,
            power_button_presses: 0,
        }
    }

    /// Press the power button: set PWRBTN_STS and raise the SCI if the guest
    /// enabled PWRBTN_EN. Returns whether the guest is listening (an OS with
    /// no ACPI driver, or one still booting, ignores the button).
    pub fn press_power_button(&mut self) -> bool {
        self.power_button_presses += 1;
        self.sts |= PWRBTN_STS;
        self.update_sci();
        self.en & PWRBTN_EN != 0
    }

    pub fn power_button_presses(&self) -> u64 {
        self.power_button_presses
    }

    /// Current PM timer value (32 bits, wraps).
    pub fn timer(&self) -> u32 {
        if let Some(t) = self.frozen {
            return t;
        }
        let ns = self.timer_base.elapsed().as_nanos();
        let ticks = ns * u128::from(PM_TIMER_HZ) / 1_000_000_000;
        (ticks as u32).wrapping_add(self.timer_offset)
    }

    fn set_timer(&mut self, value: u32) {
        self.timer_base = Instant::now();
        self.timer_offset = value;
    }

    pub fn state(&self) -> AcpiPmState {
        AcpiPmState {
            pm1_sts: self.sts,
            pm1_en: self.en,
            pm1_cnt: self.cnt,
            timer: self.timer(),
            sci_asserted: self.sci_asserted,
        }
    }

    fn update_sci(&mut self) {
        let level = self.sts & self.en & EVENT_BITS != 0;
        if level == self.sci_asserted {
            return;
        }
        self.sci_asserted = level;
        let r = if level { self.sci.trigger() } else { self.sci.deassert() };
        if let Err(e) = r {
            tracing::warn!("acpi_pm: cannot {} SCI: {e}", if level { "raise" } else { "lower" });
        }
    }

    /// The 12 bytes of the block as the guest would read them now.
    fn register_view(&self) -> [u8; ACPI_PM_PORT_LEN as usize] {
        let mut v = [0u8; ACPI_PM_PORT_LEN as usize];
        v[STS_OFFSET..STS_OFFSET + 2].copy_from_slice(&self.sts.to_le_bytes());
        v[EN_OFFSET..EN_OFFSET + 2].copy_from_slice(&self.en.to_le_bytes());
        v[CNT_OFFSET..CNT_OFFSET + 2].copy_from_slice(&(self.cnt | SCI_EN).to_le_bytes());
        v[TMR_OFFSET..TMR_OFFSET + 4].copy_from_slice(&self.timer().to_le_bytes());
        v
    }

    fn write_cnt(&mut self, value: u16) {
        // SLP_EN and GBL_RLS are write-only strobes; SCI_EN is fixed at 1.
        self.cnt = (value & !(SLP_EN | GBL_RLS)) | SCI_EN;
        if value & SLP_EN != 0 {
            let slp_typ = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
            if slp_typ == S5_SLP_TYP {
                tracing::info!("guest entered ACPI S5 (soft off)");
                self.events.request_poweroff();
            } else {
                tracing::warn!("acpi_pm: guest asked for sleep type {slp_typ}, which this VM does not offer; ignored");
            }
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let view = self.register_view();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| view.get(o).copied())
                .unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Gather the bytes written per 16-bit register, with a byte mask, so
        // 1-, 2- and 4-byte writes at any offset behave alike.
        let mut regs = [(0u16, 0u16); 3]; // (value, mask) for STS, EN, CNT
        for (i, &b) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i as u64).and_then(|o| usize::try_from(o).ok()) else { continue };
            let reg = match o {
                0..=1 => 0,
                2..=3 => 1,
                4..=5 => 2,
                _ => continue, // reserved bytes and the read-only timer
            };
            let shift = (o % 2) * 8;
            regs[reg].0 |= u16::from(b) << shift;
            regs[reg].1 |= 0xff << shift;
        }
        let [(sts, sts_mask), (en, en_mask), (cnt, cnt_mask)] = regs;
        tracing::trace!(
            "acpi_pm write at +{offset:#x}: STS clear {sts:#x}/{sts_mask:#x} EN {en:#x}/{en_mask:#x} CNT {cnt:#x}/{cnt_mask:#x}"
        );
        if sts_mask != 0 {
            self.sts &= !(sts & sts_mask & STS_BITS);
        }
        if en_mask != 0 {
            self.en = (self.en & !en_mask) | (en & en_mask & EVENT_BITS);
        }
        if cnt_mask != 0 {
            self.write_cnt((self.cnt & !cnt_mask) | (cnt & cnt_mask));
        }
        self.update_sci();
    }
}

impl Pausable for AcpiPm {
    /// The timer stops while the VM is paused, like QEMU's (virtual clock).
    fn pause(&mut self) -> Result<(), MigrationError> {
        if self.frozen.is_none() {
            self.frozen = Some(self.timer());
        }
        Ok(())
    }
    fn resume(&mut self) -> Result<(), MigrationError> {
        if let Some(t) = self.frozen.take() {
            self.set_timer(t);
        }
        Ok(())
    }
}

impl Snapshottable for AcpiPm {
    fn id(&self) -> String {
        "acpi_pm".into()
    }
    fn snapshot(&mut self) -> Result<Option<Snapshot>, MigrationError> {
        Snapshot::new(&self.id(), &self.state()).map(Some)
    }
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), MigrationError> {
        let s: AcpiPmState = snapshot.to_state()?;
        self.sts = s.pm1_sts & STS_BITS;
        self.en = s.pm1_en & EVENT_BITS;
        self.cnt = (s.pm1_cnt & !(SLP_EN | GBL_RLS)) | SCI_EN;
        if self.frozen.is_some() {
            self.frozen = Some(s.timer);
        } else {
            self.set_timer(s.timer);
        }
        // Re-drive the line from the restored registers (s.sci_asserted is
        // informative: the level follows from STS & EN).
        if self.sci_asserted && self.sts & self.en & EVENT_BITS == 0 {
            self.update_sci();
        } else {
            self.sci_asserted = false;
            self.update_sci();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
