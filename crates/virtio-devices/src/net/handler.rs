//! The virtio-net data path, run on the device's worker thread: tx chains
//! are gathered and written to the TAP with their vnet header; frames read
//! from the TAP are scattered into rx buffers (merged across several when
//! MRG_RXBUF was negotiated). Reading stops while the guest has no rx
//! buffers and resumes when it posts some, so the TAP's own queue (not our
//! memory) absorbs bursts; meanwhile the TAP is not watched ([`TapGate`]).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::net::Tap;
use devices::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::device::VirtioInterrupt;
use crate::queue::{Buf, QueueError, add_used, notify_used, parse_chain, pop_chain, read_bufs, write_bufs};
use crate::worker::{DeviceBroken, QueueHandler};

use super::gate::TapGate;

/// virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers.
pub const HDR_LEN: usize = ::net::VNET_HDR_LEN;
/// Largest frame either way: a 64 KiB GSO frame plus Ethernet/VLAN headers
/// plus the vnet header.
pub const MAX_FRAME: usize = HDR_LEN + 65550;
/// The smallest thing worth sending: a vnet header and an Ethernet header.
const MIN_FRAME: usize = HDR_LEN + 14;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const CTRL_QUEUE: usize = 2;
/// How long the worker keeps looking for rx buffers after running out (see
/// `NetHandler::poll_avail`).
const POLL_AFTER_WORK: Duration = Duration::from_micros(25);
/// Token of the TAP fd on the worker's epoll.
pub const TAP_TOKEN: u64 = 0;

/// Traffic counters, shared with the device for `counters()`.
#[derive(Default, Debug)]
pub struct NetCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_drops: AtomicU64,
    pub rx_errors: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_drops: AtomicU64,
    pub tx_errors: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What happened to the frame waiting for rx buffers.
enum Delivery {
    Delivered,
    /// Not enough buffers now; the frame stays pending.
    NoBuffers,
    /// The frame was dropped (buffers too small or broken).
    Dropped,
}

/// What the device lends its handler besides memory and queues.
pub struct NetBackend {
    pub queue_index: [u16; 2],
    pub tap: Arc<Tap>,
    pub mrg_rxbuf: bool,
    pub counters: Arc<NetCounters>,
}

pub struct NetHandler {
    pub mem: GuestMemory,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub rx: Queue,
    pub tx: Queue,
    pub queue_index: [u16; 2],
    pub tap: Arc<Tap>,
    pub mrg_rxbuf: bool,
    pub counters: Arc<NetCounters>,
    /// rx staging: one frame read from the TAP.
    pub frame: Vec<u8>,
    /// Length of the frame in `frame` still waiting for rx buffers.
    pub pending: Option<usize>,
    /// tx staging: one gathered chain.
    pub tx_buf: Vec<u8>,
    /// The control queue, when negotiated.
    pub ctrl: Option<super::ctrl::CtrlQueue>,
    /// When the worker watches the TAP through a gate (the device always
    /// does), it is closed while rx is waiting for buffers.
    pub gate: Option<TapGate>,
}

fn broken(e: QueueError) -> DeviceBroken {
    DeviceBroken(format!("virtio-net: {e}"))
}

impl NetHandler {
    /// A handler with empty staging buffers; the rest comes from the device.
    pub fn new(
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        rx: Queue,
        tx: Queue,
        backend: NetBackend,
    ) -> Self {
        NetHandler {
            mem,
            interrupt,
            rx,
            tx,
            queue_index: backend.queue_index,
            tap: backend.tap,
            mrg_rxbuf: backend.mrg_rxbuf,
            counters: backend.counters,
            frame: vec![0; MAX_FRAME],
            pending: None,
            tx_buf: vec![0; MAX_FRAME],
            ctrl: None,
            gate: None,
        }
    }

    /// Send every chain the guest queued on tx.
    pub fn process_tx(&mut self) -> Result<(), DeviceBroken> {
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let mut used = 0;
        loop {
            self.tx.disable_notification(mem).map_err(|e| broken(QueueError::Ring(e.to_string())))?;
            while let Some(chain) = pop_chain(&mut self.tx, mem).map_err(broken)? {
                let head = chain.head_index();
                self.send_chain(mem, chain);
                add_used(&mut self.tx, mem, head, 0).map_err(broken)?;
                used += 1;
            }
            if !self.tx.enable_notification(mem).map_err(|e| broken(QueueError::Ring(e.to_string())))? {
                break;
            }
        }
        if used > 0 {
            notify_used(&mut self.tx, mem, &*self.interrupt, self.queue_index[1]).map_err(broken)?;
        }
        Ok(())
    }

