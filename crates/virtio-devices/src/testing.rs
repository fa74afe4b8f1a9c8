//! Test-only helpers: a tiny split-queue driver over guest memory and a
//! virtio-mmio driver sequence, so device tests exercise the real transport,
//! worker thread and queue code end to end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::interrupt::CountingLine;
use devices::{BusDevice, GuestMemory};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use crate::device::{VirtioDevice, VirtioInterrupt, VirtioInterruptType};
use crate::transport::mmio::MmioTransport;
use crate::transport::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK};

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;
pub const MEM_SIZE: u64 = 0x40_0000;

pub fn guest_memory() -> GuestMemory {
    GuestMemoryAtomic::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap())
}

/// A split virtqueue laid out by the "driver" at `base`.
pub struct TestQueue {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl TestQueue {
    pub fn new(base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * size as u64;
        let used = (avail + 6 + 2 * size as u64 + 3) & !3;
        Self { desc, avail, used, size, next_desc: 0, avail_idx: 0, used_seen: 0 }
    }

    pub fn write_desc(&self, mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * i as u64;
        mem.write_obj(addr, GuestAddress(d)).unwrap();
        mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
        mem.write_obj(next, GuestAddress(d + 14)).unwrap();
    }

    /// Add a chain of (addr, len, device-writable) buffers; returns its head.
    pub fn add(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = (self.next_desc + k as u16) % self.size;
            let last = k + 1 == bufs.len();
            let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.write_desc(mem, i, addr, len, flags, (i + 1) % self.size);
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        self.publish(mem, head);
        head
    }

    /// Put `head` in the available ring (no matter what it points to).
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * (self.avail_idx % self.size) as u64;
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2)).unwrap();
    }

    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// The next (id, len) the device returned, if any.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        if idx == self.used_seen {
            return None;
        }
        let e = self.used + 4 + 8 * (self.used_seen % self.size) as u64;
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((mem.read_obj(GuestAddress(e)).unwrap(), mem.read_obj(GuestAddress(e + 4)).unwrap()))
    }

    /// Wait up to 5 s for the device to return a buffer.
    pub fn wait_used(&mut self, mem: &GuestMemory) -> Option<(u32, u32)> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Some(u) = self.pop_used(&mem.memory()) {
                return Some(u);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }
}

/// Records interrupts for devices activated directly (without a transport).
#[allow(dead_code)]
#[derive(Default)]
pub struct TestInterrupt {
    pub queue: AtomicU64,
    pub config: AtomicU64,
    pub resets: AtomicU64,
}

impl VirtioInterrupt for TestInterrupt {
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

use vm_memory::GuestAddressSpace;

/// A device on a virtio-mmio transport plus a driver that talks to it.
pub struct MmioHarness {
    pub transport: MmioTransport,
    pub line: Arc<CountingLine>,
    pub mem: GuestMemory,
    pub queues: Vec<TestQueue>,
}

impl MmioHarness {
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>) -> Self {
        let mem = guest_memory();
        let line = Arc::new(CountingLine { gsi: 5, ..Default::default() });
        let transport = MmioTransport::new(device, mem.clone(), line.clone()).unwrap();
        Self { transport, line, mem, queues: Vec::new() }
    }

    pub fn read(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write(&mut self, off: u64, v: u32) {
        self.transport.write(off, &v.to_le_bytes());
    }

    pub fn status(&mut self) -> u32 {
        self.read(0x70)
    }

    /// Negotiate `features & offered`, set up `sizes.len()` queues at
    /// 0x10000 * (i + 1), and set DRIVER_OK.
    pub fn init(&mut self, features: u64, sizes: &[u16]) {
        self.write(0x70, 0);
        self.write(0x70, STATUS_ACKNOWLEDGE as u32);
        self.write(0x70, (STATUS_ACKNOWLEDGE | STATUS_DRIVER) as u32);
        self.write(0x14, 0);
        let lo = self.read(0x10) as u64;
        self.write(0x14, 1);
        let hi = self.read(0x10) as u64;
        let f = features & (lo | hi << 32);
        self.write(0x24, 0);
        self.write(0x20, f as u32);
        self.write(0x24, 1);
        self.write(0x20, (f >> 32) as u32);
        self.write(0x70, (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK) as u32);
        self.queues.clear();
        for (i, &size) in sizes.iter().enumerate() {
            let q = TestQueue::new(0x10000 * (i as u64 + 1), size);
            self.write(0x30, i as u32);
            self.write(0x38, size as u32);
            for (off, addr) in [(0x80, q.desc), (0x90, q.avail), (0xa0, q.used)] {
                self.write(off, addr as u32);
                self.write(off + 4, (addr >> 32) as u32);
            }
            self.write(0x44, 1);
            self.queues.push(q);
        }
        self.write(0x70, (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK) as u32);
    }

    pub fn kick(&mut self, queue: u32) {
        self.write(0x50, queue);
    }

    pub fn interrupts(&self) -> u64 {
        self.line.count.load(Ordering::SeqCst)
    }
}
