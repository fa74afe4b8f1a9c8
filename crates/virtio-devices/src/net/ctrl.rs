//! The virtio-net control queue (virtio 1.x 5.1.6.5): receive-mode and MAC
//! commands are acknowledged (the TAP delivers everything anyway; filtering
//! is the guest's), and ANNOUNCE_ACK ends a gratuitous-ARP request raised
//! after a restore or migration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use devices::GuestMemory;
use virtio_queue::Queue;
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

use super::VIRTIO_NET_S_ANNOUNCE;
use crate::device::VirtioInterrupt;
use crate::queue::{drain_queue, parse_chain, read_bufs, write_bufs};
use crate::worker::DeviceBroken;

const CLASS_RX: u8 = 0;
const CLASS_MAC: u8 = 1;
const CLASS_ANNOUNCE: u8 = 3;
const ANNOUNCE_ACK: u8 = 0;
pub const OK: u8 = 0;
pub const ERR: u8 = 1;
/// Largest command we read (a MAC filter table of 64 + 64 entries).
const MAX_CMD: u64 = 2 + 2 * (4 + 64 * 6);

pub struct CtrlQueue {
    pub queue: Queue,
    pub index: u16,
    /// Config-space status word, shared with the device.
    pub status: Arc<AtomicU16>,
}

/// The answer to one command.
pub fn answer(class: u8, cmd: u8, status: &AtomicU16) -> u8 {
    match (class, cmd) {
        // PROMISC, ALLMULTI, ALLUNI, NOMULTI, NOUNI, NOBCAST.
        (CLASS_RX, 0..=5) => OK,
        // TABLE_SET, ADDR_SET.
        (CLASS_MAC, 0..=1) => OK,
        (CLASS_ANNOUNCE, ANNOUNCE_ACK) => {
            status.fetch_and(!VIRTIO_NET_S_ANNOUNCE, Ordering::SeqCst);
            OK
        }
        _ => ERR,
    }
}

impl CtrlQueue {
    pub fn process(&mut self, mem: &GuestMemory, interrupt: &dyn VirtioInterrupt) -> Result<(), DeviceBroken> {
        let guard = mem.memory();
        let m: &GuestMemoryMmap = &guard;
        let status = &self.status;
        drain_queue(&mut self.queue, m, interrupt, self.index, |chain| {
            let Ok(p) = parse_chain(chain, MAX_CMD + 1) else { return Some(0) };
            let mut hdr = [0u8; 2];
            let ack = if read_bufs(m, &p.readable, 0, &mut hdr).ok() == Some(2) {
                answer(hdr[0], hdr[1], status)
            } else {
                ERR
            };
            Some(write_bufs(m, &p.writable, 0, &[ack]).unwrap_or(0) as u32)
        })
        .map_err(|e| DeviceBroken(format!("virtio-net control queue: {e}")))?;
        Ok(())
    }
}
