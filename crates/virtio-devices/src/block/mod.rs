//! virtio-blk (virtio 1.x section 5.2) over an `image::BlockBackend` (raw or
//! qcow2): read, write, flush, get-id, discard and write-zeroes, with many
//! requests in flight through io_uring (`io=io_uring`, raw images; the
//! default `io=auto` picks it when the kernel allows) or a pool of blocking
//! I/O threads (`io=threads`, qcow2), and O_DIRECT for `cache=none`.

pub mod config;
mod pool;
mod raw_io;
pub mod request;
mod uring;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use devices::GuestMemory;
use image::{BlockBackend, Format, OpenOptions};
use migration::{MigrationError, Snapshot, Snapshottable};
use virtio_bindings::virtio_blk::*;
use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;

pub use config::{CacheMode, DiskConfig, DiskConfigError, DiskFormat, IoEngine};
use request::{Kind, Limits, SECTOR_SIZE};

use crate::common::DeviceCommon;
use crate::device::{
    ActivateError, ActiveQueue, COMMON_FEATURES, TYPE_BLOCK, VirtioDevice, VirtioInterrupt, check_queue_count,
    read_config_bytes,
};

pub const QUEUE_SIZE: u16 = 256;
/// Largest single segment the driver may use (advertised as size_max).
pub const SIZE_MAX: u32 = 1 << 20;
/// Largest request accepted; bigger chains are answered with no data.
pub const MAX_REQUEST_BYTES: u64 = 64 << 20;
const CONFIG_LEN: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk {path}: {source}")]
    Open { path: String, source: image::Error },
    #[error("disk {0} is smaller than one 512-byte sector")]
    TooSmall(String),
}

#[derive(Default)]
pub(crate) struct BlockCounters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    pub discards: AtomicU64,
    pub errors: AtomicU64,
    /// Requests that went through io_uring (the rest ran blocking).
    pub async_ops: AtomicU64,
}

