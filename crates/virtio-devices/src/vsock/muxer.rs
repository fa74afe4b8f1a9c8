//! The host side of virtio-vsock in Firecracker's hybrid model: guest
//! streams are multiplexed onto Unix sockets.
//!
//! * Host-initiated: a host program connects to the device's socket PATH and
//!   writes `CONNECT <port>\n`; we send the guest a REQUEST to that port and,
//!   when it answers RESPONSE, write `OK <local port>\n` back; from then on
//!   the Unix stream carries the connection's bytes.
//! * Guest-initiated: a REQUEST to host port P connects to `PATH_P`.
//!
//! Connections are keyed by (host-side port, guest port) and follow the
//! spec's credit rules: we never send the guest more than it said it can
//! buffer, and we advertise a fixed per-connection buffer for its data.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::packet::*;

/// Bytes of guest data we buffer per connection (advertised as buf_alloc).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload we put in one packet.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Bounds against a guest flooding us while never posting rx buffers.
const MAX_CONTROL: usize = 4096;
const MAX_CONNS: usize = 1024;
const MAX_HANDSHAKE_LINE: usize = 64;
/// Host-side ports of host-initiated connections start here.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// A host-initiated connection the guest has not answered within this is
/// dropped (the host program sees its stream close without `OK`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

// Epoll tokens: connections and handshakes get ids from counters (ports can
// be any u32, so they cannot be the token themselves).
const LISTENER_TOKEN: u64 = u64::MAX;
const TIMER_TOKEN: u64 = u64::MAX - 1;
const HANDSHAKE_BIT: u64 = 1 << 62;

type Key = (u32, u32);

/// Counters shared with the device.
#[derive(Default, Debug)]
pub struct VsockCounters {
    pub conns_opened: AtomicU64,
    pub conns_closed: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub bad_packets: AtomicU64,
    pub dropped_control: AtomicU64,
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

struct Conn {
    stream: UnixStream,
    token: u64,
    /// false while a host-initiated connection waits for the guest's RESPONSE.
    established: bool,
    /// When an unanswered host-initiated connection is given up.
    deadline: Option<Instant>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest (wrapping, as the spec counts).
    tx_cnt: u32,
    /// Guest bytes delivered to the Unix stream.
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    to_stream: VecDeque<u8>,
    readable: bool,
    in_rx_ready: bool,
    host_eof: bool,
    peer_shutdown: u32,
}

impl Conn {
    fn new(stream: UnixStream, established: bool) -> Self {
        Conn {
            stream,
            token: 0,
            established,
            deadline: if established { None } else { Some(Instant::now() + CONNECT_TIMEOUT) },
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            to_stream: VecDeque::new(),
            readable: true,
            in_rx_ready: false,
            host_eof: false,
            peer_shutdown: 0,
        }
    }

