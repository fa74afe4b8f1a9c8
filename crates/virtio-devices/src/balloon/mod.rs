//! virtio-balloon (virtio 1.x section 5.5): the host sets a target size
//! through a [`BalloonHandle`] (control socket), the guest inflates (gives
//! pages back, which we discard so host RSS drops) or deflates towards it,
//! and reports memory statistics on the stats queue.

mod handler;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::GuestMemory;
use migration::{MigrationError, Snapshot, Snapshottable};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use crate::common::DeviceCommon;
use crate::device::{
    ActivateError, ActiveQueue, COMMON_FEATURES, TYPE_BALLOON, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
    read_config_bytes,
};
use handler::{BalloonHandler, QueueKind, TIMER_TOKEN};
pub use handler::{PAGE_SIZE, discard_range};

pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u64 = 1 << 0;
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;

const QUEUE_SIZE: u16 = 256;
const PAGES_PER_MIB: u64 = (1 << 20) / PAGE_SIZE;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BalloonError {
    #[error("balloon target {target} MiB exceeds guest memory ({memory} MiB)")]
    TargetTooBig { target: u64, memory: u64 },
    #[error(
        "--balloon: unknown option '{0}'; syntax: [size=MIB][,deflate_on_oom=on|off][,stats=SECS][,free_page_reporting=on|off]"
    )]
    UnknownOption(String),
    #[error("--balloon: invalid value '{1}' for {0}")]
    BadValue(String, String),
}

/// `--balloon [size=MIB][,deflate_on_oom=on|off][,stats=SECS][,free_page_reporting=on|off]`:
/// initial target, whether the guest may deflate under memory pressure, how
/// often to poll statistics (0 disables the stats queue), and whether the
/// guest reports free memory so the host can reclaim it without a target.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonConfig {
    pub size_mib: u64,
    pub deflate_on_oom: bool,
    pub stats_interval_s: u64,
    #[serde(default)]
    pub free_page_reporting: bool,
}

impl Default for BalloonConfig {
    fn default() -> Self {
        BalloonConfig { size_mib: 0, deflate_on_oom: true, stats_interval_s: 5, free_page_reporting: false }
    }
}

fn on_off(v: &str) -> Option<bool> {
    match v {
        "on" | "true" => Some(true),
        "off" | "false" => Some(false),
        _ => None,
    }
}

impl FromStr for BalloonConfig {
    type Err = BalloonError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut c = BalloonConfig::default();
        for part in s.split(',').filter(|p| !p.is_empty() && *p != "on") {
            let (k, v) = part.split_once('=').ok_or_else(|| BalloonError::UnknownOption(part.into()))?;
            let bad = || BalloonError::BadValue(k.into(), v.into());
            match k {
                "size" => c.size_mib = v.trim_end_matches("M").parse().map_err(|_| bad())?,
                "deflate_on_oom" => c.deflate_on_oom = on_off(v).ok_or_else(bad)?,
                "free_page_reporting" => c.free_page_reporting = on_off(v).ok_or_else(bad)?,
                "stats" => c.stats_interval_s = v.trim_end_matches('s').parse().map_err(|_| bad())?,
                _ => return Err(BalloonError::UnknownOption(k.into())),
            }
        }
        Ok(c)
    }
}

/// Guest memory statistics (VIRTIO_BALLOON_S_*), in bytes or counts as the
/// guest reports them; None for tags the guest did not send.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonStats {
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    pub free_memory: Option<u64>,
    pub total_memory: Option<u64>,
    pub available_memory: Option<u64>,
    pub disk_caches: Option<u64>,
    pub hugetlb_allocations: Option<u64>,
    pub hugetlb_failures: Option<u64>,
    pub oom_kills: Option<u64>,
    pub alloc_stalls: Option<u64>,
    pub async_scans: Option<u64>,
    pub direct_scans: Option<u64>,
    pub async_reclaims: Option<u64>,
    pub direct_reclaims: Option<u64>,
}

