//! Virtio device models and their transports.
//!
//! * [`device`]: the [`device::VirtioDevice`] trait every device implements
//!   and the [`device::VirtioInterrupt`] trait transports implement.
//! * [`worker`]: the per-device worker thread (epoll on queue EventFds).
//! * [`queue`]: hostile-guest-safe descriptor chain parsing and copying.

pub mod device;
pub mod queue;
pub mod worker;

pub use device::{ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt, VirtioInterruptType};
pub use worker::{DeviceBroken, QueueHandler, Worker};
