//! The contract between a virtio device model and its transport (mmio or
//! pci). A device knows its type, features, config space and queues; the
//! transport owns the registers, the queue configuration the driver writes,
//! the notification EventFds and the interrupt delivery. On DRIVER_OK the
//! transport hands the device its queues (`activate`), and the device moves
//! them to a worker thread (see [`crate::worker`]) so no queue is processed
//! on a vCPU thread.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use devices::GuestMemory;
use migration::{Pausable, Snapshottable};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::common::DeviceCommon;

/// Feature bits common to every device here.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
/// Features every device in this crate offers on top of its own.
pub const COMMON_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;

/// Device type ids (virtio 1.x, section 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_CONSOLE: u32 = 3;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_VSOCK: u32 = 19;

/// What an interrupt announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioInterruptType {
    /// The device configuration space changed (or the device needs a reset).
    Config,
    /// Queue `n` has new entries in its used ring.
    Queue(u16),
}

/// Interrupt delivery as a device sees it. The mmio transport implements it
/// over a `devices::InterruptLine` (with the interrupt-status register), the
/// pci transport over `devices::MsiInterrupts` (MSI-X vector per queue).
pub trait VirtioInterrupt: Send + Sync {
    fn trigger(&self, kind: VirtioInterruptType) -> io::Result<()>;
    /// The guest broke the device (e.g. a corrupt ring): the transport sets
    /// DEVICE_NEEDS_RESET in the status register and sends a config interrupt.
    fn set_needs_reset(&self);
}

/// One queue the driver set up, handed to the device on activation.
pub struct ActiveQueue {
    /// Queue index within the device.
    pub index: u16,
    /// Validated queue (size, ring addresses, EVENT_IDX already applied).
    pub queue: Queue,
    /// Signalled by the guest's doorbell write (ioeventfd or a trapped write).
    pub event: EventFd,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device {device} expects {expected} queues but the driver enabled {got}")]
    QueueCount { device: String, expected: usize, got: usize },
    #[error("device {0}: cannot start its worker thread: {1}")]
    Worker(String, io::Error),
    #[error("device {0}: backend failed: {1}")]
    Backend(String, String),
    #[error("device {0} is already active")]
    AlreadyActive(String),
}

/// A virtio device model.
pub trait VirtioDevice: Pausable + Snapshottable + Send {
    /// Virtio device type (`TYPE_*`).
    fn device_type(&self) -> u32;
    /// The state and worker every device shares; the defaults below read it.
    fn common(&self) -> &DeviceCommon;
    fn common_mut(&mut self) -> &mut DeviceCommon;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        &self.common().queue_sizes
    }
    /// Feature bits the device offers.
    fn features(&self) -> u64 {
        self.common().avail_features
    }
    /// The features the driver accepted (masked to `features()`).
    fn ack_features(&mut self, features: u64) {
        self.common_mut().ack(features);
    }
    /// Read device-specific config space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write device-specific config space; ignored by default.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Start processing: the driver set DRIVER_OK.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError>;
    /// The driver reset the device: stop the worker (dropping its handler
    /// and whatever backend state it held) and forget negotiated state. The
    /// device can be activated again afterwards.
    fn reset(&mut self) {
        self.common_mut().reset();
    }
    /// Statistics (requests, bytes, errors) for `tern` status/counters.
    fn counters(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }
}

/// Copy `config[offset..]` into `data`; bytes past the end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

/// Overwrite `config[offset..]` with `data`, ignoring bytes past the end.
pub fn write_config_bytes(config: &mut [u8], offset: u64, data: &[u8]) {
    let Ok(start) = usize::try_from(offset) else { return };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    config[start..start + n].copy_from_slice(&data[..n]);
}

/// Check the queue count handed over at activation.
pub fn check_queue_count(device: &str, expected: usize, queues: &[ActiveQueue]) -> Result<(), ActivateError> {
    if queues.len() != expected {
        return Err(ActivateError::QueueCount { device: device.to_string(), expected, got: queues.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bytes_clip_at_the_end() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
        let mut cfg = [0u8; 4];
        write_config_bytes(&mut cfg, 3, &[9, 9]);
        assert_eq!(cfg, [0, 0, 0, 9]);
    }
}
