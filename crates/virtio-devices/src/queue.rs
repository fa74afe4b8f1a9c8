//! Queue plumbing shared by the devices: popping chains with ring sanity
//! checks, turning a descriptor chain into validated readable/writable
//! buffer lists, scatter/gather copies, and used-buffer notification with
//! EVENT_IDX suppression.
//!
//! Everything here treats the guest as hostile: indices past the queue size,
//! chains that loop, buffers outside guest memory and lengths that overflow
//! are reported as errors, never followed.

use std::num::Wrapping;
use std::ops::Deref;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use crate::device::{VirtioInterrupt, VirtioInterruptType};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("available ring index {avail} is more than {size} entries ahead of {next}")]
    AvailIndex { avail: u16, next: u16, size: u16 },
    #[error("cannot access the rings: {0}")]
    Ring(String),
    #[error("descriptor chain is truncated (loops or points past the table)")]
    Truncated,
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadAfterWrite,
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("descriptor chain carries more than {0} bytes")]
    TooLong(u64),
}

/// One guest buffer of a chain, already checked to lie in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A chain split into the part the device reads and the part it writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedChain {
    pub head: u16,
    pub readable: Vec<Buf>,
    pub writable: Vec<Buf>,
}

impl ParsedChain {
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|b| b.len as u64).sum()
    }
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|b| b.len as u64).sum()
    }
}

/// Pop the next available chain. `Ok(None)` when the ring is empty; `Err`
/// when the driver published an impossible available index.
pub fn pop_chain<M>(queue: &mut Queue, mem: M) -> Result<Option<DescriptorChain<M>>, QueueError>
where
    M: Clone + Deref,
    M::Target: GuestMemory + Sized,
{
    let avail = queue.avail_idx(mem.deref(), Ordering::Acquire).map_err(|e| QueueError::Ring(e.to_string()))?;
    let next = Wrapping(queue.next_avail());
    let pending = (avail - next).0;
    if pending == 0 {
        return Ok(None);
    }
    if pending > queue.size() {
        return Err(QueueError::AvailIndex { avail: avail.0, next: next.0, size: queue.size() });
    }
    Ok(queue.pop_descriptor_chain(mem))
}

/// Walk `chain`, checking every buffer against guest memory, the
/// readable-before-writable rule, termination and a total-size cap.
pub fn parse_chain<M>(mut chain: DescriptorChain<M>, max_bytes: u64) -> Result<ParsedChain, QueueError>
where
    M: Clone + Deref,
    M::Target: GuestMemory,
{
    let head = chain.head_index();
    // A second handle on the chain's memory while the chain itself is consumed.
    let holder = chain.clone();
    let m = holder.memory();
    let mut out = ParsedChain { head, ..Default::default() };
    let mut total: u64 = 0;
    let mut last_has_next = false;
    for desc in chain.by_ref() {
        last_has_next = desc.has_next();
        total += desc.len() as u64;
        if total > max_bytes {
            return Err(QueueError::TooLong(max_bytes));
        }
        let buf = Buf { addr: desc.addr(), len: desc.len() };
        if buf.len > 0 && !m.check_range(buf.addr, buf.len as usize, vm_memory::Permissions::Read) {
            return Err(QueueError::OutsideMemory { addr: buf.addr.0, len: buf.len });
        }
        if desc.is_write_only() {
            out.writable.push(buf);
        } else {
            if !out.writable.is_empty() {
                return Err(QueueError::ReadAfterWrite);
            }
            out.readable.push(buf);
        }
    }
    if last_has_next {
        return Err(QueueError::Truncated);
    }
    Ok(out)
}

/// Gather `out.len()` bytes starting `offset` bytes into `bufs`. Returns the
/// number of bytes copied (less than asked when the buffers end).
pub fn read_bufs<M: GuestMemory>(mem: &M, bufs: &[Buf], mut offset: u64, out: &mut [u8]) -> Result<usize, QueueError> {
    let mut done = 0;
    for b in bufs {
        if done == out.len() {
            break;
        }
        if offset >= b.len as u64 {
            offset -= b.len as u64;
            continue;
        }
        let n = ((b.len as u64 - offset) as usize).min(out.len() - done);
        let addr = b.addr.checked_add(offset).ok_or(QueueError::OutsideMemory { addr: b.addr.0, len: b.len })?;
        mem.read_slice(&mut out[done..done + n], addr)
            .map_err(|_| QueueError::OutsideMemory { addr: addr.0, len: b.len })?;
        done += n;
        offset = 0;
    }
    Ok(done)
}

/// Scatter `data` into `bufs` starting `offset` bytes in. Returns the number
/// of bytes written.
pub fn write_bufs<M: GuestMemory>(mem: &M, bufs: &[Buf], mut offset: u64, data: &[u8]) -> Result<usize, QueueError> {
    let mut done = 0;
    for b in bufs {
        if done == data.len() {
            break;
        }
        if offset >= b.len as u64 {
            offset -= b.len as u64;
            continue;
        }
        let n = ((b.len as u64 - offset) as usize).min(data.len() - done);
        let addr = b.addr.checked_add(offset).ok_or(QueueError::OutsideMemory { addr: b.addr.0, len: b.len })?;
        mem.write_slice(&data[done..done + n], addr)
            .map_err(|_| QueueError::OutsideMemory { addr: addr.0, len: b.len })?;
        done += n;
        offset = 0;
    }
    Ok(done)
}