    /// How many more bytes the guest can take.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Write buffered guest data to the stream; false on a broken stream.
    fn flush(&mut self) -> bool {
        while !self.to_stream.is_empty() {
            let (a, _) = self.to_stream.as_slices();
            match self.stream.write(a) {
                Ok(0) => return false,
                Ok(n) => {
                    self.to_stream.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }
}

/// A packet the muxer wants delivered to the guest; for RW the payload is
/// in the buffer passed to [`Muxer::next_rx`].
pub type RxPacket = Header;

#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("cannot set up the vsock event loop: {0}")]
    Epoll(io::Error),
}

pub struct Muxer {
    guest_cid: u64,
    socket_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    timer_armed: bool,
    conns: HashMap<Key, Conn>,
    tokens: HashMap<u64, Key>,
    next_token: u64,
    handshakes: HashMap<u64, Handshake>,
    next_handshake: u64,
    next_local_port: u32,
    /// Control packets (key, op, flags) waiting for rx buffers.
    control: VecDeque<(Key, u16, u32)>,
    /// Connections that may have stream data for the guest.
    rx_ready: VecDeque<Key>,
    counters: Arc<VsockCounters>,
}

impl Muxer {
    pub fn new(
        guest_cid: u64,
        socket_path: &Path,
        listener: UnixListener,
        counters: Arc<VsockCounters>,
    ) -> Result<Self, MuxerError> {
        listener.set_nonblocking(true).map_err(MuxerError::Epoll)?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        epoll
            .ctl(ControlOperation::Add, listener.as_raw_fd(), EpollEvent::new(EventSet::IN, LISTENER_TOKEN))
            .map_err(MuxerError::Epoll)?;
        let timer = TimerFd::new().map_err(|e| MuxerError::Epoll(e.into()))?;
        epoll
            .ctl(ControlOperation::Add, timer.as_raw_fd(), EpollEvent::new(EventSet::IN, TIMER_TOKEN))
            .map_err(MuxerError::Epoll)?;
        Ok(Muxer {
            guest_cid,
            socket_path: socket_path.to_path_buf(),
            listener,
            epoll,
            timer,
            timer_armed: false,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            next_token: 0,
            handshakes: HashMap::new(),
            next_handshake: 0,
            next_local_port: FIRST_LOCAL_PORT,
            control: VecDeque::new(),
            rx_ready: VecDeque::new(),
            counters,
        })
    }

    /// The fd the worker waits on: readable when any host socket is ready.
    pub fn epoll_fd(&self) -> i32 {
        self.epoll.as_raw_fd()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Anything that could go to the guest (the caller then offers a buffer).
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || !self.rx_ready.is_empty()
    }

    fn push_control(&mut self, key: Key, op: u16, flags: u32) {
        if self.control.len() >= MAX_CONTROL {
            self.counters.dropped_control.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.control.push_back((key, op, flags));
    }

    fn mark_rx_ready(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key)
            && !c.in_rx_ready
        {
            c.in_rx_ready = true;
            self.rx_ready.push_back(key);
        }
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.tokens.remove(&c.token);
            let _ = self.epoll.ctl(ControlOperation::Delete, c.stream.as_raw_fd(), EpollEvent::default());
            self.counters.conns_closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reset(&mut self, key: Key) {
        self.remove(key);
        self.push_control(key, OP_RST, 0);
    }

    fn add_conn(&mut self, key: Key, mut conn: Conn) -> io::Result<()> {
        conn.stream.set_nonblocking(true)?;
        let token = self.next_token;
        self.next_token += 1;
        let ev = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll.ctl(ControlOperation::Add, conn.stream.as_raw_fd(), EpollEvent::new(ev, token))?;
        conn.token = token;
        if conn.deadline.is_some() && !self.timer_armed {
            self.timer_armed = self.timer.reset(SWEEP_INTERVAL, Some(SWEEP_INTERVAL)).is_ok();
        }
        self.tokens.insert(token, key);
        self.conns.insert(key, conn);
        self.counters.conns_opened.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One packet the guest sent on the tx queue.
    pub fn handle_tx(&mut self, hdr: &Header, data: &[u8]) {
        self.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            self.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != TYPE_STREAM {
            self.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
            if hdr.op != OP_RST {
                self.push_control(key, OP_RST, 0);
            }
            return;
        }
        if hdr.op == OP_REQUEST {
            self.guest_connect(key, hdr);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if hdr.op != OP_RST {
                self.push_control(key, OP_RST, 0);
            }
            return;
        };
        let had_credit = conn.peer_credit() > 0;
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        let credit_opened = !had_credit && conn.peer_credit() > 0;
        match hdr.op {
            OP_RESPONSE if !conn.established => {
                conn.established = true;
                conn.deadline = None;
                conn.to_stream.extend(format!("OK {}\n", key.0).as_bytes());
                if !conn.flush() {
                    self.reset(key);
                    return;
                }
                self.mark_rx_ready(key);
            }
            OP_RW if conn.established => {
                self.counters.tx_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                if conn.to_stream.len() + data.len() > CONN_BUF_ALLOC as usize {
                    // The guest ignored our credit: the spec's answer is RST.
                    self.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                    self.reset(key);
                    return;
                }
                conn.to_stream.extend(data);
                if !conn.flush() {
                    self.reset(key);
                    return;
                }
                // Tell the guest about freed space before it runs dry.
                if conn.fwd_cnt.wrapping_sub(conn.last_fwd_cnt_sent) >= CONN_BUF_ALLOC / 4 {
                    self.push_control(key, OP_CREDIT_UPDATE, 0);
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => self.push_control(key, OP_CREDIT_UPDATE, 0),
            OP_SHUTDOWN => {
                conn.peer_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if conn.peer_shutdown & SHUTDOWN_SEND != 0 {
                    conn.flush();
                    let _ = conn.stream.shutdown(Shutdown::Write);
                }
                if conn.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    self.reset(key);
                    return;
                }
            }
            OP_RST => {
                self.remove(key);
                return;
            }
            _ => {
                self.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                self.reset(key);
                return;
            }
        }
        if credit_opened {
            self.mark_rx_ready(key);
        }
    }

    fn guest_connect(&mut self, key: Key, hdr: &Header) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNS {
            self.push_control(key, OP_RST, 0);
            return;
        }
        let mut path = self.socket_path.clone().into_os_string();
        path.push(format!("_{}", key.0));
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("vsock: guest connect to {}: {e}", Path::new(&path).display());
                self.push_control(key, OP_RST, 0);
                return;
            }
        };
        let mut conn = Conn::new(stream, true);
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        if self.add_conn(key, conn).is_err() {
            self.push_control(key, OP_RST, 0);
            return;
        }
        self.push_control(key, OP_RESPONSE, 0);
    }

    /// Host sockets are ready: accept, read handshakes, note readable and
    /// writable streams.
    pub fn handle_events(&mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            for ev in &events[..n] {
                match ev.data() {
                    LISTENER_TOKEN => self.accept_all(),
                    TIMER_TOKEN => self.expire_connects(),
                    t if t & HANDSHAKE_BIT != 0 => self.read_handshake(t),
                    t => {
                        let Some(&key) = self.tokens.get(&t) else { continue };
                        let set = ev.event_set();
                        let Some(conn) = self.conns.get_mut(&key) else { continue };
                        if set.contains(EventSet::OUT) && !conn.flush() {
                            self.reset(key);
                            continue;
                        }
                        if set.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR) {
                            conn.readable = true;
                            self.mark_rx_ready(key);
                        }
                    }
                }
            }
            if n < events.len() {
                return;
            }
        }
    }

