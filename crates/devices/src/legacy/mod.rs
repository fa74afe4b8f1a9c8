//! Legacy PC devices: the 16550A UART, the i8042 keyboard controller (for its
//! reset line), the MC146818 CMOS RTC, the ACPI PM1a/PM-timer block and the
//! isa-debug-exit test port.
//!
//! Every device has the same shape: a folder with `mod.rs` holding the device
//! (a [`BusDevice`](crate::BusDevice) serving offsets into its port range), its
//! plain serde state struct, its `Pausable`/`Snapshottable` impls, and
//! `tests.rs`. Devices that need to stop or restart the VM report it through
//! one shared [`VmEvents`], so the VMM waits on a single eventfd.
//!
//! Wiring, all ports and GSIs from `arch::layout`:
//!
//! | device | constructor | bus range | line |
//! |---|---|---|---|
//! | COM1 | [`SerialDevice::from_config`]`(&cfg, line)` | `COM1_PORT`, [`serial::SERIAL_PORT_LEN`] (8) | `COM1_GSI` |
//! | i8042 | [`I8042::new`]`(line, events)` | `I8042_DATA_PORT`, [`i8042::I8042_PORT_LEN`] (5) | `KEYBOARD_GSI` |
//! | CMOS | [`Cmos::new`]`(ram_below_4g, ram_above_4g)` | `CMOS_PORT`, [`cmos::CMOS_PORT_LEN`] (2) | none |
//! | ACPI PM | [`AcpiPm::new`]`(sci, events)` | `PM1A_EVT_PORT`, [`acpi_pm::ACPI_PM_PORT_LEN`] (12) | `SCI_GSI` |
//! | debug-exit | [`DebugExit::new`]`(events)` | `DEBUG_EXIT_PORT`, [`debug_exit::DEBUG_EXIT_PORT_LEN`] (4) | none |
//!
//! Then [`spawn_serial_input`] for stdin/socket input (keep the returned
//! thread; stopping or dropping it restores the terminal), wait on
//! [`VmEvents::eventfd`] and [`VmEvents::take`] the [`VmEvent`], and call
//! [`AcpiPm::press_power_button`] for a graceful shutdown request.

pub mod acpi_pm;
pub mod cmos;
pub mod debug_exit;
mod events;
pub mod i8042;
pub mod serial;

pub use acpi_pm::{AcpiPm, AcpiPmState};
pub use cmos::{Cmos, CmosState};
pub use debug_exit::{DebugExit, DebugExitState};
pub use events::{VmEvent, VmEvents};
pub use i8042::{I8042, I8042State};
pub use serial::{
    RawTerminalGuard, SerialConfig, SerialCounters, SerialDevice, SerialDeviceState, SerialError, SerialInput,
    SerialInputThread, SerialOutput, spawn_serial_input,
};

/// Little-endian value of a 1/2/4-byte port access (wider accesses are cut to
/// their low 4 bytes: port I/O has none).
pub(crate) fn le_value(data: &[u8]) -> u32 {
    data.iter().take(4).enumerate().fold(0u32, |v, (i, b)| v | (u32::from(*b) << (8 * i)))
}

#[cfg(test)]
mod tests;
