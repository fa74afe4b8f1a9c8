//! Modern virtio-pci transport (virtio 1.x, section 4.1) as a
//! [`pci::PciDevice`]. Everything lives in one 64-bit memory BAR:
//!
//! | offset | structure                                   |
//! |--------|---------------------------------------------|
//! | 0x0000 | common configuration                        |
//! | 0x1000 | ISR status                                  |
//! | 0x2000 | device-specific configuration               |
//! | 0x3000 | notify doorbells, 4 bytes apart per queue    |
//! | 0x4000 | MSI-X table (vector 0..=queues; one each)   |
//! | 0x6000 | MSI-X pending bit array                     |
//!
//! The doorbells are bound to the queue EventFds with ioeventfds (no
//! datamatch) wherever the guest maps the BAR; [`VirtioPciDevice::bar_moved`]
//! moves them when the guest reprograms the BAR.

use std::sync::atomic::{AtomicU8, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use devices::interrupt::SharedLine;
use devices::{GuestMemory, IoEventRegistry, MsiInterrupts};
use pci::config::{PciConfig, PciIdentity};
use pci::msix::{Msix, MsixState};
use pci::root::PciDevice;

use super::{CoreState, NO_VECTOR, STATUS_NEEDS_RESET, SharedDevice, TransportCore, set_half};
use crate::device::{VirtioInterrupt, VirtioInterruptType};

pub const BAR_SIZE: u64 = 0x8000;
const COMMON_OFF: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR_OFF: u64 = 0x1000;
const DEVICE_OFF: u64 = 0x2000;
const DEVICE_LEN: u64 = 0x1000;
const NOTIFY_OFF: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFF: u64 = 0x4000;
const MSIX_PBA_OFF: u64 = 0x6000;

const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

/// Vector numbers the driver chose, shared with the interrupt object.
struct Vectors {
    config: AtomicU16,
    queues: Vec<AtomicU16>,
}

pub struct PciInterrupt {
    msix: Arc<Mutex<Msix>>,
    vectors: Arc<Vectors>,
    isr: Arc<AtomicU8>,
    status: Arc<AtomicU8>,
    /// INTx line, for guests that do not enable MSI-X (kernels without
    /// CONFIG_PCI_MSI): pulsed after the ISR bit is set.
    intx: OnceLock<SharedLine>,
}

impl VirtioInterrupt for PciInterrupt {
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()> {
        let v = match kind {
            VirtioInterruptType::Config => {
                self.isr.fetch_or(2, Ordering::SeqCst);
                self.vectors.config.load(Ordering::SeqCst)
            }
            VirtioInterruptType::Queue(i) => {
                self.isr.fetch_or(1, Ordering::SeqCst);
                self.vectors.queues.get(i as usize).map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst))
            }
        };
        let mut msix = self.msix.lock().unwrap_or_else(|e| e.into_inner());
        if !msix.state.enabled {
            drop(msix);
            return self.intx.get().map_or(Ok(()), |l| l.trigger());
        }
        if v == NO_VECTOR {
            return Ok(());
        }
        msix.trigger(v)
    }

    fn set_needs_reset(&self) {
        self.status.fetch_or(STATUS_NEEDS_RESET, Ordering::SeqCst);
        let _ = self.trigger(VirtioInterruptType::Config);
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PciTransportState {
    pub core: CoreState,
    pub msix: MsixState,
    pub isr: u8,
    /// Command register and BAR0/BAR1, so a BAR the guest moved is restored.
    pub command: u32,
    pub bar0: u64,
}

pub struct VirtioPciDevice {
    core: TransportCore,
    config: PciConfig,
    msix: Arc<Mutex<Msix>>,
    msix_cap: usize,
    isr: Arc<AtomicU8>,
    vectors: Arc<Vectors>,
    interrupt: Arc<PciInterrupt>,
    ioevents: Arc<dyn IoEventRegistry>,
    bar0: Option<u64>,
}

fn class_of(device_type: u32) -> (u8, u8) {
    match device_type {
        crate::device::TYPE_NET => (0x02, 0x00),
        crate::device::TYPE_BLOCK => (0x01, 0x00),
        crate::device::TYPE_CONSOLE => (0x07, 0x80),
        _ => (0xff, 0x00),
    }
}

fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    let len = if extra.is_some() { 20 } else { 16 };
    let mut c = vec![0x09, 0, len, cfg_type, 0, 0, 0, 0];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(x) = extra {
        c.extend_from_slice(&x.to_le_bytes());
    }
    c
}

