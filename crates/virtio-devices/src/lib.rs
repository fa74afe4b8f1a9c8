//! Virtio device models (blk, net, rng, console, vsock, balloon) and their
//! transports (virtio-mmio v2, modern virtio-pci with MSI-X).
//!
//! # Wiring devices into a VM
//!
//! The VMM builds each device, then attaches it with one call; everything
//! else (bus placement, doorbell ioeventfds, interrupts, the kernel command
//! line fragment for mmio) is done by [`attach`]:
//!
//! ```no_run
//! use devices::DeviceContext;
//! use virtio_devices::block::{Block, DiskConfig};
//! use virtio_devices::rng::Rng;
//! use virtio_devices::{AttachedDevice, attach_mmio, attach_pci, create_pci_root, shared};
//!
//! fn wire(ctx: &mut DeviceContext, pci: bool) -> Result<Vec<AttachedDevice>, Box<dyn std::error::Error>> {
//!     let disk: DiskConfig = "path=disk.img,format=raw,cache=none,io=io_uring".parse()?;
//!     let devs = vec![
//!         shared(Block::new("virtio-blk0", &disk)?),
//!         shared(Rng::new("virtio-rng0", std::path::Path::new("/dev/urandom"))?),
//!     ];
//!     let mut out = Vec::new();
//!     if pci {
//!         // Host bridge 00:00.0, config via 0xcf8 and ECAM, BAR window.
//!         let root = create_pci_root(ctx)?;
//!         for d in devs {
//!             out.push(attach_pci(ctx, &root, d)?);
//!         }
//!     } else {
//!         // Slot i: VIRTIO_MMIO_START + i * 4K, GSI VIRTIO_MMIO_GSIS[i];
//!         // pushes "virtio_mmio.device=4K@0x...:GSI" to ctx.cmdline_extra.
//!         for (slot, d) in devs.into_iter().enumerate() {
//!             out.push(attach_mmio(ctx, d, slot)?);
//!         }
//!     }
//!     Ok(out)
//! }
//! ```
//!
//! [`AttachedDevice`] is the VMM's handle: `id()`, `location`, `counters()`,
//! and the `migration` traits (`pause`/`resume` park the device's worker
//! after in-flight requests complete; `snapshot`/`restore` carry transport
//! registers, queue configuration, MSI-X state and the device's own state).
//!
//! # Interrupt and doorbell contract
//!
//! * mmio: one edge-triggered `InterruptLine` per device (from
//!   `InterruptManager::legacy_line(gsi)`, expected to be an irqfd so worker
//!   threads can raise it); the InterruptStatus register says why. Doorbell:
//!   ioeventfd at `base + 0x50` with datamatch = queue index (4 bytes).
//! * pci: `InterruptManager::msi_group(queues + 1)`; vector numbers are the
//!   driver's choice (config vector, one per queue). `MsiInterrupts::update`
//!   is called whenever the guest programs/masks a table entry. Doorbells:
//!   ioeventfd without datamatch at `BAR0 + 0x3000 + 4 * queue`, registered
//!   when the guest enables memory decoding and moved when it moves BAR0.
//!   Guests that never enable MSI-X (the shared test kernel has no
//!   CONFIG_PCI_MSI) get INTx instead: INTA# of device n asserts
//!   `level_line(PCI_INTX_GSIS[n % 5])` (GSIs 5, 6, 7, 10, 11, shared,
//!   announced in the Interrupt Line register; with no `_PRT` in the DSDT
//!   Linux uses that value) when the ISR gets a bit, and reading the ISR
//!   deasserts it.
//! * Either way a trapped doorbell write does the same, just slower.
//!
//! # Modules
//!
//! * [`device`]: the [`device::VirtioDevice`] trait every device implements
//!   and the [`device::VirtioInterrupt`] trait transports implement.
//! * [`worker`]: the per-device worker thread (epoll on queue EventFds).
//! * [`queue`]: hostile-guest-safe descriptor chain parsing and copying.
//! * [`transport`]: virtio-mmio and virtio-pci.
//! * Devices: [`block`], [`rng`], [`console`] (`Console::new(id, &SerialConfig)`,
//!   the same backends as `--serial`), and net, vsock, balloon.

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
