//! virtio-mmio version 2 (virtio 1.x, section 4.2) as a `devices::BusDevice`.
//! The doorbell (QueueNotify, offset 0x50) is meant to be bound to the
//! queue EventFds with ioeventfds (datamatch = queue index, see
//! [`MmioTransport::ioeventfds`]); a trapped write does the same thing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use devices::interrupt::SharedLine;
use devices::{BusDevice, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use super::{CoreState, STATUS_DRIVER_OK, STATUS_NEEDS_RESET, SharedDevice, TransportCore, set_half};
use crate::device::{VirtioInterrupt, VirtioInterruptType};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x554d_4551; // same as QEMU's, drivers do not care
/// Offset of the doorbell register.
pub const NOTIFY_OFFSET: u64 = 0x50;
const CONFIG_OFFSET: u64 = 0x100;

const INT_USED_RING: u32 = 1;
const INT_CONFIG: u32 = 2;

/// Interrupt delivery for mmio: latch the cause in InterruptStatus, then
/// pulse the GSI (an irqfd in the VMM, so this works from any thread).
pub struct MmioInterrupt {
    pub interrupt_status: Arc<AtomicU32>,
    pub device_status: Arc<AtomicU8>,
    pub line: SharedLine,
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()> {
        let bit = match kind {
            VirtioInterruptType::Config => INT_CONFIG,
            VirtioInterruptType::Queue(_) => INT_USED_RING,
        };
        self.interrupt_status.fetch_or(bit, Ordering::SeqCst);
        self.line.trigger()
    }

    fn set_needs_reset(&self) {
        self.device_status.fetch_or(STATUS_NEEDS_RESET, Ordering::SeqCst);
        let _ = self.trigger(VirtioInterruptType::Config);
    }
}

pub struct MmioTransport {
    core: TransportCore,
    interrupt_status: Arc<AtomicU32>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MmioState {
    pub core: CoreState,
    pub interrupt_status: u32,
}

impl MmioTransport {
    pub fn new(device: SharedDevice, mem: GuestMemory, line: SharedLine) -> std::io::Result<Self> {
        let core = TransportCore::new(device, mem)?;
        let interrupt_status = Arc::new(AtomicU32::new(0));
        let interrupt = Arc::new(MmioInterrupt {
            interrupt_status: interrupt_status.clone(),
            device_status: core.status.clone(),
            line,
        });
        Ok(Self { core, interrupt_status, interrupt })
    }

    /// (address, datamatch, EventFd) for every queue doorbell, for
    /// `devices::IoEventRegistry::register_mmio`.
    pub fn ioeventfds(&self, base: u64) -> Vec<(u64, Option<u32>, &EventFd)> {
        self.core.queue_events.iter().enumerate().map(|(i, e)| (base + NOTIFY_OFFSET, Some(i as u32), e)).collect()
    }

    pub fn device(&self) -> &SharedDevice {
        &self.core.device
    }

    pub fn status(&self) -> u8 {
        self.core.status()
    }

    pub fn state(&self) -> MmioState {
        MmioState { core: self.core.state(), interrupt_status: self.interrupt_status.load(Ordering::SeqCst) }
    }

    pub fn restore(&mut self, s: &MmioState) -> Result<(), String> {
        self.core.restore(&s.core, &self.interrupt)?;
        self.interrupt_status.store(s.interrupt_status, Ordering::SeqCst);
        Ok(())
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let c = &self.core;
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => c.dev().device_type(),
            0x0c => VENDOR_ID,
            0x10 => c.device_features_word(),
            0x34 => c.selected_max() as u32,
            0x44 => c.selected_ro().is_some_and(|q| q.ready) as u32,
            0x60 => self.interrupt_status.load(Ordering::SeqCst),
            0x70 => c.status() as u32,
            0xfc => c.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let c = &mut self.core;
        match offset {
            0x14 => c.device_feature_sel = v,
            0x20 => c.write_driver_features_word(v),
            0x24 => c.driver_feature_sel = v,
            0x30 => c.queue_sel = v.min(u16::MAX as u32) as u16,
            0x38 => {
                if let Some(q) = c.selected() {
                    // Validated at DRIVER_OK; an invalid size fails activation.
                    q.size = v.min(u16::MAX as u32) as u16;
                }
            }
            0x44 => {
                if let Some(q) = c.selected() {
                    q.ready = v == 1;
                }
            }
            0x50 => {
                if let Some(e) = c.queue_events.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            0x64 => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            0x70 => {
                let interrupt = self.interrupt.clone();
                c.write_status(v as u8, &interrupt);
                if v == 0 {
                    self.interrupt_status.store(0, Ordering::SeqCst);
                }
            }
            0x80 | 0x84 => {
                if let Some(q) = c.selected() {
                    set_half(&mut q.desc, v, offset == 0x84);
                }
            }
            0x90 | 0x94 => {
                if let Some(q) = c.selected() {
                    set_half(&mut q.avail, v, offset == 0x94);
                }
            }
            0xa0 | 0xa4 => {
                if let Some(q) = c.selected() {
                    set_half(&mut q.used, v, offset == 0xa4);
                }
            }
            _ => tracing::debug!("virtio-mmio: write to unknown register {offset:#x}"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.core.dev().read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            // Config writes after DRIVER_OK are allowed (e.g. console size).
            self.core.dev().write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            tracing::debug!("virtio-mmio: ignoring {}-byte write at {offset:#x}", data.len());
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_reg(offset, v);
    }
}

/// Whether the device is running (for tests and status).
pub fn is_driver_ok(status: u8) -> bool {
    status & STATUS_DRIVER_OK != 0 && status & STATUS_NEEDS_RESET == 0
}
