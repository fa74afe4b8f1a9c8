//! State and lifecycle every device shares: feature bookkeeping, the worker
//! thread and pause/resume, so each device only writes its queue handler.

use std::sync::Arc;

use migration::MigrationError;
use vmm_sys_util::epoll::EventSet;

use crate::device::{ActivateError, ActiveQueue, VirtioInterrupt};
use crate::worker::{ExtraFd, QueueHandler, Worker};

pub struct DeviceCommon {
    pub id: String,
    pub avail_features: u64,
    pub acked_features: u64,
    pub queue_sizes: Vec<u16>,
    pub worker: Option<Worker>,
    pub paused: bool,
}

impl DeviceCommon {
    pub fn new(id: &str, avail_features: u64, queue_sizes: Vec<u16>) -> Self {
        Self { id: id.to_string(), avail_features, acked_features: 0, queue_sizes, worker: None, paused: false }
    }

    pub fn ack(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    pub fn has_feature(&self, bit: u64) -> bool {
        self.acked_features & bit != 0
    }

    /// Split the queues from their EventFds (the worker owns the EventFds).
    pub fn split(
        queues: Vec<ActiveQueue>,
    ) -> (Vec<virtio_queue::Queue>, Vec<u16>, Vec<vmm_sys_util::eventfd::EventFd>) {
        let mut qs = Vec::new();
        let mut idx = Vec::new();
        let mut evts = Vec::new();
        for q in queues {
            qs.push(q.queue);
            idx.push(q.index);
            evts.push(q.event);
        }
        (qs, idx, evts)
    }

    /// Start the worker; stays parked if the device was paused (restore).
    pub fn start(
        &mut self,
        events: Vec<vmm_sys_util::eventfd::EventFd>,
        extra: Vec<(std::os::fd::RawFd, EventSet, u64)>,
        interrupt: Arc<dyn VirtioInterrupt>,
        handler: Box<dyn QueueHandler>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive(self.id.clone()));
        }
        let extra = extra.into_iter().map(|(fd, events, token)| ExtraFd { fd, events, token }).collect();
        let w = Worker::spawn(&self.id, events, extra, interrupt, handler)
            .map_err(|e| ActivateError::Worker(self.id.clone(), std::io::Error::other(e.to_string())))?;
        if self.paused {
            w.pause().map_err(|e| ActivateError::Worker(self.id.clone(), std::io::Error::other(e.to_string())))?;
        }
        self.worker = Some(w);
        Ok(())
    }

    pub fn reset(&mut self) {
        self.worker = None;
        self.acked_features = 0;
    }

    pub fn pause(&mut self) -> Result<(), MigrationError> {
        if let Some(w) = &self.worker {
            w.pause().map_err(|e| MigrationError::Pause(self.id.clone(), e.to_string()))?;
        }
        self.paused = true;
        Ok(())
    }

    pub fn resume(&mut self) -> Result<(), MigrationError> {
        if let Some(w) = &self.worker {
            w.resume();
        }
        self.paused = false;
        Ok(())
    }
}

/// `Pausable` for a device whose queue processing lives in its
/// `DeviceCommon` field named `common`: pausing the device is pausing that.
#[macro_export]
macro_rules! common_pausable {
    ($t:ty) => {
        impl migration::Pausable for $t {
            fn pause(&mut self) -> Result<(), migration::MigrationError> {
                self.common.pause()
            }
            fn resume(&mut self) -> Result<(), migration::MigrationError> {
                self.common.resume()
            }
        }
    };
}
