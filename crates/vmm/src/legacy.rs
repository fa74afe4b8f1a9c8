//! Placing the legacy PC devices on the port bus.

use std::sync::{Arc, Mutex};

use arch::layout::*;
use devices::Bus;
use devices::interrupt::InterruptManager;
use devices::legacy::{
    AcpiPm, Cmos, DebugExit, I8042, SerialConfig, SerialCounters, SerialDevice, SerialError, VmEvents,
    acpi_pm::ACPI_PM_PORT_LEN, debug_exit::DEBUG_EXIT_PORT_LEN, i8042::I8042_PORT_LEN,
};

#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("cannot wire interrupt for {what}: {source}")]
    Irq { what: &'static str, source: std::io::Error },
    #[error("serial console: {0}")]
    Serial(#[from] SerialError),
    #[error("cannot place {what} on the port bus: {source}")]
    Bus { what: &'static str, source: devices::BusError },
}

/// Handles the VMM keeps on the legacy devices.
pub struct LegacyDevices {
    pub serial: Arc<Mutex<SerialDevice>>,
    pub serial_counters: Arc<SerialCounters>,
    pub acpi_pm: Arc<Mutex<AcpiPm>>,
    pub i8042: Arc<Mutex<I8042>>,
    pub cmos: Arc<Mutex<Cmos>>,
}

pub fn add_legacy_devices(
    pio: &mut Bus,
    irqs: &dyn InterruptManager,
    events: &Arc<VmEvents>,
    serial: &SerialConfig,
    memory_bytes: u64,
) -> Result<LegacyDevices, LegacyError> {
    let line = |what, gsi| irqs.legacy_line(gsi).map_err(|source| LegacyError::Irq { what, source });
    let bus_err = |what| move |source| LegacyError::Bus { what, source };

    let mut com1 = SerialDevice::from_config(serial, line("COM1", COM1_GSI)?)?;
    // Ctrl-A x on a raw terminal ends the VM (Ctrl-C goes to the guest).
    com1.enable_console_escape(events.clone());
    let serial_dev = Arc::new(Mutex::new(com1));
    let serial_counters = serial_dev.lock().unwrap_or_else(|e| e.into_inner()).counters();
    pio.insert(serial_dev.clone(), u64::from(COM1_PORT), 8).map_err(bus_err("COM1"))?;

    let i8042 = Arc::new(Mutex::new(I8042::new(line("i8042", KEYBOARD_GSI)?, events.clone())));
    pio.insert(i8042.clone(), u64::from(I8042_DATA_PORT), I8042_PORT_LEN).map_err(bus_err("i8042"))?;

    let below = memory_bytes.min(MMIO32_HOLE_START);
    let above = memory_bytes.saturating_sub(MMIO32_HOLE_START);
    let cmos = Arc::new(Mutex::new(Cmos::new(below, above)));
    pio.insert(cmos.clone(), u64::from(CMOS_PORT), 2).map_err(bus_err("CMOS RTC"))?;

    // The SCI is level-triggered (MADT override: level, active-high).
    let sci = irqs.level_line(SCI_GSI).map_err(|source| LegacyError::Irq { what: "ACPI SCI", source })?;
    let acpi_pm = Arc::new(Mutex::new(AcpiPm::new(sci, events.clone())));
    pio.insert(acpi_pm.clone(), u64::from(PM1A_EVT_PORT), ACPI_PM_PORT_LEN).map_err(bus_err("ACPI PM"))?;

    let debug_exit = Arc::new(Mutex::new(DebugExit::new(events.clone())));
    pio.insert(debug_exit, u64::from(DEBUG_EXIT_PORT), DEBUG_EXIT_PORT_LEN).map_err(bus_err("debug-exit"))?;

    Ok(LegacyDevices { serial: serial_dev, serial_counters, acpi_pm, i8042, cmos })
}
