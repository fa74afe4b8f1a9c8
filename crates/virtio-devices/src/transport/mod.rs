//! What the mmio and pci transports share: feature negotiation, the device
//! status state machine, the queue configuration the driver writes and the
//! activation that hands validated queues to the device.
//!
//! Queue configuration is kept as raw numbers and only turned into
//! `virtio_queue::Queue`s at DRIVER_OK, so a driver that writes a size that is
//! not a power of two, a ring outside guest memory or a misaligned ring gets
//! DEVICE_NEEDS_RESET instead of a half-configured device.

pub mod mmio;
pub mod pci;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use devices::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::device::{ActiveQueue, VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt};

/// Device status bits (virtio 1.x, 2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

pub type SharedDevice = Arc<Mutex<dyn VirtioDevice>>;

/// One queue as the driver configured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueConfig {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// MSI-X vector (pci only; 0xffff = none).
    pub vector: u16,
}

/// Serializable transport state (the device's own state is separate).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CoreState {
    pub status: u8,
    pub driver_features: u64,
    pub queues: Vec<QueueConfig>,
    pub config_vector: u16,
    pub config_generation: u32,
}

pub const NO_VECTOR: u16 = 0xffff;

pub struct TransportCore {
    pub device: SharedDevice,
    pub mem: GuestMemory,
    /// Shared with the interrupt object so the worker can set NEEDS_RESET.
    pub status: Arc<AtomicU8>,
    pub device_feature_sel: u32,
    pub driver_feature_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u16,
    pub queues: Vec<QueueConfig>,
    pub max_sizes: Vec<u16>,
    /// Doorbell EventFds, one per queue; the device gets clones on activate.
    pub queue_events: Vec<EventFd>,
    pub config_vector: u16,
    pub config_generation: u32,
    pub active: bool,
}

impl TransportCore {
    pub fn new(device: SharedDevice, mem: GuestMemory) -> std::io::Result<Self> {
        let max_sizes = device.lock().unwrap_or_else(|e| e.into_inner()).queue_max_sizes().to_vec();
        let queue_events = max_sizes.iter().map(|_| EventFd::new(EFD_NONBLOCK)).collect::<Result<Vec<_>, _>>()?;
        let queues =
            max_sizes.iter().map(|&m| QueueConfig { size: m, vector: NO_VECTOR, ..Default::default() }).collect();
        Ok(Self {
            device,
            mem,
            status: Arc::new(AtomicU8::new(0)),
            device_feature_sel: 0,
            driver_feature_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            max_sizes,
            queue_events,
            config_vector: NO_VECTOR,
            config_generation: 0,
            active: false,
        })
    }

    pub fn dev(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> u8 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn device_features_word(&self) -> u32 {
        let f = self.dev().features();
        match self.device_feature_sel {
            0 => f as u32,
            1 => (f >> 32) as u32,
            _ => 0,
        }
    }

    pub fn write_driver_features_word(&mut self, value: u32) {
        // Features are frozen once FEATURES_OK is set.
        if self.status() & STATUS_FEATURES_OK != 0 {
            return;
        }
        match self.driver_feature_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value as u64,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | ((value as u64) << 32),
            _ => {}
        }
    }