impl VirtioPciDevice {
    pub fn new(
        device: SharedDevice,
        mem: GuestMemory,
        msi: Arc<dyn MsiInterrupts>,
        ioevents: Arc<dyn IoEventRegistry>,
    ) -> Result<Self, String> {
        let core = TransportCore::new(device, mem).map_err(|e| e.to_string())?;
        let nq = core.queues.len();
        let device_type = core.dev().device_type();
        let (class, subclass) = class_of(device_type);
        let mut config = PciConfig::new(PciIdentity {
            vendor: 0x1af4,
            device: 0x1040 + device_type as u16,
            class,
            subclass,
            prog_if: 0,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        config.add_mem_bar(0, BAR_SIZE, true).map_err(|e| e.to_string())?;
        let msix = Msix::new(nq as u16 + 1, msi);
        let msix_cap = config
            .add_capability(&msix.capability(0, MSIX_TABLE_OFF as u32, MSIX_PBA_OFF as u32))
            .map_err(|e| e.to_string())?;
        // Enable and function-mask bits of the message control word.
        config.set_wmask_bytes(msix_cap + 3, 1, 0xc0);
        for cap in [
            virtio_cap(CAP_COMMON, COMMON_OFF, COMMON_LEN, None),
            virtio_cap(CAP_ISR, ISR_OFF, 1, None),
            virtio_cap(CAP_DEVICE, DEVICE_OFF, DEVICE_LEN, None),
            virtio_cap(CAP_NOTIFY, NOTIFY_OFF, NOTIFY_MULTIPLIER as u64 * nq.max(1) as u64, Some(NOTIFY_MULTIPLIER)),
        ] {
            config.add_capability(&cap).map_err(|e| e.to_string())?;
        }
        let msix = Arc::new(Mutex::new(msix));
        let isr = Arc::new(AtomicU8::new(0));
        let vectors = Arc::new(Vectors {
            config: AtomicU16::new(NO_VECTOR),
            queues: (0..nq).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
        });
        let interrupt = Arc::new(PciInterrupt {
            msix: msix.clone(),
            vectors: vectors.clone(),
            isr: isr.clone(),
            status: core.status.clone(),
            intx: OnceLock::new(),
        });
        Ok(Self { core, config, msix, msix_cap, isr, vectors, interrupt, ioevents, bar0: None })
    }

    pub fn device(&self) -> &SharedDevice {
        &self.core.device
    }

    /// Wire INTA# to `line` and announce its GSI in the Interrupt Line
    /// register (guests without MSI-X, or without ACPI _PRT routing, use it).
    pub fn set_intx(&mut self, line: SharedLine) {
        let gsi = line.gsi();
        self.config.set_byte(0x3c, gsi.min(0xff) as u8);
        self.config.set_byte(0x3d, 1);
        let _ = self.interrupt.intx.set(line);
    }

    pub fn status(&self) -> u8 {
        self.core.status()
    }

    fn msix(&self) -> std::sync::MutexGuard<'_, Msix> {
        self.msix.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> PciTransportState {
        let mut core = self.core.state();
        for (q, v) in core.queues.iter_mut().zip(&self.vectors.queues) {
            q.vector = v.load(Ordering::SeqCst);
        }
        core.config_vector = self.vectors.config.load(Ordering::SeqCst);
        PciTransportState {
            core,
            msix: self.msix().state.clone(),
            isr: self.isr.load(Ordering::SeqCst),
            command: self.config.read_reg(1) & 0xffff,
            bar0: self.config.bar_addr(0),
        }
    }

    /// Restore registers, MSI-X and queues. BAR placement and the command
    /// register are restored by the caller through the bus (see attach.rs)
    /// so the bus decode and the ioeventfds follow.
    pub fn restore(&mut self, s: &PciTransportState) -> Result<(), String> {
        self.msix().restore(&s.msix);
        for (v, q) in self.vectors.queues.iter().zip(&s.core.queues) {
            v.store(q.vector, Ordering::SeqCst);
        }
        self.vectors.config.store(s.core.config_vector, Ordering::SeqCst);
        self.isr.store(s.isr, Ordering::SeqCst);
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        self.core.restore(&s.core, &interrupt)
    }

    fn max_vector(&self) -> u16 {
        self.vectors.queues.len() as u16 + 1
    }

    fn common_image(&self) -> [u8; COMMON_LEN as usize] {
        let c = &self.core;
        let mut b = [0u8; COMMON_LEN as usize];
        let q = c.selected_ro().copied().unwrap_or_default();
        let qv = self.vectors.queues.get(c.queue_sel as usize).map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst));
        b[0x00..0x04].copy_from_slice(&c.device_feature_sel.to_le_bytes());
        b[0x04..0x08].copy_from_slice(&c.device_features_word().to_le_bytes());
        b[0x08..0x0c].copy_from_slice(&c.driver_feature_sel.to_le_bytes());
        let gf = if c.driver_feature_sel == 1 { (c.driver_features >> 32) as u32 } else { c.driver_features as u32 };
        b[0x0c..0x10].copy_from_slice(&gf.to_le_bytes());
        b[0x10..0x12].copy_from_slice(&self.vectors.config.load(Ordering::SeqCst).to_le_bytes());
        b[0x12..0x14].copy_from_slice(&(c.queues.len() as u16).to_le_bytes());
        b[0x14] = c.status();
        b[0x15] = c.config_generation as u8;
        b[0x16..0x18].copy_from_slice(&c.queue_sel.to_le_bytes());
        b[0x18..0x1a].copy_from_slice(&(if c.selected_ro().is_some() { q.size } else { 0 }).to_le_bytes());
        b[0x1a..0x1c].copy_from_slice(&qv.to_le_bytes());
        b[0x1c..0x1e].copy_from_slice(&(q.ready as u16).to_le_bytes());
        b[0x1e..0x20].copy_from_slice(&c.queue_sel.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&q.desc.to_le_bytes());
        b[0x28..0x30].copy_from_slice(&q.avail.to_le_bytes());
        b[0x30..0x38].copy_from_slice(&q.used.to_le_bytes());
        b
    }