    fn send_chain(&mut self, mem: &GuestMemoryMmap, chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>) {
        let c = &self.counters;
        let parsed = match parse_chain(chain, MAX_FRAME as u64) {
            Ok(p) => p,
            Err(QueueError::TooLong(_)) => {
                bump(&c.tx_drops, 1);
                return;
            }
            Err(e) => {
                tracing::debug!("virtio-net tx: dropping bad chain: {e}");
                bump(&c.tx_errors, 1);
                return;
            }
        };
        let len = parsed.readable_len() as usize;
        if len < MIN_FRAME {
            bump(&c.tx_errors, 1);
            return;
        }
        let written = match self.guest_iovecs(mem, &parsed.readable) {
            // SAFETY: every iovec points into a guest memory region that the
            // `mem` guard keeps mapped for the whole call; the guest may
            // change the bytes meanwhile, which only changes the frame sent.
            Some(iov) => unsafe { self.tap.writev_raw(&iov) },
            None => {
                // A buffer straddles two memory regions: gather by copying.
                if read_bufs(mem, &parsed.readable, 0, &mut self.tx_buf[..len]).ok() != Some(len) {
                    bump(&c.tx_errors, 1);
                    return;
                }
                self.tap.write(&self.tx_buf[..len])
            }
        };
        match written {
            Ok(_) => {
                bump(&c.tx_packets, 1);
                bump(&c.tx_bytes, (len - HDR_LEN) as u64);
            }
            Err(e) => {
                // The TUN driver refuses malformed GSO headers with EINVAL and
                // never blocks on write; either way the frame is gone.
                tracing::debug!("virtio-net tx: TAP write failed: {e}");
                bump(&c.tx_drops, 1);
            }
        }
    }

    /// Host iovecs for `bufs` (already checked to lie in guest memory), or
    /// None when one crosses a region boundary or there are too many.
    fn guest_iovecs(&self, mem: &GuestMemoryMmap, bufs: &[Buf]) -> Option<Vec<libc::iovec>> {
        if bufs.len() > 1024 {
            return None;
        }
        let mut iov = Vec::with_capacity(bufs.len());
        for b in bufs.iter().filter(|b| b.len > 0) {
            let slice = mem.get_slice(b.addr, b.len as usize).ok()?;
            iov.push(libc::iovec { iov_base: slice.ptr_guard().as_ptr() as *mut libc::c_void, iov_len: slice.len() });
        }
        Some(iov)
    }

    /// Move frames from the TAP into rx buffers until either runs out.
    pub fn process_rx(&mut self) -> Result<(), DeviceBroken> {
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let mut used_any = false;
        loop {
            let n = match self.pending {
                Some(n) => n,
                None => match self.tap.read(&mut self.frame) {
                    Ok(n) if n < MIN_FRAME => {
                        bump(&self.counters.rx_drops, 1);
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!("virtio-net rx: TAP read failed: {e}");
                        bump(&self.counters.rx_errors, 1);
                        break;
                    }
                },
            };
            self.pending = Some(n);
            match self.deliver(mem, n)? {
                Delivery::NoBuffers => {
                    // Let the guest see what it got, then give it a moment to
                    // post buffers before sleeping (see `poll_avail`).
                    if used_any {
                        notify_used(&mut self.rx, mem, &*self.interrupt, self.queue_index[0]).map_err(broken)?;
                        used_any = false;
                        if self.poll_avail(mem)? {
                            continue;
                        }
                    }
                    break;
                }
                Delivery::Delivered => {
                    bump(&self.counters.rx_packets, 1);
                    bump(&self.counters.rx_bytes, (n - HDR_LEN) as u64);
                }
                Delivery::Dropped => bump(&self.counters.rx_drops, 1),
            }
            self.pending = None;
            used_any = true;
        }
        if let (Some(_), Some(gate)) = (self.pending, self.gate.as_mut()) {
            // Out of buffers: frames arriving now could not go anywhere, so do
            // not wake for them; the guest's rx notification reopens.
            gate.close();
        }
        if used_any {
            notify_used(&mut self.rx, mem, &*self.interrupt, self.queue_index[0]).map_err(broken)?;
        }
        Ok(())
    }

