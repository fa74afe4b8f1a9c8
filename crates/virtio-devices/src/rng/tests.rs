use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

use super::*;
use crate::device::VIRTIO_F_VERSION_1;
use crate::testing::MmioHarness;
use crate::transport::STATUS_NEEDS_RESET;

fn harness() -> MmioHarness {
    let rng = Rng::new("rng0", Path::new("/dev/urandom")).unwrap();
    MmioHarness::new(Arc::new(Mutex::new(rng)))
}

#[test]
fn fills_guest_buffers_with_entropy() {
    let mut h = harness();
    h.init(COMMON_FEATURES, &[16]);
    assert_eq!(h.status() & STATUS_NEEDS_RESET as u32, 0);
    let mem = h.mem.memory();
    mem.write_slice(&[0u8; 300], GuestAddress(0x100000)).unwrap();
    h.queues[0].add(&mem, &[(0x100000, 100, true), (0x100100, 44, true)]);
    drop(mem);
    h.kick(0);
    let (id, len) = h.queues[0].wait_used(&h.mem).expect("rng returned no buffer");
    assert_eq!((id, len), (0, 144));
    let mut got = [0u8; 300];
    h.mem.memory().read_slice(&mut got, GuestAddress(0x100000)).unwrap();
    assert!(got[..100].iter().any(|&b| b != 0), "buffer was not filled");
    assert!(got[100..0x100].iter().all(|&b| b == 0), "wrote past the descriptor");
    assert!(h.interrupts() >= 1);
    assert_eq!(h.read(0x60) & 1, 1, "used-ring interrupt status bit");
    h.write(0x64, 1);
    assert_eq!(h.read(0x60), 0);
    assert_eq!(h.transport.device().lock().unwrap().counters()["bytes"], 144);
}

#[test]
fn buffer_outside_memory_is_returned_empty() {
    let mut h = harness();
    h.init(COMMON_FEATURES, &[16]);
    let mem = h.mem.memory();
    h.queues[0].add(&mem, &[(crate::testing::MEM_SIZE - 8, 64, true)]);
    h.queues[0].add(&mem, &[(0x100000, 0, true)]);
    drop(mem);
    h.kick(0);
    assert_eq!(h.queues[0].wait_used(&h.mem), Some((0, 0)));
    assert_eq!(h.queues[0].wait_used(&h.mem), Some((1, 0)));
    assert_eq!(h.transport.device().lock().unwrap().counters()["errors"], 1);
}

#[test]
fn corrupt_avail_index_sets_needs_reset_and_reset_recovers() {
    let mut h = harness();
    h.init(COMMON_FEATURES, &[16]);
    let mem = h.mem.memory();
    h.queues[0].set_avail_idx(&mem, 1000);
    drop(mem);
    h.kick(0);
    let t0 = std::time::Instant::now();
    while h.status() & STATUS_NEEDS_RESET as u32 == 0 && t0.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_ne!(h.status() & STATUS_NEEDS_RESET as u32, 0);
    assert_eq!(h.read(0x60) & 2, 2, "config interrupt announces the reset need");
    // The driver resets and starts over: the device works again.
    h.init(COMMON_FEATURES, &[16]);
    assert_eq!(h.status() & STATUS_NEEDS_RESET as u32, 0);
    let mem = h.mem.memory();
    h.queues[0].add(&mem, &[(0x100000, 8, true)]);
    drop(mem);
    h.kick(0);
    assert_eq!(h.queues[0].wait_used(&h.mem), Some((0, 8)));
}

#[test]
fn bad_queue_setup_is_refused() {
    // Size not a power of two.
    let mut h = harness();
    h.init(COMMON_FEATURES, &[12]);
    assert_ne!(h.status() & STATUS_NEEDS_RESET as u32, 0);
    // Larger than the maximum.
    let mut h = harness();
    h.init(COMMON_FEATURES, &[512]);
    assert_ne!(h.status() & STATUS_NEEDS_RESET as u32, 0);
    // Rings outside guest memory.
    let mut h = harness();
    h.init(COMMON_FEATURES, &[16]);
    h.write(0x70, 0);
    h.write(0x70, 1 | 2);
    h.write(0x24, 1);
    h.write(0x20, (VIRTIO_F_VERSION_1 >> 32) as u32);
    h.write(0x70, 1 | 2 | 8);
    h.write(0x30, 0);
    h.write(0x38, 16);
    h.write(0x80, 0);
    h.write(0x84, 0x10);
    h.write(0x44, 1);
    h.write(0x70, 1 | 2 | 8 | 4);
    assert_ne!(h.status() & STATUS_NEEDS_RESET as u32, 0);
    // Unaligned used ring.
    let mut h = harness();
    h.write(0x70, 1 | 2);
    h.write(0x24, 1);
    h.write(0x20, (VIRTIO_F_VERSION_1 >> 32) as u32);
    h.write(0x70, 1 | 2 | 8);
    h.write(0x38, 16);
    h.write(0x80, 0x10000);
    h.write(0x90, 0x11000);
    h.write(0xa0, 0x12001);
    h.write(0x44, 1);
    h.write(0x70, 1 | 2 | 8 | 4);
    assert_ne!(h.status() & STATUS_NEEDS_RESET as u32, 0);
}

