//! The legacy devices together on one port bus at the addresses of
//! `arch::layout`, driven by absolute port numbers as a guest would.

use std::sync::{Arc, Mutex};

use arch::layout::*;

use super::acpi_pm::{ACPI_PM_PORT_LEN, PWRBTN_EN, PWRBTN_STS, SLP_EN};
use super::debug_exit::DEBUG_EXIT_PORT_LEN;
use super::i8042::I8042_PORT_LEN;
use super::serial::SERIAL_PORT_LEN;
use super::*;
use crate::Bus;
use crate::interrupt::CountingLine;

fn line(gsi: u32) -> Arc<CountingLine> {
    Arc::new(CountingLine { gsi, ..Default::default() })
}

struct Machine {
    bus: Bus,
    events: Arc<VmEvents>,
    acpi: Arc<Mutex<AcpiPm>>,
}

fn machine() -> Machine {
    let events = Arc::new(VmEvents::new().unwrap());
    let mut bus = Bus::new();
    let serial = Arc::new(Mutex::new(SerialDevice::new(SerialOutput::Sink, line(COM1_GSI))));
    bus.insert(serial, COM1_PORT.into(), SERIAL_PORT_LEN).unwrap();
    let kbd = Arc::new(Mutex::new(I8042::new(line(KEYBOARD_GSI), events.clone())));
    bus.insert(kbd, I8042_DATA_PORT.into(), I8042_PORT_LEN).unwrap();
    bus.insert(Arc::new(Mutex::new(Cmos::new(128 << 20, 0))), CMOS_PORT.into(), cmos::CMOS_PORT_LEN).unwrap();
    let acpi = Arc::new(Mutex::new(AcpiPm::new(line(SCI_GSI), events.clone())));
    bus.insert(acpi.clone(), PM1A_EVT_PORT.into(), ACPI_PM_PORT_LEN).unwrap();
    bus.insert(Arc::new(Mutex::new(DebugExit::new(events.clone()))), DEBUG_EXIT_PORT.into(), DEBUG_EXIT_PORT_LEN)
        .unwrap();
    Machine { bus, events, acpi }
}

#[test]
fn every_device_answers_at_its_layout_port() {
    let m = machine();
    let mut b = [0u8; 1];
    // 16550 scratch register round-trips.
    m.bus.write(u64::from(COM1_PORT) + 7, &[0x5a]);
    assert!(m.bus.read(u64::from(COM1_PORT) + 7, &mut b));
    assert_eq!(b, [0x5a]);
    // i8042 self test through 0x64/0x60.
    m.bus.write(I8042_CMD_PORT.into(), &[0xaa]);
    m.bus.read(I8042_DATA_PORT.into(), &mut b);
    assert_eq!(b, [0x55]);
    // CMOS register D: valid RAM and time.
    m.bus.write(CMOS_PORT.into(), &[0x0d]);
    m.bus.read(u64::from(CMOS_PORT) + 1, &mut b);
    assert_eq!(b, [0x80]);
    // PM timer moves.
    let mut t0 = [0u8; 4];
    let mut t1 = [0u8; 4];
    m.bus.read(PM_TMR_PORT.into(), &mut t0);
    std::thread::sleep(std::time::Duration::from_millis(2));
    m.bus.read(PM_TMR_PORT.into(), &mut t1);
    assert_ne!(t0, t1);
    // Nothing claims the ports between the blocks.
    assert!(!m.bus.read(u64::from(PM1A_CNT_PORT) + 0x10, &mut b));
}

#[test]
fn guest_requests_reach_the_vmm_through_one_eventfd() {
    let m = machine();
    m.bus.write(I8042_CMD_PORT.into(), &[0xfe]);
    assert_eq!(m.events.take(), Some(VmEvent::Reset));

    m.bus.write(PM1A_CNT_PORT.into(), &((S5_SLP_TYP << 10) | SLP_EN).to_le_bytes());
    assert_eq!(m.events.take(), Some(VmEvent::PowerOff));

    m.bus.write(DEBUG_EXIT_PORT.into(), &[3]);
    assert_eq!(m.events.wait(Some(std::time::Duration::from_secs(1))).unwrap(), Some(VmEvent::Exit(7)));

    // Power button: the VMM presses, the guest sees PWRBTN_STS.
    m.bus.write(u64::from(PM1A_EVT_PORT) + 2, &PWRBTN_EN.to_le_bytes());
    assert!(m.acpi.lock().unwrap().press_power_button());
    let mut sts = [0u8; 2];
    m.bus.read(PM1A_EVT_PORT.into(), &mut sts);
    assert_eq!(u16::from_le_bytes(sts) & PWRBTN_STS, PWRBTN_STS);
}