    /// Watch the rx avail index for a little while after running out of
    /// buffers: a guest streaming frames posts the next buffer within
    /// microseconds, and catching it here saves the worker a sleep and the
    /// guest's doorbell a thread wakeup (which can preempt its own vCPU).
    fn poll_avail(&self, mem: &GuestMemoryMmap) -> Result<bool, DeviceBroken> {
        let end = Instant::now() + POLL_AFTER_WORK;
        loop {
            let avail =
                self.rx.avail_idx(mem, Ordering::Acquire).map_err(|e| broken(QueueError::Ring(e.to_string())))?;
            if avail.0 != self.rx.next_avail() {
                return Ok(true);
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            std::hint::spin_loop();
        }
    }

    /// Place the `n`-byte frame in `self.frame` into rx buffers.
    fn deliver(&mut self, mem: &GuestMemoryMmap, n: usize) -> Result<Delivery, DeviceBroken> {
        let start = self.rx.next_avail();
        // (head, writable buffers) of each chain that will take a piece.
        let mut chains: Vec<(u16, Vec<Buf>, usize)> = Vec::new();
        let mut capacity = 0usize;
        let mut bad = false;
        while capacity < n {
            let Some(chain) = pop_chain(&mut self.rx, mem).map_err(broken)? else {
                // Ask for a notification, then look again: the guest may have
                // posted buffers between our last look and the request.
                if self.rx.enable_notification(mem).map_err(|e| broken(QueueError::Ring(e.to_string())))? {
                    continue;
                }
                self.rx.set_next_avail(start);
                return Ok(Delivery::NoBuffers);
            };
            let head = chain.head_index();
            match parse_chain(chain, u32::MAX as u64) {
                Ok(p) if p.writable_len() > 0 => {
                    let cap = p.writable_len() as usize;
                    capacity += cap;
                    chains.push((head, p.writable, cap));
                }
                r => {
                    if let Err(e) = r {
                        tracing::debug!("virtio-net rx: bad chain: {e}");
                    }
                    bump(&self.counters.rx_errors, 1);
                    chains.push((head, Vec::new(), 0));
                    bad = true;
                    break;
                }
            }
            if !self.mrg_rxbuf {
                break;
            }
        }
        if bad || capacity < n {
            // Without MRG_RXBUF one chain must hold the frame; a driver that
            // posts smaller buffers loses it (as real NICs do). A broken
            // chain loses the frame too.
            for (head, _, _) in &chains {
                add_used(&mut self.rx, mem, *head, 0).map_err(broken)?;
            }
            return Ok(Delivery::Dropped);
        }
        // num_buffers: the TAP leaves these two bytes alone.
        let count = chains.len() as u16;
        self.frame[HDR_LEN - 2..HDR_LEN].copy_from_slice(&count.to_le_bytes());
        let mut off = 0usize;
        let mut ok = true;
        let mut lens = Vec::with_capacity(chains.len());
        for (_, bufs, cap) in &chains {
            let take = (*cap).min(n - off);
            if ok && write_bufs(mem, bufs, 0, &self.frame[off..off + take]).ok() != Some(take) {
                ok = false;
            }
            lens.push(if ok { take as u32 } else { 0 });
            off += take;
        }
        for ((head, _, _), len) in chains.iter().zip(lens) {
            add_used(&mut self.rx, mem, *head, len).map_err(broken)?;
        }
        Ok(if ok { Delivery::Delivered } else { Delivery::Dropped })
    }
}

impl QueueHandler for NetHandler {
    fn queue_notified(&mut self, index: usize) -> Result<(), DeviceBroken> {
        match index {
            RX_QUEUE => {
                if let Some(gate) = self.gate.as_mut() {
                    gate.open();
                }
                self.process_rx()
            }
            TX_QUEUE => self.process_tx(),
            CTRL_QUEUE => match self.ctrl.as_mut() {
                Some(c) => c.process(&self.mem, &*self.interrupt),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn fd_ready(&mut self, token: u64, _events: EventSet) -> Result<(), DeviceBroken> {
        if token == TAP_TOKEN { self.process_rx() } else { Ok(()) }
    }
}