/// Return `head` to the driver with `len` bytes written.
pub fn add_used<M: GuestMemory>(queue: &mut Queue, mem: &M, head: u16, len: u32) -> Result<(), QueueError> {
    queue.add_used(mem, head, len).map_err(|e| QueueError::Ring(e.to_string()))
}

/// Interrupt the driver for queue `index` unless EVENT_IDX says it does not
/// want one yet.
pub fn notify_used<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
) -> Result<(), QueueError> {
    if queue.needs_notification(mem).map_err(|e| QueueError::Ring(e.to_string()))?
        && let Err(e) = interrupt.trigger(VirtioInterruptType::Queue(index))
    {
        tracing::warn!("virtio: cannot signal queue {index}: {e}");
    }
    Ok(())
}

/// Run `f` over every available chain until the ring is empty, with
/// notifications disabled while draining (the EVENT_IDX dance), then send
/// one interrupt if the driver wants it. `f` returns the number of bytes
/// written for the chain, or `None` to leave it unreturned (kept in flight).
pub fn drain_queue<M, F>(
    queue: &mut Queue,
    mem: M,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
    mut f: F,
) -> Result<usize, QueueError>
where
    M: Clone + Deref,
    M::Target: GuestMemory + Sized,
    F: FnMut(DescriptorChain<M>) -> Option<u32>,
{
    let mut handled = 0;
    loop {
        queue.disable_notification(mem.deref()).map_err(|e| QueueError::Ring(e.to_string()))?;
        while let Some(chain) = pop_chain(queue, mem.clone())? {
            let head = chain.head_index();
            if let Some(len) = f(chain) {
                add_used(queue, mem.deref(), head, len)?;
                handled += 1;
            }
        }
        if !queue.enable_notification(mem.deref()).map_err(|e| QueueError::Ring(e.to_string()))? {
            break;
        }
    }
    if handled > 0 {
        notify_used(queue, mem.deref(), interrupt, index)?;
    }
    Ok(handled)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestMemoryMmap;

    pub(crate) const F_NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    pub(crate) const F_WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    pub(crate) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    pub(crate) fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    #[test]
    fn parses_good_chain_and_rejects_hostile_ones() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let descs = [desc(0x8000, 16, F_NEXT, 1), desc(0x9000, 512, F_NEXT | F_WRITE, 2), desc(0xa000, 1, F_WRITE, 0)];
        vq.build_desc_chain(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = pop_chain(&mut q, &m).unwrap().unwrap();
        let p = parse_chain(chain, 1 << 20).unwrap();
        assert_eq!(p.readable.len(), 1);
        assert_eq!(p.writable_len(), 513);

        // Outside guest memory.
        let vq = MockSplitQueue::new(&m, 16);
        vq.build_desc_chain(&[desc(0xffff_0000, 16, 0, 0)]).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = pop_chain(&mut q, &m).unwrap().unwrap();
        assert!(matches!(parse_chain(chain, 1 << 20), Err(QueueError::OutsideMemory { .. })));

        // Readable after writable.
        let vq = MockSplitQueue::new(&m, 16);
        vq.build_desc_chain(&[desc(0x8000, 16, F_WRITE | F_NEXT, 1), desc(0x9000, 16, 0, 0)]).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = pop_chain(&mut q, &m).unwrap().unwrap();
        assert_eq!(parse_chain(chain, 1 << 20), Err(QueueError::ReadAfterWrite));

        // Too long.
        let vq = MockSplitQueue::new(&m, 16);
        vq.build_desc_chain(&[desc(0x8000, 0x8000, 0, 0)]).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = pop_chain(&mut q, &m).unwrap().unwrap();
        assert_eq!(parse_chain(chain, 0x1000), Err(QueueError::TooLong(0x1000)));
    }

    #[test]
    fn looping_chain_is_truncated_not_followed_forever() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // Build a chain 0 -> 1 and then make 1 point back to 0.
        vq.build_desc_chain(&[desc(0x8000, 16, F_NEXT, 1), desc(0x9000, 16, F_NEXT, 0)]).unwrap();
        vq.desc_table().store(1, desc(0x9000, 16, F_NEXT, 0)).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = pop_chain(&mut q, &m).unwrap().unwrap();
        assert_eq!(parse_chain(chain, u64::MAX), Err(QueueError::Truncated));
    }

    #[test]
    fn impossible_avail_index_is_an_error() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.avail().idx().store(100);
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(matches!(pop_chain(&mut q, &m), Err(QueueError::AvailIndex { .. })));
    }

    #[test]
    fn scatter_gather_copies_across_buffers() {
        let m = mem();
        let bufs = [Buf { addr: GuestAddress(0x1000), len: 3 }, Buf { addr: GuestAddress(0x2000), len: 5 }];
        assert_eq!(write_bufs(&m, &bufs, 1, b"abcdefghij").unwrap(), 7);
        let mut out = [0u8; 8];
        assert_eq!(read_bufs(&m, &bufs, 0, &mut out).unwrap(), 8);
        assert_eq!(&out, b"\0abcdefg");
        let bad = [Buf { addr: GuestAddress(0x10_0000 - 2), len: 4 }];
        assert!(write_bufs(&m, &bad, 0, b"xxxx").is_err());
    }
}
