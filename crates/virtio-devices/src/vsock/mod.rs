//! virtio-vsock (virtio 1.x section 5.10) with the host side on Unix sockets
//! (Firecracker's hybrid model; see [`muxer`]). Queues: rx (0), tx (1) and
//! event (2), on which a TRANSPORT_RESET is sent after a restore so the
//! guest drops connections whose host ends did not survive the snapshot.

mod config;
pub mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use devices::GuestMemory;
use migration::{MigrationError, Snapshot, Snapshottable};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::common::DeviceCommon;
use crate::device::{
    ActivateError, ActiveQueue, COMMON_FEATURES, TYPE_VSOCK, VirtioDevice, VirtioInterrupt, check_queue_count,
    read_config_bytes,
};
use crate::queue::{QueueError, add_used, drain_queue, notify_used, parse_chain, pop_chain, read_bufs, write_bufs};
use crate::worker::{DeviceBroken, QueueHandler};

pub use config::{VsockConfig, VsockConfigError};
use muxer::{MAX_PAYLOAD, Muxer, VsockCounters};
use packet::{HDR_LEN, Header};

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
const MUXER_TOKEN: u64 = 0;
/// virtio_vsock_event id for a transport reset.
const EVENT_TRANSPORT_RESET: u32 = 0;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock socket {0} exists and is not a Unix socket; remove it or choose another path")]
    NotASocket(PathBuf),
    #[error("cannot listen on vsock socket {0}: {1}")]
    Bind(PathBuf, std::io::Error),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VsockState {
    pub cid: u64,
    pub acked_features: u64,
}

pub struct Vsock {
    common: DeviceCommon,
    cid: u64,
    socket: PathBuf,
    listener: UnixListener,
    counters: Arc<VsockCounters>,
    /// Send TRANSPORT_RESET on the event queue at the next activation.
    reset_event: bool,
}

impl Vsock {
    /// A vsock device for guest `cfg.cid`, listening on `cfg.socket` (a stale
    /// socket file there is replaced).
    pub fn new(id: &str, cfg: &VsockConfig) -> Result<Self, VsockError> {
        if let Ok(meta) = std::fs::symlink_metadata(&cfg.socket) {
            if !meta.file_type().is_socket() {
                return Err(VsockError::NotASocket(cfg.socket.clone()));
            }
            let _ = std::fs::remove_file(&cfg.socket);
        }
        let listener = UnixListener::bind(&cfg.socket).map_err(|e| VsockError::Bind(cfg.socket.clone(), e))?;
        Ok(Vsock {
            common: DeviceCommon::new(id, COMMON_FEATURES, vec![QUEUE_SIZE; 3]),
            cid: cfg.cid,
            socket: cfg.socket.clone(),
            listener,
            counters: Arc::default(),
            reset_event: false,
        })
    }

    pub fn cid(&self) -> u64 {
        self.cid
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }
}

/// Host side of the hybrid handshake, for tools and tests: connect to the
/// device's socket, ask for guest `port`, and wait (up to `timeout`) for
/// `OK <host port>`. The stream then carries the connection's bytes.
pub fn host_connect(
    socket: &Path,
    port: u32,
    timeout: std::time::Duration,
) -> std::io::Result<(std::os::unix::net::UnixStream, u32)> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    s.set_read_timeout(Some(timeout))?;
    // Byte by byte so no payload after the line is swallowed.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        if s.read(&mut b)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("guest refused or ignored the connection to vsock port {port}"),
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    s.set_read_timeout(None)?;
    let line = String::from_utf8_lossy(&line);
    let host_port = line.strip_prefix("OK ").and_then(|p| p.trim().parse().ok()).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unexpected vsock handshake reply '{line}'"))
    })?;
    Ok((s, host_port))
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

struct VsockHandler {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<Queue>,
    index: Vec<u16>,
    muxer: Muxer,
    reset_event: bool,
    payload: Vec<u8>,
    counters: Arc<VsockCounters>,
}

fn broken(e: QueueError) -> DeviceBroken {
    DeviceBroken(format!("virtio-vsock: {e}"))
}

impl VsockHandler {
    fn process_tx(&mut self) -> Result<(), DeviceBroken> {
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let (muxer, counters, payload) = (&mut self.muxer, &self.counters, &mut self.payload);
        drain_queue(&mut self.queues[TX], mem, &*self.interrupt, self.index[TX], |chain| {
            let Ok(p) = parse_chain(chain, (HDR_LEN + MAX_PAYLOAD) as u64) else {
                counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                return Some(0);
            };
            let mut raw = [0u8; HDR_LEN];
            if read_bufs(mem, &p.readable, 0, &mut raw).ok() != Some(HDR_LEN) {
                counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                return Some(0);
            }
            let hdr = Header::decode(&raw);
            let len = hdr.len as usize;
            if len > MAX_PAYLOAD || (HDR_LEN + len) as u64 > p.readable_len() {
                counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                return Some(0);
            }
            payload.resize(len, 0);
            if read_bufs(mem, &p.readable, HDR_LEN as u64, payload).ok() != Some(len) {
                counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                return Some(0);
            }
            muxer.handle_tx(&hdr, payload);
            Some(0)
        })
        .map_err(broken)?;
        Ok(())
    }

