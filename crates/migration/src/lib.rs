//! Lifecycle traits every VM component implements: pause/resume, snapshot/restore,
//! and migration hooks. Layered like Cloud Hypervisor's: each has default no-op
//! methods so a component opts into only what it needs, and the VMM can walk
//! every component uniformly.

use serde::{Serialize, de::DeserializeOwned};

/// Errors a component reports while pausing, snapshotting or restoring.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("cannot pause {0}: {1}")]
    Pause(String, String),
    #[error("cannot resume {0}: {1}")]
    Resume(String, String),
    #[error("cannot snapshot {0}: {1}")]
    Snapshot(String, String),
    #[error("cannot restore {0}: {1}")]
    Restore(String, String),
    #[error("state of {0} is not valid: {1}")]
    State(String, serde_json::Error),
}

/// A component that can stop doing work (processing queues, emitting
/// interrupts) while the VM is paused.
pub trait Pausable {
    fn pause(&mut self) -> Result<(), MigrationError> {
        Ok(())
    }
    fn resume(&mut self) -> Result<(), MigrationError> {
        Ok(())
    }
}

/// One component's saved state: an id that names it in the VM, and its
/// plain serializable state as JSON so snapshots stay inspectable and
/// versionable.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Snapshot {
    pub id: String,
    pub state: serde_json::Value,
}

impl Snapshot {
    pub fn new<T: Serialize>(id: &str, state: &T) -> Result<Self, MigrationError> {
        Ok(Self {
            id: id.to_string(),
            state: serde_json::to_value(state).map_err(|e| MigrationError::State(id.into(), e))?,
        })
    }

    pub fn to_state<T: DeserializeOwned>(&self) -> Result<T, MigrationError> {
        serde_json::from_value(self.state.clone()).map_err(|e| MigrationError::State(self.id.clone(), e))
    }
}

/// A component whose state can be captured and put back.
pub trait Snapshottable {
    /// Stable id of the component within its VM (e.g. "serial0", "virtio-blk0").
    fn id(&self) -> String;
    fn snapshot(&mut self) -> Result<Option<Snapshot>, MigrationError> {
        Ok(None)
    }
    fn restore(&mut self, _snapshot: &Snapshot) -> Result<(), MigrationError> {
        Ok(())
    }
}

/// Hooks for live migration (dirty tracking is the VMM's; components only
/// get told when it starts and ends).
pub trait Migratable: Pausable + Snapshottable {
    fn start_migration(&mut self) -> Result<(), MigrationError> {
        Ok(())
    }
    fn complete_migration(&mut self) -> Result<(), MigrationError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct S {
        a: u32,
    }

    #[test]
    fn snapshot_round_trips_state() {
        let s = Snapshot::new("x", &S { a: 7 }).unwrap();
        assert_eq!(s.to_state::<S>().unwrap(), S { a: 7 });
        let bad = Snapshot { id: "x".into(), state: serde_json::json!({"b": 1}) };
        assert!(bad.to_state::<S>().is_err());
    }
}
