//! Emulated devices and the buses they sit on. This crate knows nothing of
//! KVM: the VMM hands it port-I/O and MMIO accesses through [`bus::Bus`] and
//! gives it interrupts through the traits in [`interrupt`].

pub mod bus;
pub mod context;
pub mod interrupt;
pub mod legacy;

pub use bus::{Bus, BusDevice, BusError};
pub use context::{DeviceContext, GuestMemory};
pub use interrupt::{InterruptLine, InterruptManager, IoEventRegistry, MsiInterrupts};
