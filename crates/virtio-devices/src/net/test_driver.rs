//! A minimal virtio driver for unit tests: split rings laid out in test
//! guest memory, chains published on the available ring, used entries read
//! back, and an interrupt sink that counts. Shared by the net, vsock and
//! balloon tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::device::{ActiveQueue, VirtioInterrupt, VirtioInterruptType};

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

pub fn guest_memory(size: u64) -> (GuestMemoryMmap, devices::GuestMemory) {
    let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
    (m.clone(), GuestMemoryAtomic::new(m))
}

#[derive(Default)]
pub struct TestIrq {
    pub queue: AtomicU64,
    pub config: AtomicU64,
    pub resets: AtomicU64,
}

impl VirtioInterrupt for TestIrq {
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()> {
        match kind {
            VirtioInterruptType::Config => self.config.fetch_add(1, Ordering::SeqCst),
            VirtioInterruptType::Queue(_) => self.queue.fetch_add(1, Ordering::SeqCst),
        };
        Ok(())
    }
    fn set_needs_reset(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
    }
}

/// The driver's view of one split queue at `base` in guest memory.
pub struct Driver {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    /// Kick: a clone of the EventFd the device waits on.
    pub kick: Option<EventFd>,
}

impl Driver {
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * size as u64;
        let used = (avail + 6 + 2 * size as u64 + 3) & !3;
        Driver { mem: mem.clone(), size, desc, avail, used, next_desc: 0, avail_idx: 0, used_seen: 0, kick: None }
    }

    /// The queue as a transport would hand it over, plus its EventFd.
    pub fn activate(&mut self, index: u16, event_idx: bool) -> ActiveQueue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        assert!(q.is_valid(&self.mem));
        let event = EventFd::new(EFD_NONBLOCK).unwrap();
        self.kick = Some(event.try_clone().unwrap());
        ActiveQueue { index, queue: q, event }
    }

    pub fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc + 16 * i as u64);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).unwrap();
    }

    /// Publish a chain of (addr, len, device-writable) buffers; returns its head.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, (addr, len, write)) in bufs.iter().enumerate() {
            let i = (self.next_desc + k as u16) % self.size;
            let last = k + 1 == bufs.len();
            let flags = if *write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.write_desc(i, *addr, *len, flags, (i + 1) % self.size);
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Put `head` on the available ring and bump the index.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * (self.avail_idx % self.size) as u64;
        self.mem.write_obj(head.to_le(), GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2)).unwrap();
    }

    /// Set the available index to anything (hostile drivers).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.mem.write_obj(idx.to_le(), GuestAddress(self.avail + 2)).unwrap();
    }

    pub fn kick(&self) {
        self.kick.as_ref().unwrap().write(1).unwrap();
    }

    /// Used entries (id, len) that appeared since the last call.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = self.used + 4 + 8 * (self.used_seen % self.size) as u64;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Wait until at least `n` new used entries are there.
    pub fn wait_used(&mut self, n: usize, timeout: Duration) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            got.extend(self.take_used());
            if got.len() < n {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        got
    }
}

/// Poll `f` for up to `timeout`.
pub fn wait_for(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

/// xorshift64*: deterministic junk for the hostile-ring tests.
pub fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Fill the queue's descriptor table and available ring with random (but
/// sometimes plausible) entries and publish up to `size` of them, as a
/// hostile driver could. Buffers mostly land in [0, mem_size) and sometimes
/// far outside; flags mix NEXT, WRITE and INDIRECT; `next` is arbitrary.
pub fn scribble(d: &mut Driver, rng: &mut u64, mem_size: u64) {
    for i in 0..d.size {
        let r = next_rand(rng);
        let addr = match r % 8 {
            0 => next_rand(rng),
            1 => mem_size - (r >> 8) % 64,
            _ => 0x10_0000 + (r >> 16) % (mem_size - 0x20_0000),
        };
        let len = match (r >> 4) % 6 {
            0 => 0,
            1 => u32::MAX - (r >> 40) as u32 % 16,
            2 => (r >> 20) as u32 % 16,
            _ => (r >> 24) as u32 % 0x1_2000,
        };
        let flags = ((r >> 32) % 8) as u16;
        let next = ((r >> 48) % (d.size as u64 + 4)) as u16;
        d.write_desc(i, addr, len, flags, next);
    }
    let n = next_rand(rng) % (d.size as u64 + 1);
    for _ in 0..n {
        let head = (next_rand(rng) % (d.size as u64 + 2)) as u16;
        d.publish(head);
    }
    if next_rand(rng).is_multiple_of(16) {
        d.set_avail_idx(next_rand(rng) as u16);
    }
}