    fn common_write(&mut self, off: u64, data: &[u8]) {
        let mut v = [0u8; 8];
        let n = data.len().min(8);
        v[..n].copy_from_slice(&data[..n]);
        let v64 = u64::from_le_bytes(v);
        let v32 = v64 as u32;
        let v16 = v64 as u16;
        let max_vector = self.max_vector();
        let c = &mut self.core;
        match (off, data.len()) {
            (0x00, 4) => c.device_feature_sel = v32,
            (0x08, 4) => c.driver_feature_sel = v32,
            (0x0c, 4) => c.write_driver_features_word(v32),
            (0x10, 2) => {
                let v = if v16 < max_vector { v16 } else { NO_VECTOR };
                self.vectors.config.store(v, Ordering::SeqCst);
            }
            (0x14, 1) => {
                let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
                c.write_status(data[0], &interrupt);
                if data[0] == 0 {
                    self.isr.store(0, Ordering::SeqCst);
                    self.vectors.config.store(NO_VECTOR, Ordering::SeqCst);
                    for q in &self.vectors.queues {
                        q.store(NO_VECTOR, Ordering::SeqCst);
                    }
                }
            }
            (0x16, 2) => c.queue_sel = v16,
            (0x18, 2) => {
                if let Some(q) = c.selected() {
                    q.size = v16;
                }
            }
            (0x1a, 2) => {
                let sel = c.queue_sel as usize;
                if c.selected().is_some()
                    && let Some(slot) = self.vectors.queues.get(sel)
                {
                    slot.store(if v16 < max_vector { v16 } else { NO_VECTOR }, Ordering::SeqCst);
                }
            }
            (0x1c, 2) => {
                if let Some(q) = c.selected() {
                    q.ready = v16 == 1;
                }
            }
            (0x20..=0x37, 4 | 8) => {
                let field = (off - 0x20) / 8;
                let high = off % 8 == 4;
                if let Some(q) = c.selected() {
                    let target = match field {
                        0 => &mut q.desc,
                        1 => &mut q.avail,
                        _ => &mut q.used,
                    };
                    if data.len() == 8 {
                        *target = v64;
                    } else {
                        set_half(target, v32, high);
                    }
                }
            }
            _ => tracing::debug!("virtio-pci: ignoring {}-byte common cfg write at {off:#x}", data.len()),
        }
    }

