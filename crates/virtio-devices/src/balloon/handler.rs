//! Balloon queue processing on the worker thread: inflate releases guest
//! pages to the host, deflate only counts (pages fault back in on use),
//! and the stats queue keeps the latest guest statistics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use devices::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::{BalloonShared, BalloonStats};
use crate::device::VirtioInterrupt;
use crate::queue::{QueueError, add_used, drain_queue, notify_used, parse_chain, pop_chain, read_bufs};
use crate::worker::{DeviceBroken, QueueHandler};

/// The balloon always speaks in 4 KiB pages, whatever the guest page size.
pub const PAGE_SHIFT: u64 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// PFNs per inflate/deflate chain we accept (the Linux driver sends 256).
const MAX_PFNS: u64 = 1 << 16;
/// Size of one stats entry: u16 tag, u64 value (packed).
const STAT_LEN: usize = 10;
const MAX_STATS: usize = 64;

pub const INFLATE: usize = 0;
pub const DEFLATE: usize = 1;
pub const TIMER_TOKEN: u64 = 0;

/// What each activated queue is. Drivers number queues densely: stats and
/// reporting queues take the next index only when their feature is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

fn broken(e: QueueError) -> DeviceBroken {
    DeviceBroken(format!("virtio-balloon: {e}"))
}

pub struct BalloonHandler {
    pub mem: GuestMemory,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// inflate, deflate and (when negotiated) stats and reporting.
    pub queues: Vec<Queue>,
    pub kinds: Vec<QueueKind>,
    pub index: Vec<u16>,
    pub shared: Arc<BalloonShared>,
    /// The stats buffer the driver handed us, held until we want fresh stats.
    pub stats_head: Option<u16>,
    pub timer: Option<TimerFd>,
}

/// Give the host pages `[addr, addr + len)` of guest memory back: the
/// mapping stays, its contents become zero-fill-on-demand.
pub fn discard_range(mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> Result<(), std::io::Error> {
    let (region, raddr) = mem
        .to_region_addr(addr)
        .ok_or_else(|| std::io::Error::other(format!("page {:#x} is outside guest memory", addr.0)))?;
    if raddr.0.checked_add(len).is_none_or(|end| end > region.len()) {
        return Err(std::io::Error::other(format!("range {:#x}+{len:#x} crosses a memory region", addr.0)));
    }
    let host = region.get_host_address(raddr).map_err(std::io::Error::other)?;
    // Shared file mappings (memfd, hugetlbfs) keep pages in the file unless
    // the hole is punched (MADV_REMOVE); private anonymous memory is freed by
    // MADV_DONTNEED.
    let advice = if region.file_offset().is_some() { libc::MADV_REMOVE } else { libc::MADV_DONTNEED };
    // SAFETY: [host, host + len) lies inside one guest memory mapping
    // (checked above). Discarding guest pages cannot affect host memory
    // safety: the guest sees zeroes on its next access.
    let mut r = unsafe { libc::madvise(host.cast(), len as usize, advice) };
    if r < 0 && advice == libc::MADV_REMOVE {
        // SAFETY: as above.
        r = unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_DONTNEED) };
    }
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Decode one stats buffer: packed (u16 tag, u64 value) entries.
fn read_stats(mem: &GuestMemoryMmap, chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> Option<BalloonStats> {
    let p = parse_chain(chain, (MAX_STATS * STAT_LEN) as u64).ok()?;
    let mut raw = vec![0u8; p.readable_len() as usize];
    if read_bufs(mem, &p.readable, 0, &mut raw).ok() != Some(raw.len()) {
        return None;
    }
    let mut stats = BalloonStats::default();
    for e in raw.chunks_exact(STAT_LEN) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let val = u64::from_le_bytes(e[2..10].try_into().unwrap_or_default());
        stats.set(tag, val);
    }
    Some(stats)
}