    /// Give up host-initiated connections the guest never answered.
    fn expire_connects(&mut self) {
        let _ = self.timer.wait();
        let now = Instant::now();
        let expired: Vec<Key> =
            self.conns.iter().filter(|(_, c)| c.deadline.is_some_and(|d| d <= now)).map(|(k, _)| *k).collect();
        for key in expired {
            tracing::debug!("vsock: guest did not answer a connection to port {} in time", key.1);
            self.reset(key);
        }
        if !self.conns.values().any(|c| c.deadline.is_some()) {
            let _ = self.timer.clear();
            self.timer_armed = false;
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() || self.handshakes.len() >= MAX_CONNS {
                        continue;
                    }
                    let token = HANDSHAKE_BIT | self.next_handshake;
                    self.next_handshake = (self.next_handshake + 1) & !HANDSHAKE_BIT;
                    let ev = EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, token);
                    if self.epoll.ctl(ControlOperation::Add, stream.as_raw_fd(), ev).is_ok() {
                        self.handshakes.insert(token, Handshake { stream, line: Vec::new() });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Read `CONNECT <port>\n` a byte at a time, so nothing after the line
    /// (the start of the stream's payload) is consumed here.
    fn read_handshake(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else { return };
        let mut byte = [0u8; 1];
        let done = loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => break None,
                Ok(_) if byte[0] == b'\n' => break Some(String::from_utf8_lossy(&hs.line).into_owned()),
                Ok(_) if hs.line.len() >= MAX_HANDSHAKE_LINE => break None,
                Ok(_) => hs.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break None,
            }
        };
        let Some(hs) = self.handshakes.remove(&token) else { return };
        let _ = self.epoll.ctl(ControlOperation::Delete, hs.stream.as_raw_fd(), EpollEvent::default());
        let port = done
            .as_deref()
            .and_then(|l| l.trim_end_matches('\r').strip_prefix("CONNECT "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        let Some(peer_port) = port else {
            let mut s = hs.stream;
            let _ = s.write_all(b"ERROR expected 'CONNECT <port>'\n");
            return;
        };
        if self.conns.len() >= MAX_CONNS {
            return;
        }
        let local_port = self.alloc_local_port(peer_port);
        let key = (local_port, peer_port);
        if self.add_conn(key, Conn::new(hs.stream, false)).is_ok() {
            self.push_control(key, OP_REQUEST, 0);
        }
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer_port)) {
                return p;
            }
        }
    }

    fn header(&mut self, key: Key, op: u16, flags: u32, len: u32) -> Header {
        let fwd_cnt = match self.conns.get_mut(&key) {
            Some(c) => {
                c.last_fwd_cnt_sent = c.fwd_cnt;
                c.fwd_cnt
            }
            None => 0,
        };
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt,
        }
    }

    /// The next packet for the guest given a buffer with room for `space`
    /// payload bytes; an RW payload is left in `buf`. None when nothing can
    /// be sent now.
    pub fn next_rx(&mut self, space: usize, buf: &mut Vec<u8>) -> Option<RxPacket> {
        buf.clear();
        if let Some((key, op, flags)) = self.control.pop_front() {
            self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
            return Some(self.header(key, op, flags, 0));
        }
        while let Some(key) = self.rx_ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else { continue };
            conn.in_rx_ready = false;
            if !conn.established || conn.host_eof || !conn.readable || conn.peer_shutdown & SHUTDOWN_RCV != 0 {
                continue;
            }
            let n = space.min(MAX_PAYLOAD).min(conn.peer_credit() as usize);
            if n == 0 {
                continue;
            }
            buf.resize(n, 0);
            match conn.stream.read(&mut buf[..n]) {
                Ok(0) => {
                    conn.host_eof = true;
                    buf.clear();
                    self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
                    return Some(self.header(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, 0));
                }
                Ok(k) => {
                    buf.truncate(k);
                    conn.tx_cnt = conn.tx_cnt.wrapping_add(k as u32);
                    self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
                    self.counters.rx_bytes.fetch_add(k as u64, Ordering::Relaxed);
                    self.mark_rx_ready(key);
                    return Some(self.header(key, OP_RW, 0, k as u32));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                    conn.readable = e.kind() == io::ErrorKind::Interrupted;
                    if conn.readable {
                        self.mark_rx_ready(key);
                    }
                    buf.clear();
                }
                Err(_) => {
                    buf.clear();
                    self.remove(key);
                    self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
                    return Some(self.header(key, OP_RST, 0, 0));
                }
            }
        }
        None
    }

    /// Forget every connection (device reset, or restore: Unix streams
    /// cannot follow a snapshot). Host programs see their streams close.
    pub fn clear(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove(k);
        }
        for (_, hs) in self.handshakes.drain() {
            let _ = self.epoll.ctl(ControlOperation::Delete, hs.stream.as_raw_fd(), EpollEvent::default());
        }
        self.control.clear();
        self.rx_ready.clear();
    }
}