    fn notify_fds(&self, bar: u64) -> Vec<u64> {
        (0..self.core.queue_events.len()).map(|i| bar + NOTIFY_OFF + NOTIFY_MULTIPLIER as u64 * i as u64).collect()
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let ctrl = self.msix_cap + 2;
        if offset < ctrl + 2 && offset + data.len() > ctrl {
            let v = self.config.read_u16(ctrl);
            self.msix().set_control(v);
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        match offset {
            o if o < COMMON_LEN => {
                let img = self.common_image();
                let n = data.len().min((COMMON_LEN - o) as usize);
                data[..n].copy_from_slice(&img[o as usize..o as usize + n]);
            }
            ISR_OFF => {
                // Reading the ISR acknowledges it (and lowers INTx).
                data[0] = self.isr.swap(0, Ordering::SeqCst);
                if let Some(l) = self.interrupt.intx.get() {
                    let _ = l.deassert();
                    // A worker may have set a bit between the swap and the
                    // deassert: keep the line up for it.
                    if self.isr.load(Ordering::SeqCst) != 0 {
                        let _ = l.trigger();
                    }
                }
            }
            o if (DEVICE_OFF..DEVICE_OFF + DEVICE_LEN).contains(&o) => {
                self.core.dev().read_config(o - DEVICE_OFF, data);
            }
            o if (MSIX_TABLE_OFF..MSIX_PBA_OFF).contains(&o) => self.msix().read_table(o - MSIX_TABLE_OFF, data),
            o if (MSIX_PBA_OFF..BAR_SIZE).contains(&o) => self.msix().read_pba(o - MSIX_PBA_OFF, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match offset {
            o if o < COMMON_LEN => self.common_write(o, data),
            o if (DEVICE_OFF..DEVICE_OFF + DEVICE_LEN).contains(&o) => {
                self.core.dev().write_config(o - DEVICE_OFF, data);
            }
            o if (NOTIFY_OFF..MSIX_TABLE_OFF).contains(&o) => {
                // A trapped doorbell (no ioeventfd): same effect.
                let q = ((o - NOTIFY_OFF) / NOTIFY_MULTIPLIER as u64) as usize;
                if let Some(e) = self.core.queue_events.get(q) {
                    let _ = e.write(1);
                }
            }
            o if (MSIX_TABLE_OFF..MSIX_PBA_OFF).contains(&o) => self.msix().write_table(o - MSIX_TABLE_OFF, data),
            _ => {}
        }
    }

    fn bar_moved(&mut self, bar: usize, old: Option<u64>, new: Option<u64>) {
        if bar != 0 {
            return;
        }
        if let Some(old) = old {
            for (addr, evt) in self.notify_fds(old).into_iter().zip(&self.core.queue_events) {
                if let Err(e) = self.ioevents.unregister_mmio(addr, None, evt) {
                    tracing::warn!("virtio-pci: cannot unregister doorbell at {addr:#x}: {e}");
                }
            }
        }
        if let Some(new) = new {
            for (addr, evt) in self.notify_fds(new).into_iter().zip(&self.core.queue_events) {
                if let Err(e) = self.ioevents.register_mmio(addr, None, evt) {
                    // Still works through trapped writes, just slower.
                    tracing::warn!("virtio-pci: cannot register doorbell at {addr:#x}: {e}");
                }
            }
        }
        self.bar0 = new;
    }
}

#[cfg(test)]
mod tests;
