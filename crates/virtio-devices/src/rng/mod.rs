//! virtio-rng (entropy device, virtio 1.x section 5.4): fills each
//! device-writable buffer the guest offers with bytes from a host source
//! (/dev/urandom by default).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use devices::GuestMemory;
use migration::{MigrationError, Snapshot, Snapshottable};
use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;

use crate::common::DeviceCommon;
use crate::device::{
    ActivateError, ActiveQueue, COMMON_FEATURES, TYPE_RNG, VirtioDevice, VirtioInterrupt, check_queue_count,
};
use crate::queue::{drain_queue, parse_chain, write_bufs};
use crate::worker::{DeviceBroken, QueueHandler};

const QUEUE_SIZE: u16 = 256;
/// Bytes handed out per request at most, so one huge buffer cannot stall the
/// worker (the driver simply asks again).
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("cannot open entropy source {0}: {1}")]
    Open(PathBuf, std::io::Error),
}

#[derive(Default)]
struct RngCounters {
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RngState {
    pub acked_features: u64,
}

pub struct Rng {
    common: DeviceCommon,
    source: PathBuf,
    counters: Arc<RngCounters>,
}

impl Rng {
    /// An rng named `id` reading `source` (normally /dev/urandom).
    pub fn new(id: &str, source: &Path) -> Result<Self, RngError> {
        // Open once now so a bad path is reported at startup, not at boot.
        File::open(source).map_err(|e| RngError::Open(source.to_path_buf(), e))?;
        Ok(Self {
            common: DeviceCommon::new(id, COMMON_FEATURES, vec![QUEUE_SIZE]),
            source: source.to_path_buf(),
            counters: Arc::default(),
        })
    }
}

struct RngHandler {
    mem: GuestMemory,
    queue: Queue,
    index: u16,
    interrupt: Arc<dyn VirtioInterrupt>,
    source: File,
    counters: Arc<RngCounters>,
    buf: Vec<u8>,
}

impl QueueHandler for RngHandler {
    fn queue_notified(&mut self, _index: usize) -> Result<(), DeviceBroken> {
        let mem = self.mem.memory();
        let (source, counters, buf) = (&mut self.source, &self.counters, &mut self.buf);
        drain_queue(&mut self.queue, &*mem, &*self.interrupt, self.index, |chain| {
            counters.requests.fetch_add(1, Ordering::Relaxed);
            let Ok(p) = parse_chain(chain, u32::MAX as u64) else {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                return Some(0);
            };
            let want = (p.writable_len() as usize).min(MAX_REQUEST);
            buf.resize(want, 0);
            if source.read_exact(buf).is_err() {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                return Some(0);
            }
            let n = write_bufs(&*mem, &p.writable, 0, buf).unwrap_or(0);
            counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
            Some(n as u32)
        })
        .map(|_| ())
        .map_err(|e| DeviceBroken(format!("virtio-rng: {e}")))
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn common(&self) -> &DeviceCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        check_queue_count(&self.common.id, 1, &queues)?;
        let source =
            File::open(&self.source).map_err(|e| ActivateError::Backend(self.common.id.clone(), e.to_string()))?;
        let (mut qs, idx, evts) = DeviceCommon::split(queues);
        let handler = RngHandler {
            mem,
            queue: qs.remove(0),
            index: idx[0],
            interrupt: interrupt.clone(),
            source,
            counters: self.counters.clone(),
            buf: Vec::new(),
        };
        self.common.start(evts, vec![], interrupt, Box::new(handler))
    }
    fn counters(&self) -> BTreeMap<String, u64> {
        let c = &self.counters;
        BTreeMap::from([
            ("requests".into(), c.requests.load(Ordering::Relaxed)),
            ("bytes".into(), c.bytes.load(Ordering::Relaxed)),
            ("errors".into(), c.errors.load(Ordering::Relaxed)),
        ])
    }
}

crate::common_pausable!(Rng);

impl Snapshottable for Rng {
    fn id(&self) -> String {
        self.common.id.clone()
    }
    fn snapshot(&mut self) -> Result<Option<Snapshot>, MigrationError> {
        Snapshot::new(&self.common.id, &RngState { acked_features: self.common.acked_features }).map(Some)
    }
    fn restore(&mut self, s: &Snapshot) -> Result<(), MigrationError> {
        let st: RngState = s.to_state()?;
        self.common.ack(st.acked_features);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