    /// The selected queue's config, if the selector names a queue.
    pub fn selected(&mut self) -> Option<&mut QueueConfig> {
        if self.status() & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    pub fn selected_ro(&self) -> Option<&QueueConfig> {
        self.queues.get(self.queue_sel as usize)
    }

    pub fn selected_max(&self) -> u16 {
        self.max_sizes.get(self.queue_sel as usize).copied().unwrap_or(0)
    }

    /// Handle a write of the device status register.
    pub fn write_status(&mut self, value: u8, interrupt: &Arc<dyn VirtioInterrupt>) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status();
        // Bits are only ever added by the driver (except by reset).
        let mut new = old | value;
        if new & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 {
            let offered = self.dev().features();
            if self.driver_features & !offered != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                tracing::warn!(
                    "virtio: driver accepted features {:#x} not offered ({offered:#x}) or without VERSION_1",
                    self.driver_features
                );
                new &= !STATUS_FEATURES_OK;
            } else {
                self.dev().ack_features(self.driver_features);
            }
        }
        self.status.store(new, Ordering::SeqCst);
        if new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 && new & STATUS_FEATURES_OK != 0 {
            self.activate(interrupt);
        }
    }

    fn fail(&self, why: &str) {
        tracing::warn!("virtio: {why}; device needs reset");
        self.status.fetch_or(STATUS_NEEDS_RESET, Ordering::SeqCst);
    }

    /// Build the queues the driver enabled and start the device.
    pub fn activate(&mut self, interrupt: &Arc<dyn VirtioInterrupt>) {
        if self.active {
            return;
        }
        let event_idx = self.driver_features & crate::device::VIRTIO_RING_F_EVENT_IDX != 0;
        let mem = self.mem.memory();
        let mut active = Vec::new();
        for (i, cfg) in self.queues.iter().enumerate() {
            if !cfg.ready {
                continue;
            }
            let q = match build_queue(self.max_sizes[i], cfg, event_idx, &*mem, None) {
                Ok(q) => q,
                Err(e) => return self.fail(&format!("queue {i}: {e}")),
            };
            let event = match self.queue_events[i].try_clone() {
                Ok(e) => e,
                Err(e) => return self.fail(&format!("queue {i} eventfd: {e}")),
            };
            active.push(ActiveQueue { index: i as u16, queue: q, event });
        }
        drop(mem);
        let r = self.dev().activate(self.mem.clone(), interrupt.clone(), active);
        match r {
            Ok(()) => self.active = true,
            Err(e) => self.fail(&e.to_string()),
        }
    }

    pub fn reset(&mut self) {
        if self.active {
            self.dev().reset();
            self.active = false;
        }
        self.status.store(0, Ordering::SeqCst);
        self.driver_features = 0;
        self.device_feature_sel = 0;
        self.driver_feature_sel = 0;
        self.queue_sel = 0;
        self.config_vector = NO_VECTOR;
        for (q, &m) in self.queues.iter_mut().zip(&self.max_sizes) {
            *q = QueueConfig { size: m, vector: NO_VECTOR, ..Default::default() };
        }
        // Drain stale doorbells so a re-activated device does not see them.
        for e in &self.queue_events {
            let _ = e.read();
        }
    }

    pub fn state(&self) -> CoreState {
        CoreState {
            status: self.status(),
            driver_features: self.driver_features,
            queues: self.queues.clone(),
            config_vector: self.config_vector,
            config_generation: self.config_generation,
        }
    }

    /// Put back a saved state; re-activates the device when the driver had
    /// set DRIVER_OK. Queue positions are recovered from the used ring (the
    /// device completed all in-flight requests before it was paused).
    pub fn restore(&mut self, s: &CoreState, interrupt: &Arc<dyn VirtioInterrupt>) -> Result<(), String> {
        if s.queues.len() != self.queues.len() {
            return Err(format!("state has {} queues, device has {}", s.queues.len(), self.queues.len()));
        }
        self.reset();
        self.driver_features = s.driver_features;
        self.queues = s.queues.clone();
        self.config_vector = s.config_vector;
        self.config_generation = s.config_generation;
        if s.status & STATUS_FEATURES_OK != 0 {
            self.dev().ack_features(s.driver_features);
        }
        self.status.store(s.status & !STATUS_DRIVER_OK, Ordering::SeqCst);
        if s.status & STATUS_DRIVER_OK != 0 && s.status & STATUS_NEEDS_RESET == 0 {
            self.status.store(s.status, Ordering::SeqCst);
            self.activate_restored(interrupt);
        }
        Ok(())
    }

    fn activate_restored(&mut self, interrupt: &Arc<dyn VirtioInterrupt>) {
        let event_idx = self.driver_features & crate::device::VIRTIO_RING_F_EVENT_IDX != 0;
        let mem = self.mem.memory();
        let mut active = Vec::new();
        for (i, cfg) in self.queues.iter().enumerate() {
            if !cfg.ready {
                continue;
            }
            let used_idx = mem.read_obj::<u16>(GuestAddress(cfg.used.wrapping_add(2))).ok();
            let q = match build_queue(self.max_sizes[i], cfg, event_idx, &*mem, used_idx) {
                Ok(q) => q,
                Err(e) => return self.fail(&format!("restored queue {i}: {e}")),
            };
            let Ok(event) = self.queue_events[i].try_clone() else { return self.fail("eventfd clone") };
            // Process whatever the driver queued while we were away.
            let _ = self.queue_events[i].write(1);
            active.push(ActiveQueue { index: i as u16, queue: q, event });
        }
        drop(mem);
        let r = self.dev().activate(self.mem.clone(), interrupt.clone(), active);
        match r {
            Ok(()) => self.active = true,
            Err(e) => self.fail(&e.to_string()),
        }
    }
}

/// Turn a driver's queue configuration into a validated queue.
pub fn build_queue<M: vm_memory::GuestMemory>(
    max: u16,
    cfg: &QueueConfig,
    event_idx: bool,
    mem: &M,
    position: Option<u16>,
) -> Result<Queue, String> {
    if cfg.size == 0 || cfg.size > max || !cfg.size.is_power_of_two() {
        return Err(format!("size {} is not a power of two up to {max}", cfg.size));
    }
    let mut q = Queue::new(max).map_err(|e| e.to_string())?;
    q.try_set_size(cfg.size).map_err(|e| e.to_string())?;
    q.try_set_desc_table_address(GuestAddress(cfg.desc)).map_err(|e| e.to_string())?;
    q.try_set_avail_ring_address(GuestAddress(cfg.avail)).map_err(|e| e.to_string())?;
    q.try_set_used_ring_address(GuestAddress(cfg.used)).map_err(|e| e.to_string())?;
    q.set_event_idx(event_idx);
    q.set_ready(true);
    if !q.is_valid(mem) {
        return Err(format!(
            "rings desc={:#x} avail={:#x} used={:#x} are not inside guest memory",
            cfg.desc, cfg.avail, cfg.used
        ));
    }
    if let Some(p) = position {
        q.set_next_avail(p);
        q.set_next_used(p);
    }
    Ok(q)
}

/// Write `value` into the low (`high == false`) or high half of `target`.
pub fn set_half(target: &mut u64, value: u32, high: bool) {
    if high {
        *target = (*target & 0xffff_ffff) | ((value as u64) << 32);
    } else {
        *target = (*target & !0xffff_ffff) | value as u64;
    }
}