impl BalloonStats {
    fn set(&mut self, tag: u16, v: u64) {
        let slot = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            10 => &mut self.oom_kills,
            11 => &mut self.alloc_stalls,
            12 => &mut self.async_scans,
            13 => &mut self.direct_scans,
            14 => &mut self.async_reclaims,
            15 => &mut self.direct_reclaims,
            _ => return,
        };
        *slot = Some(v);
    }
}

#[derive(Default, Debug)]
pub struct BalloonCounters {
    pub inflated_pages: AtomicU64,
    pub deflated_pages: AtomicU64,
    pub stats_updates: AtomicU64,
    pub reported_pages: AtomicU64,
    pub errors: AtomicU64,
}

/// State shared by the device, its worker and every handle.
pub struct BalloonShared {
    /// Target in 4 KiB pages (config `num_pages`).
    num_pages: AtomicU32,
    /// What the driver says it holds (config `actual`).
    actual: AtomicU32,
    memory_mib: u64,
    stats: Mutex<Option<BalloonStats>>,
    interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    pub counters: BalloonCounters,
}

/// Cloneable control of a balloon for the control socket
/// (`Request::Balloon { target_mib }`) and status queries.
#[derive(Clone)]
pub struct BalloonHandle(Arc<BalloonShared>);

impl BalloonHandle {
    /// Ask the guest to shrink to leave `mib` MiB in the balloon (0 = give
    /// everything back). Raises a config-change interrupt if the driver is up.
    pub fn set_target_mib(&self, mib: u64) -> Result<(), BalloonError> {
        if mib > self.0.memory_mib {
            return Err(BalloonError::TargetTooBig { target: mib, memory: self.0.memory_mib });
        }
        self.0.num_pages.store((mib * PAGES_PER_MIB) as u32, Ordering::SeqCst);
        if let Some(irq) = self.0.interrupt.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && let Err(e) = irq.trigger(VirtioInterruptType::Config)
        {
            tracing::warn!("virtio-balloon: cannot signal config change: {e}");
        }
        Ok(())
    }

    pub fn target_mib(&self) -> u64 {
        self.0.num_pages.load(Ordering::SeqCst) as u64 / PAGES_PER_MIB
    }

    /// How much the guest has actually put in the balloon.
    pub fn actual_mib(&self) -> u64 {
        self.0.actual.load(Ordering::SeqCst) as u64 / PAGES_PER_MIB
    }

