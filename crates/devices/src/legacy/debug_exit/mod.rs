//! isa-debug-exit compatible test port (QEMU `-device isa-debug-exit`): a
//! write of value `v` ends the VMM with process status `(v << 1) | 1`, so a
//! test guest reports a definite result and status 0 can't be faked by a
//! crash. Reads return 0.

use std::sync::Arc;

use migration::{MigrationError, Pausable, Snapshot, Snapshottable};

use super::{VmEvents, le_value};
use crate::BusDevice;

/// Number of ports the device decodes (QEMU's default iosize is 1; 4 lets a
/// guest use `out dx, eax`).
pub const DEBUG_EXIT_PORT_LEN: u64 = 4;

/// The device has no state of its own; the struct exists so every device
/// snapshots the same way.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DebugExitState {}

pub struct DebugExit {
    events: Arc<VmEvents>,
}

impl DebugExit {
    pub fn new(events: Arc<VmEvents>) -> Self {
        Self { events }
    }

    /// The process status a write of `value` asks for.
    pub fn status_for(value: u32) -> i32 {
        ((value << 1) | 1) as i32
    }

    pub fn state(&self) -> DebugExitState {
        DebugExitState {}
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.is_empty() {
            return;
        }
        let value = le_value(data);
        tracing::debug!("guest wrote {value:#x} to the debug-exit port");
        self.events.request_exit(Self::status_for(value));
    }
}

impl Pausable for DebugExit {}

impl Snapshottable for DebugExit {
    fn id(&self) -> String {
        "debug_exit".into()
    }
    fn snapshot(&mut self) -> Result<Option<Snapshot>, MigrationError> {
        Snapshot::new(&self.id(), &self.state()).map(Some)
    }
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), MigrationError> {
        let _: DebugExitState = snapshot.to_state()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
