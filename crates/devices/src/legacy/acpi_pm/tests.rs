use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::*;
use crate::interrupt::InterruptLine;
use crate::legacy::VmEvent;

/// A level line that remembers whether it is asserted.
#[derive(Default)]
struct LevelLine {
    high: AtomicBool,
    raises: AtomicU64,
}

impl InterruptLine for LevelLine {
    fn trigger(&self) -> io::Result<()> {
        self.high.store(true, Ordering::SeqCst);
        self.raises.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn deassert(&self) -> io::Result<()> {
        self.high.store(false, Ordering::SeqCst);
        Ok(())
    }
    fn gsi(&self) -> u32 {
        arch::layout::SCI_GSI
    }
}

struct Fixture {
    pm: AcpiPm,
    sci: Arc<LevelLine>,
    events: Arc<VmEvents>,
}

fn fixture() -> Fixture {
    let sci = Arc::new(LevelLine::default());
    let events = Arc::new(VmEvents::new().unwrap());
    Fixture { pm: AcpiPm::new(sci.clone(), events.clone()), sci, events }
}

fn port(p: u16) -> u64 {
    u64::from(p - PM1A_EVT_PORT)
}

impl Fixture {
    fn read16(&mut self, p: u16) -> u16 {
        let mut b = [0u8; 2];
        self.pm.read(port(p), &mut b);
        u16::from_le_bytes(b)
    }
    fn write16(&mut self, p: u16, v: u16) {
        self.pm.write(port(p), &v.to_le_bytes());
    }
    fn timer(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.pm.read(port(PM_TMR_PORT), &mut b);
        u32::from_le_bytes(b)
    }
}

#[test]
fn power_button_raises_sci_only_when_enabled_and_clears_on_write_one() {
    let mut f = fixture();
    assert!(!f.pm.press_power_button(), "guest has not enabled PWRBTN_EN");
    assert!(!f.sci.high.load(Ordering::SeqCst));
    assert_eq!(f.read16(PM1A_EVT_PORT) & PWRBTN_STS, PWRBTN_STS);
    // Enabling with the status already set raises the SCI.
    f.write16(PM1A_EVT_PORT + 2, PWRBTN_EN);
    assert!(f.sci.high.load(Ordering::SeqCst));
    // Writing 0 leaves it set; writing 1 clears it and lowers the line.
    f.write16(PM1A_EVT_PORT, 0);
    assert!(f.sci.high.load(Ordering::SeqCst));
    f.write16(PM1A_EVT_PORT, PWRBTN_STS);
    assert_eq!(f.read16(PM1A_EVT_PORT) & PWRBTN_STS, 0);
    assert!(!f.sci.high.load(Ordering::SeqCst));
    assert!(f.pm.press_power_button());
    assert!(f.sci.high.load(Ordering::SeqCst));
    assert_eq!(f.sci.raises.load(Ordering::SeqCst), 2);
    assert_eq!(f.pm.power_button_presses(), 2);
}

#[test]
fn dword_write_covers_status_and_enable() {
    let mut f = fixture();
    f.pm.press_power_button();
    // One 32-bit write at 0x600: clear PWRBTN_STS, enable PWRBTN.
    let v = u32::from(PWRBTN_STS) | (u32::from(PWRBTN_EN) << 16);
    f.pm.write(0, &v.to_le_bytes());
    assert_eq!(f.read16(PM1A_EVT_PORT), 0);
    assert_eq!(f.read16(PM1A_EVT_PORT + 2), PWRBTN_EN);
    assert!(!f.sci.high.load(Ordering::SeqCst));
}

#[test]
fn s5_sleep_powers_off_and_sci_en_reads_one() {
    let mut f = fixture();
    assert_eq!(f.read16(PM1A_CNT_PORT) & SCI_EN, SCI_EN);
    f.write16(PM1A_CNT_PORT, 0);
    assert_eq!(f.read16(PM1A_CNT_PORT) & SCI_EN, SCI_EN, "ACPI mode cannot be left");
    // SLP_TYP alone does nothing; S3 with SLP_EN is refused; S5 with SLP_EN powers off.
    f.write16(PM1A_CNT_PORT, S5_SLP_TYP << 10);
    assert_eq!(f.events.pending(), None);
    f.write16(PM1A_CNT_PORT, (3 << 10) | SLP_EN);
    assert_eq!(f.events.pending(), None);
    f.write16(PM1A_CNT_PORT, (S5_SLP_TYP << 10) | SLP_EN);
    assert_eq!(f.events.take(), Some(VmEvent::PowerOff));
    assert_eq!(f.read16(PM1A_CNT_PORT) & SLP_EN, 0, "SLP_EN is write-only");
}

#[test]
fn timer_runs_at_3_58_mhz_and_is_read_only() {
    let mut f = fixture();
    let t0 = f.timer();
    std::thread::sleep(Duration::from_millis(50));
    let t1 = f.timer();
    let ticks = u64::from(t1.wrapping_sub(t0));
    // 50 ms = 178977 ticks; sleeping may overshoot, never undershoot.
    assert!((178_977..178_977 * 4).contains(&ticks), "{ticks} ticks in 50 ms");
    f.pm.write(port(PM_TMR_PORT), &[0, 0, 0, 0]);
    assert!(f.timer().wrapping_sub(t1) < 1 << 31, "timer was not reset by a write");
}

#[test]
fn pause_freezes_timer_and_snapshot_resumes_it() {
    let mut f = fixture();
    f.pm.pause().unwrap();
    let t = f.timer();
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(f.timer(), t);
    f.write16(PM1A_EVT_PORT + 2, PWRBTN_EN);
    f.pm.press_power_button();
    let snap = f.pm.snapshot().unwrap().unwrap();
    assert_eq!(snap.id, "acpi_pm");

    let mut g = fixture();
    g.pm.restore(&snap).unwrap();
    assert!(g.sci.high.load(Ordering::SeqCst), "restored pending event re-asserts SCI");
    assert_eq!(g.read16(PM1A_EVT_PORT + 2), PWRBTN_EN);
    let restored = g.timer();
    assert!(restored.wrapping_sub(t) < PM_TIMER_HZ as u32, "timer continues from the snapshot");
    f.pm.resume().unwrap();
    assert!(f.timer().wrapping_sub(t) < PM_TIMER_HZ as u32);
}

#[test]
fn odd_accesses_do_not_panic() {
    let mut f = fixture();
    let mut b = [0u8; 8];
    f.pm.read(10, &mut b);
    assert_eq!(&b[2..], &[0xff; 6]);
    f.pm.read(u64::MAX, &mut b);
    f.pm.write(u64::MAX, &[1, 2, 3, 4]);
    f.pm.write(6, &[0xff, 0xff]);
    f.pm.write(0, &[]);
}