    /// The latest statistics the guest reported, if any.
    pub fn stats(&self) -> Option<BalloonStats> {
        self.0.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn counters(&self) -> &BalloonCounters {
        &self.0.counters
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BalloonState {
    pub num_pages: u32,
    pub actual: u32,
    pub acked_features: u64,
}

pub struct Balloon {
    common: DeviceCommon,
    shared: Arc<BalloonShared>,
    stats_interval: Duration,
}

impl Balloon {
    /// A balloon for a guest with `memory_mib` MiB of RAM.
    pub fn new(id: &str, cfg: &BalloonConfig, memory_mib: u64) -> Result<Self, BalloonError> {
        if cfg.size_mib > memory_mib {
            return Err(BalloonError::TargetTooBig { target: cfg.size_mib, memory: memory_mib });
        }
        let mut features = COMMON_FEATURES;
        if cfg.deflate_on_oom {
            features |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        if cfg.stats_interval_s > 0 {
            features |= VIRTIO_BALLOON_F_STATS_VQ;
        }
        if cfg.free_page_reporting {
            features |= VIRTIO_BALLOON_F_REPORTING;
        }
        let shared = Arc::new(BalloonShared {
            num_pages: AtomicU32::new((cfg.size_mib * PAGES_PER_MIB) as u32),
            actual: AtomicU32::new(0),
            memory_mib,
            stats: Mutex::new(None),
            interrupt: Mutex::new(None),
            counters: BalloonCounters::default(),
        });
        Ok(Balloon {
            common: DeviceCommon::new(id, features, vec![QUEUE_SIZE; 4]),
            shared,
            stats_interval: Duration::from_secs(cfg.stats_interval_s.max(1)),
        })
    }

    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle(self.shared.clone())
    }

    fn config_bytes(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..4].copy_from_slice(&self.shared.num_pages.load(Ordering::SeqCst).to_le_bytes());
        c[4..].copy_from_slice(&self.shared.actual.load(Ordering::SeqCst).to_le_bytes());
        c
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }
    fn common(&self) -> &DeviceCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is driver-writable.
        let mut c = self.config_bytes();
        crate::device::write_config_bytes(&mut c, offset, data);
        if offset >= 4 {
            self.shared.actual.store(u32::from_le_bytes([c[4], c[5], c[6], c[7]]), Ordering::SeqCst);
        }
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let stats = self.common.has_feature(VIRTIO_BALLOON_F_STATS_VQ);
        let mut kinds = vec![QueueKind::Inflate, QueueKind::Deflate];
        if stats {
            kinds.push(QueueKind::Stats);
        }
        if self.common.has_feature(VIRTIO_BALLOON_F_REPORTING) {
            kinds.push(QueueKind::Reporting);
        }
        let expected = kinds.len();
        // Extra enabled queues beyond the negotiated ones are ignored.
        if queues.len() < expected {
            return Err(ActivateError::QueueCount { device: self.common.id.clone(), expected, got: queues.len() });
        }
        let (mut qs, mut index, mut evts) = DeviceCommon::split(queues);
        qs.truncate(expected);
        index.truncate(expected);
        evts.truncate(expected);
        let mut extra = Vec::new();
        let timer = if stats {
            let mut t = TimerFd::new().map_err(|e| ActivateError::Worker(self.common.id.clone(), e.into()))?;
            t.reset(self.stats_interval, Some(self.stats_interval))
                .map_err(|e| ActivateError::Worker(self.common.id.clone(), e.into()))?;
            extra.push((t.as_raw_fd(), EventSet::IN, TIMER_TOKEN));
            Some(t)
        } else {
            None
        };
        *self.shared.interrupt.lock().unwrap_or_else(|e| e.into_inner()) = Some(interrupt.clone());
        let handler = BalloonHandler {
            mem,
            interrupt: interrupt.clone(),
            queues: qs,
            kinds,
            index,
            shared: self.shared.clone(),
            stats_head: None,
            timer,
        };
        self.common.start(evts, extra, interrupt, Box::new(handler))
    }
    fn reset(&mut self) {
        self.common.reset();
        *self.shared.interrupt.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // `actual` is kept: the transport resets the device while restoring a
        // snapshot, and a rebooted driver rewrites it once it loads.
    }
    fn counters(&self) -> BTreeMap<String, u64> {
        let c = &self.shared.counters;
        BTreeMap::from([
            ("inflated_pages".into(), c.inflated_pages.load(Ordering::Relaxed)),
            ("deflated_pages".into(), c.deflated_pages.load(Ordering::Relaxed)),
            ("stats_updates".into(), c.stats_updates.load(Ordering::Relaxed)),
            ("reported_pages".into(), c.reported_pages.load(Ordering::Relaxed)),
            ("errors".into(), c.errors.load(Ordering::Relaxed)),
            ("target_pages".into(), self.shared.num_pages.load(Ordering::SeqCst) as u64),
            ("actual_pages".into(), self.shared.actual.load(Ordering::SeqCst) as u64),
        ])
    }
}

crate::common_pausable!(Balloon);

impl Snapshottable for Balloon {
    fn id(&self) -> String {
        self.common.id.clone()
    }
    fn snapshot(&mut self) -> Result<Option<Snapshot>, MigrationError> {
        let st = BalloonState {
            num_pages: self.shared.num_pages.load(Ordering::SeqCst),
            actual: self.shared.actual.load(Ordering::SeqCst),
            acked_features: self.common.acked_features,
        };
        Snapshot::new(&self.common.id, &st).map(Some)
    }
    fn restore(&mut self, s: &Snapshot) -> Result<(), MigrationError> {
        let st: BalloonState = s.to_state()?;
        self.shared.num_pages.store(st.num_pages, Ordering::SeqCst);
        self.shared.actual.store(st.actual, Ordering::SeqCst);
        self.common.ack(st.acked_features);
        Ok(())
    }
}