#[test]
fn features_without_version_1_are_refused() {
    let mut h = harness();
    h.write(0x70, 1 | 2);
    h.write(0x20, 0);
    h.write(0x70, 1 | 2 | 8);
    assert_eq!(h.status() & 8, 0, "FEATURES_OK must not stick");
}

#[test]
fn pause_stops_processing_until_resume() {
    let mut h = harness();
    h.init(COMMON_FEATURES, &[16]);
    let dev = h.transport.device().clone();
    dev.lock().unwrap().pause().unwrap();
    let mem = h.mem.memory();
    h.queues[0].add(&mem, &[(0x100000, 8, true)]);
    drop(mem);
    h.kick(0);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(h.queues[0].pop_used(&h.mem.memory()), None);
    dev.lock().unwrap().resume().unwrap();
    assert_eq!(h.queues[0].wait_used(&h.mem), Some((0, 8)));
}

#[test]
fn registers_identify_a_v2_rng() {
    let mut h = harness();
    assert_eq!(h.read(0), 0x7472_6976);
    assert_eq!(h.read(4), 2);
    assert_eq!(h.read(8), 4);
    h.write(0x30, 0);
    assert_eq!(h.read(0x34), 256);
    h.write(0x30, 7);
    assert_eq!(h.read(0x34), 0, "no such queue");
    let io = h.transport.ioeventfds(0xd000_0000);
    assert_eq!(io.len(), 1);
    assert_eq!((io[0].0, io[0].1), (0xd000_0050, Some(0)));
}

#[test]
fn head_index_past_the_queue_breaks_the_device() {
    let mut h = harness();
    h.init(COMMON_FEATURES, &[16]);
    let mem = h.mem.memory();
    h.queues[0].publish(&mem, 99);
    drop(mem);
    h.kick(0);
    let t0 = std::time::Instant::now();
    while h.status() & STATUS_NEEDS_RESET as u32 == 0 && t0.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_ne!(h.status() & STATUS_NEEDS_RESET as u32, 0);
    assert_eq!(h.queues[0].pop_used(&h.mem.memory()), None, "nothing was returned for a bogus head");
}

#[test]
fn zero_length_and_readable_only_buffers_get_nothing() {
    let mut h = harness();
    h.init(COMMON_FEATURES, &[16]);
    let mem = h.mem.memory();
    h.queues[0].add(&mem, &[(0x100000, 64, false)]);
    h.queues[0].add(&mem, &[]);
    drop(mem);
    h.kick(0);
    assert_eq!(h.queues[0].wait_used(&h.mem), Some((0, 0)));
    assert!(h.queues[0].wait_used(&h.mem).is_some());
    assert_eq!(h.status() & STATUS_NEEDS_RESET as u32, 0);
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let mut h = harness();
    h.init(COMMON_FEATURES, &[16]);
    let used_event = GuestAddress(h.queues[0].avail + 4 + 2 * 16);
    let mem = h.mem.memory();
    // The driver wants an interrupt only after the 6th used entry.
    mem.write_obj(5u16, used_event).unwrap();
    h.queues[0].add(&mem, &[(0x100000, 8, true)]);
    drop(mem);
    h.kick(0);
    assert!(h.queues[0].wait_used(&h.mem).is_some());
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(h.interrupts(), 0, "EVENT_IDX: no interrupt before used_event");
    // Now it asks for one at the next entry.
    let mem = h.mem.memory();
    mem.write_obj(1u16, used_event).unwrap();
    h.queues[0].add(&mem, &[(0x100000, 8, true)]);
    drop(mem);
    h.kick(0);
    assert!(h.queues[0].wait_used(&h.mem).is_some());
    let t0 = std::time::Instant::now();
    while h.interrupts() == 0 && t0.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(h.interrupts(), 1);
}

#[test]
fn without_event_idx_every_batch_interrupts() {
    let mut h = harness();
    h.init(COMMON_FEATURES & !crate::device::VIRTIO_RING_F_EVENT_IDX, &[16]);
    let mem = h.mem.memory();
    mem.write_obj(5u16, GuestAddress(h.queues[0].avail + 4 + 2 * 16)).unwrap();
    h.queues[0].add(&mem, &[(0x100000, 8, true)]);
    drop(mem);
    h.kick(0);
    assert!(h.queues[0].wait_used(&h.mem).is_some());
    let t0 = std::time::Instant::now();
    while h.interrupts() == 0 && t0.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(h.interrupts(), 1);
}