    fn process_rx(&mut self) -> Result<(), DeviceBroken> {
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let q = &mut self.queues[RX];
        let mut used = 0;
        while self.muxer.has_rx() {
            let Some(chain) = pop_chain(q, mem).map_err(broken)? else {
                if q.enable_notification(mem).map_err(|e| broken(QueueError::Ring(e.to_string())))? {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let p = match parse_chain(chain, u32::MAX as u64) {
                Ok(p) if p.writable_len() >= HDR_LEN as u64 => p,
                _ => {
                    self.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                    add_used(q, mem, head, 0).map_err(broken)?;
                    used += 1;
                    continue;
                }
            };
            let space = (p.writable_len() as usize - HDR_LEN).min(MAX_PAYLOAD);
            let Some(hdr) = self.muxer.next_rx(space, &mut self.payload) else {
                // Nothing sendable after all (no credit, no data): give the
                // buffer back to the ring untouched.
                q.set_next_avail(q.next_avail().wrapping_sub(1));
                break;
            };
            let ok = write_bufs(mem, &p.writable, 0, &hdr.encode()).ok() == Some(HDR_LEN)
                && write_bufs(mem, &p.writable, HDR_LEN as u64, &self.payload).ok() == Some(self.payload.len());
            let len = if ok { (HDR_LEN + self.payload.len()) as u32 } else { 0 };
            add_used(q, mem, head, len).map_err(broken)?;
            used += 1;
        }
        if used > 0 {
            notify_used(q, mem, &*self.interrupt, self.index[RX]).map_err(broken)?;
        }
        Ok(())
    }

    fn process_event(&mut self) -> Result<(), DeviceBroken> {
        if !self.reset_event {
            return Ok(());
        }
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let sent = &mut self.reset_event;
        drain_queue(&mut self.queues[EVENT], mem, &*self.interrupt, self.index[EVENT], |chain| {
            if !*sent {
                return None;
            }
            let p = parse_chain(chain, u32::MAX as u64).ok()?;
            let n = write_bufs(mem, &p.writable, 0, &EVENT_TRANSPORT_RESET.to_le_bytes()).ok()?;
            if n == 4 {
                *sent = false;
            }
            Some(n as u32)
        })
        .map_err(broken)?;
        Ok(())
    }
}

impl QueueHandler for VsockHandler {
    fn queue_notified(&mut self, index: usize) -> Result<(), DeviceBroken> {
        match index {
            RX => self.process_rx(),
            TX => {
                self.process_tx()?;
                self.process_rx()
            }
            EVENT => self.process_event(),
            _ => Ok(()),
        }
    }

    fn fd_ready(&mut self, token: u64, _events: EventSet) -> Result<(), DeviceBroken> {
        if token == MUXER_TOKEN {
            self.muxer.handle_events();
            self.process_rx()?;
        }
        Ok(())
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn common(&self) -> &DeviceCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        check_queue_count(&self.common.id, 3, &queues)?;
        let backend = |e: String| ActivateError::Backend(self.common.id.clone(), e);
        let listener = self.listener.try_clone().map_err(|e| backend(e.to_string()))?;
        let muxer =
            Muxer::new(self.cid, &self.socket, listener, self.counters.clone()).map_err(|e| backend(e.to_string()))?;
        let epoll_fd = muxer.epoll_fd();
        let (qs, index, evts) = DeviceCommon::split(queues);
        if self.reset_event {
            // The guest posted its event buffers before DRIVER_OK and will
            // not ring again: ring for it.
            let _ = evts[EVENT].write(1);
        }
        let handler = VsockHandler {
            mem,
            interrupt: interrupt.clone(),
            queues: qs,
            index,
            muxer,
            reset_event: std::mem::take(&mut self.reset_event),
            payload: Vec::with_capacity(MAX_PAYLOAD),
            counters: self.counters.clone(),
        };
        self.common.start(evts, vec![(epoll_fd, EventSet::IN, MUXER_TOKEN)], interrupt, Box::new(handler))
    }
    fn counters(&self) -> BTreeMap<String, u64> {
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        BTreeMap::from([
            ("conns_opened".into(), get(&c.conns_opened)),
            ("conns_closed".into(), get(&c.conns_closed)),
            ("rx_packets".into(), get(&c.rx_packets)),
            ("rx_bytes".into(), get(&c.rx_bytes)),
            ("tx_packets".into(), get(&c.tx_packets)),
            ("tx_bytes".into(), get(&c.tx_bytes)),
            ("bad_packets".into(), get(&c.bad_packets)),
            ("dropped_control".into(), get(&c.dropped_control)),
        ])
    }
}

crate::common_pausable!(Vsock);

impl Snapshottable for Vsock {
    fn id(&self) -> String {
        self.common.id.clone()
    }
    fn snapshot(&mut self) -> Result<Option<Snapshot>, MigrationError> {
        Snapshot::new(&self.common.id, &VsockState { cid: self.cid, acked_features: self.common.acked_features })
            .map(Some)
    }
    fn restore(&mut self, s: &Snapshot) -> Result<(), MigrationError> {
        let st: VsockState = s.to_state()?;
        if st.cid != self.cid {
            return Err(MigrationError::Restore(
                self.common.id.clone(),
                format!(
                    "snapshot has guest cid {} but this device has {}; start with cid={}",
                    st.cid, self.cid, st.cid
                ),
            ));
        }
        self.common.ack(st.acked_features);
        self.reset_event = true;
        Ok(())
    }
}