impl BalloonHandler {
    /// Inflate: the guest gave these pages up.
    fn process_pfns(&mut self, which: usize) -> Result<(), DeviceBroken> {
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let shared = &self.shared;
        let inflate = which == INFLATE;
        drain_queue(&mut self.queues[which], mem, &*self.interrupt, self.index[which], |chain| {
            let Ok(p) = parse_chain(chain, MAX_PFNS * 4) else {
                shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                return Some(0);
            };
            let mut raw = vec![0u8; p.readable_len() as usize & !3];
            if read_bufs(mem, &p.readable, 0, &mut raw).ok() != Some(raw.len()) {
                shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                return Some(0);
            }
            let mut pfns: Vec<u64> =
                raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64).collect();
            if !inflate {
                shared.counters.deflated_pages.fetch_add(pfns.len() as u64, Ordering::Relaxed);
                return Some(0);
            }
            shared.counters.inflated_pages.fetch_add(pfns.len() as u64, Ordering::Relaxed);
            // Coalesce runs of consecutive pages into one madvise each.
            pfns.sort_unstable();
            pfns.dedup();
            let mut i = 0;
            while i < pfns.len() {
                let mut j = i + 1;
                while j < pfns.len() && pfns[j] == pfns[j - 1] + 1 {
                    j += 1;
                }
                let addr = GuestAddress(pfns[i] << PAGE_SHIFT);
                if let Err(e) = discard_range(mem, addr, (j - i) as u64 * PAGE_SIZE) {
                    tracing::debug!("virtio-balloon: cannot discard: {e}");
                    shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                i = j;
            }
            Some(0)
        })
        .map_err(broken)?;
        Ok(())
    }

    /// The driver (re)filled the stats buffer: record it and keep the buffer.
    fn process_stats(&mut self) -> Result<(), DeviceBroken> {
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let Some(pos) = self.position(QueueKind::Stats) else { return Ok(()) };
        let ring = |e: virtio_queue::Error| broken(QueueError::Ring(e.to_string()));
        loop {
            self.queues[pos].disable_notification(mem).map_err(ring)?;
            while let Some(chain) = pop_chain(&mut self.queues[pos], mem).map_err(broken)? {
                let head = chain.head_index();
                // A second buffer while we hold one: return the old one unused.
                if let Some(old) = self.stats_head.replace(head) {
                    add_used(&mut self.queues[pos], mem, old, 0).map_err(broken)?;
                }
                match read_stats(mem, chain) {
                    Some(stats) => {
                        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
                        self.shared.counters.stats_updates.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        self.shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // With EVENT_IDX this publishes our position, without which the
            // driver would never kick for its next stats buffer.
            if !self.queues[pos].enable_notification(mem).map_err(ring)? {
                return Ok(());
            }
        }
    }

    /// Ask the driver for fresh statistics by returning its buffer.
    fn request_stats(&mut self) -> Result<(), DeviceBroken> {
        if let Some(t) = self.timer.as_mut() {
            let _ = t.wait();
        }
        let Some(pos) = self.position(QueueKind::Stats) else { return Ok(()) };
        let Some(head) = self.stats_head.take() else { return Ok(()) };
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let q = &mut self.queues[pos];
        add_used(q, mem, head, 0).map_err(broken)?;
        notify_used(q, mem, &*self.interrupt, self.index[pos]).map_err(broken)
    }

    fn position(&self, kind: QueueKind) -> Option<usize> {
        self.kinds.iter().position(|k| *k == kind)
    }

    /// Free page reporting: each buffer of a chain *is* a free guest range
    /// (normally a 2 or 4 MiB block); discard it and hand the chain back.
    fn process_reports(&mut self, pos: usize) -> Result<(), DeviceBroken> {
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let shared = &self.shared;
        drain_queue(&mut self.queues[pos], mem, &*self.interrupt, self.index[pos], |chain| {
            let Ok(p) = parse_chain(chain, 1 << 40) else {
                shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                return Some(0);
            };
            for b in p.readable.iter().chain(&p.writable) {
                if !b.addr.0.is_multiple_of(PAGE_SIZE) || !(b.len as u64).is_multiple_of(PAGE_SIZE) {
                    shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match discard_range(mem, b.addr, b.len as u64) {
                    Ok(()) => {
                        shared.counters.reported_pages.fetch_add(b.len as u64 / PAGE_SIZE, Ordering::Relaxed);
                    }
                    Err(_) => {
                        shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some(0)
        })
        .map_err(broken)?;
        Ok(())
    }
}

impl QueueHandler for BalloonHandler {
    fn queue_notified(&mut self, index: usize) -> Result<(), DeviceBroken> {
        match self.kinds.get(index) {
            Some(QueueKind::Inflate) => self.process_pfns(INFLATE),
            Some(QueueKind::Deflate) => self.process_pfns(DEFLATE),
            Some(QueueKind::Stats) => self.process_stats(),
            Some(QueueKind::Reporting) => self.process_reports(index),
            None => Ok(()),
        }
    }

    fn fd_ready(&mut self, token: u64, _events: EventSet) -> Result<(), DeviceBroken> {
        if token == TIMER_TOKEN { self.request_stats() } else { Ok(()) }
    }
}