impl BlockCounters {
    pub(crate) fn account(&self, kind: Kind, status: u8, bytes: u64) {
        if status != request::S_OK {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match kind {
            Kind::In => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Kind::Out => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                self.write_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Kind::Flush => {
                self.flushes.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Discard | Kind::WriteZeroes => {
                self.discards.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Parse and check a popped chain. A malformed one is counted as an error
/// and `None` is returned: the caller gives it back with nothing written.
pub(crate) fn chain_to_request<M>(
    chain: virtio_queue::DescriptorChain<M>,
    counters: &BlockCounters,
) -> Option<request::Request>
where
    M: Clone + std::ops::Deref,
    M::Target: vm_memory::GuestMemory + Sized,
{
    // A second handle on the chain's memory while the chain is consumed.
    let holder = chain.clone();
    let req = crate::queue::parse_chain(chain, MAX_REQUEST_BYTES)
        .ok()
        .and_then(|parsed| request::parse(holder.memory(), &parsed).ok());
    if req.is_none() {
        counters.errors.fetch_add(1, Ordering::Relaxed);
    }
    req
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BlockState {
    pub acked_features: u64,
    pub capacity_sectors: u64,
}

pub struct Block {
    common: DeviceCommon,
    cfg: DiskConfig,
    disk: Arc<dyn BlockBackend>,
    limits: Limits,
    config_space: [u8; CONFIG_LEN],
    serial: Vec<u8>,
    counters: Arc<BlockCounters>,
}

fn feature(bit: u32) -> u64 {
    1 << bit
}

impl Block {
    /// Open the disk described by `cfg` as device `id`.
    pub fn new(id: &str, cfg: &DiskConfig) -> Result<Self, BlockError> {
        let opts = OpenOptions {
            format: match cfg.format {
                DiskFormat::Auto => None,
                DiskFormat::Raw => Some(Format::Raw),
                DiskFormat::Qcow2 => Some(Format::Qcow2),
            },
            readonly: cfg.readonly,
            direct: cfg.cache == CacheMode::None,
            ..Default::default()
        };
        let disk: Arc<dyn BlockBackend> = Arc::from(
            image::open_with(&cfg.path, &opts)
                .map_err(|source| BlockError::Open { path: cfg.path.display().to_string(), source })?,
        );
        if cfg.cache == CacheMode::None && disk.format() != Format::Raw {
            // The qcow2 engine reads and writes through the host page cache.
            tracing::warn!("{id}: cache=none applies to raw images; {} uses the host page cache", cfg.path.display());
        }
        Self::with_backend(id, cfg, disk)
    }

    /// A device over an already open backend.
    pub fn with_backend(id: &str, cfg: &DiskConfig, disk: Arc<dyn BlockBackend>) -> Result<Self, BlockError> {
        let capacity_sectors = disk.size() / SECTOR_SIZE;
        if capacity_sectors == 0 {
            return Err(BlockError::TooSmall(cfg.path.display().to_string()));
        }
        let readonly = cfg.readonly || disk.is_readonly();
        let limits = Limits {
            capacity_sectors,
            max_discard_sectors: 0x40_0000,
            max_discard_seg: 32,
            max_write_zeroes_sectors: 0x40_0000,
            max_write_zeroes_seg: 32,
            readonly,
            discard: !readonly,
            write_zeroes: !readonly,
        };
        let mut features = COMMON_FEATURES
            | feature(VIRTIO_BLK_F_SIZE_MAX)
            | feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_BLK_SIZE)
            | feature(VIRTIO_BLK_F_FLUSH)
            | feature(VIRTIO_BLK_F_TOPOLOGY);
        if readonly {
            features |= feature(VIRTIO_BLK_F_RO);
        } else {
            features |= feature(VIRTIO_BLK_F_DISCARD) | feature(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        let serial = cfg.serial.clone().unwrap_or_else(|| id.to_string()).into_bytes();
        let mut dev = Self {
            common: DeviceCommon::new(id, features, vec![QUEUE_SIZE]),
            cfg: cfg.clone(),
            disk,
            limits,
            config_space: [0; CONFIG_LEN],
            serial,
            counters: Arc::default(),
        };
        dev.build_config();
        Ok(dev)
    }

    fn build_config(&mut self) {
        let l = &self.limits;
        let c = &mut self.config_space;
        c[0..8].copy_from_slice(&l.capacity_sectors.to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&(QUEUE_SIZE as u32 - 2).to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        // Topology: 4 KiB physical blocks (2^3 logical), min I/O one block.
        c[24] = 3;
        c[26..28].copy_from_slice(&1u16.to_le_bytes());
        c[34..36].copy_from_slice(&1u16.to_le_bytes());
        c[36..40].copy_from_slice(&l.max_discard_sectors.to_le_bytes());
        c[40..44].copy_from_slice(&l.max_discard_seg.to_le_bytes());
        c[44..48].copy_from_slice(&8u32.to_le_bytes());
        c[48..52].copy_from_slice(&l.max_write_zeroes_sectors.to_le_bytes());
        c[52..56].copy_from_slice(&l.max_write_zeroes_seg.to_le_bytes());
        c[56] = 1;
    }

    pub fn config(&self) -> &DiskConfig {
        &self.cfg
    }
}

pub(crate) struct BlockHandler {
    pub mem: GuestMemory,
    pub queue: Queue,
    pub index: u16,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub disk: Arc<dyn BlockBackend>,
    pub limits: Limits,
    pub serial: Vec<u8>,
    pub counters: Arc<BlockCounters>,
    pub scratch: Vec<u8>,
    /// Raw images: the file itself, for zero-copy reads and writes.
    pub raw: Option<raw_io::RawFile>,
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn common(&self) -> &DeviceCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        check_queue_count(&self.common.id, 1, &queues)?;
        let (mut qs, idx, evts) = DeviceCommon::split(queues);
        let mut handler = BlockHandler {
            mem,
            queue: qs.remove(0),
            index: idx[0],
            interrupt: interrupt.clone(),
            disk: self.disk.clone(),
            limits: self.limits,
            serial: self.serial.clone(),
            counters: self.counters.clone(),
            scratch: Vec::new(),
            raw: None,
        };
        if self.disk.format() == Format::Raw {
            match raw_io::RawFile::open(&self.cfg, self.limits.readonly) {
                Ok(f) => handler.raw = Some(f),
                Err(e) => tracing::warn!("{}: zero-copy path off, cannot reopen the image: {e}", self.common.id),
            }
        }
        let raw = self.disk.format() == Format::Raw;
        let parts = match (self.cfg.io, raw) {
            (IoEngine::Threads, _) => None,
            (IoEngine::IoUring, false) => {
                tracing::warn!("{}: io=io_uring works on raw images; using threads for this disk", self.common.id);
                None
            }
            (IoEngine::Auto, false) => None,
            (IoEngine::IoUring, true) => Some(
                uring::UringParts::new()
                    .map_err(|e| ActivateError::Backend(self.common.id.clone(), format!("io_uring: {e}")))?,
            ),
            (IoEngine::Auto, true) => uring::UringParts::new()
                .inspect_err(|e| tracing::debug!("{}: io_uring unavailable ({e}), using threads", self.common.id))
                .ok(),
        };
        if let Some(parts) = parts {
            match handler.raw.take() {
                Some(file) => {
                    let engine = uring::UringHandler::new(handler, file, parts);
                    let fd = engine.completion_fd();
                    return self.common.start(evts, vec![(fd, EventSet::IN, 0)], interrupt, Box::new(engine));
                }
                None if self.cfg.io == IoEngine::IoUring => {
                    let why = "io_uring: cannot reopen the image (see the warning above)".to_string();
                    return Err(ActivateError::Backend(self.common.id.clone(), why));
                }
                // io=auto: the pool serves it through the image backend.
                None => {}
            }
        }
        let engine = pool::PoolHandler::new(handler)
            .map_err(|e| ActivateError::Backend(self.common.id.clone(), format!("I/O threads: {e}")))?;
        let fd = engine.completion_fd();
        self.common.start(evts, vec![(fd, EventSet::IN, 0)], interrupt, Box::new(engine))
    }
    fn counters(&self) -> BTreeMap<String, u64> {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BTreeMap::from([
            ("read_ops".into(), l(&c.reads)),
            ("write_ops".into(), l(&c.writes)),
            ("read_bytes".into(), l(&c.read_bytes)),
            ("write_bytes".into(), l(&c.write_bytes)),
            ("flush_ops".into(), l(&c.flushes)),
            ("discard_ops".into(), l(&c.discards)),
            ("errors".into(), l(&c.errors)),
            ("async_ops".into(), l(&c.async_ops)),
        ])
    }
}

crate::common_pausable!(Block);

impl Snapshottable for Block {
    fn id(&self) -> String {
        self.common.id.clone()
    }
    fn snapshot(&mut self) -> Result<Option<Snapshot>, MigrationError> {
        let st =
            BlockState { acked_features: self.common.acked_features, capacity_sectors: self.limits.capacity_sectors };
        Snapshot::new(&self.common.id, &st).map(Some)
    }
    fn restore(&mut self, s: &Snapshot) -> Result<(), MigrationError> {
        let st: BlockState = s.to_state()?;
        if st.capacity_sectors != self.limits.capacity_sectors {
            return Err(MigrationError::Restore(
                self.common.id.clone(),
                format!("disk has {} sectors, snapshot expects {}", self.limits.capacity_sectors, st.capacity_sectors),
            ));
        }
        self.common.ack(st.acked_features);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
