//! Virtio device models and their transports.
//!
//! * [`device`]: the [`device::VirtioDevice`] trait every device implements
//!   and the [`device::VirtioInterrupt`] trait transports implement.
//! * [`worker`]: the per-device worker thread (epoll on queue EventFds).
//! * [`queue`]: hostile-guest-safe descriptor chain parsing and copying.
//! * [`transport`]: virtio-mmio and virtio-pci.
//! * Devices: [`rng`].

pub mod attach;
pub mod balloon;
pub mod block;
pub mod common;
pub mod console;
pub mod device;
pub mod net;
pub mod queue;
pub mod rng;
pub mod transport;
pub mod vsock;
pub mod worker;

#[cfg(test)]
pub(crate) mod testing;

pub use attach::{AttachError, AttachedDevice, attach_mmio, attach_pci, create_pci_root, shared};
pub use device::{ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt, VirtioInterruptType};
pub use worker::{DeviceBroken, QueueHandler, Worker};
