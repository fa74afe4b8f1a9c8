//! virtio-vsock against test guest memory and real Unix sockets: the host
//! CONNECT handshake, guest-initiated connections to `PATH_<port>`, data
//! both ways, credit limits, shutdown, hostile packets, and the transport
//! reset event after a restore.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::packet::*;
use super::*;
use crate::net::test_driver::{Driver, TestIrq, guest_memory, wait_for};

const WAIT: Duration = Duration::from_secs(3);
const GUEST_CID: u64 = 3;
const RX_BUF: u32 = 4096 + HDR_LEN as u32;

static DIR_N: AtomicU32 = AtomicU32::new(0);

fn tmp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tern-vsock-{}-{}",
        std::process::id(),
        DIR_N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Rig {
    dev: Vsock,
    dir: PathBuf,
    path: PathBuf,
    mem: GuestMemoryMmap,
    rx: Driver,
    tx: Driver,
    ev: Driver,
    irq: Arc<TestIrq>,
    rx_addr: HashMap<u16, u64>,
    next_rx: u64,
    next_tx: u64,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rig_with(dev: Vsock, dir: PathBuf, post_event: bool) -> Rig {
    let path = dev.socket_path().to_path_buf();
    let (mem, atomic) = guest_memory(16 << 20);
    let mut rx = Driver::new(&mem, 0, 256);
    let mut tx = Driver::new(&mem, 0x1_0000, 256);
    let mut ev = Driver::new(&mem, 0x2_0000, 16);
    if post_event {
        ev.add_chain(&[(0x30_0000, 8, true)]);
    }
    let irq = Arc::new(TestIrq::default());
    let mut dev = dev;
    dev.ack_features(dev.features());
    let queues = vec![rx.activate(0, false), tx.activate(1, false), ev.activate(2, false)];
    dev.activate(atomic, irq.clone(), queues).unwrap();
    let mut r =
        Rig { dev, dir, path, mem, rx, tx, ev, irq, rx_addr: HashMap::new(), next_rx: 0x10_0000, next_tx: 0x80_0000 };
    r.post_rx(16);
    r
}

fn rig() -> Rig {
    let dir = tmp_dir();
    let cfg: VsockConfig = format!("cid={GUEST_CID},socket={}", dir.join("v.sock").display()).parse().unwrap();
    rig_with(Vsock::new("vsock0", &cfg).unwrap(), dir, false)
}

fn guest_hdr(src_port: u32, dst_port: u32, op: u16, len: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

impl Rig {
    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = self.next_rx;
            self.next_rx += 0x2000;
            let head = self.rx.add_chain(&[(addr, RX_BUF, true)]);
            self.rx_addr.insert(head, addr);
        }
        self.rx.kick();
    }

    fn send(&mut self, hdr: Header, data: &[u8]) {
        let addr = self.next_tx;
        self.next_tx += 0x1_0000 + 0x1000;
        self.mem.write_slice(&hdr.encode(), GuestAddress(addr)).unwrap();
        self.mem.write_slice(data, GuestAddress(addr + HDR_LEN as u64)).unwrap();
        self.tx.add_chain(&[(addr, HDR_LEN as u32, false), (addr + HDR_LEN as u64, data.len().max(1) as u32, false)]);
        self.tx.kick();
        assert_eq!(self.tx.wait_used(1, WAIT).len(), 1, "tx packet not consumed");
    }

    fn recv(&mut self) -> (Header, Vec<u8>) {
        let used = self.rx.wait_used(1, WAIT);
        assert_eq!(used.len(), 1, "no packet for the guest");
        let (head, len) = used[0];
        let addr = self.rx_addr[&(head as u16)];
        let mut raw = [0u8; HDR_LEN];
        self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
        let hdr = Header::decode(&raw);
        assert_eq!(len as usize, HDR_LEN + hdr.len as usize);
        let mut data = vec![0u8; hdr.len as usize];
        self.mem.read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64)).unwrap();
        self.post_rx(1);
        (hdr, data)
    }

    fn nothing_for_guest(&mut self) -> bool {
        std::thread::sleep(Duration::from_millis(100));
        self.rx.take_used().is_empty()
    }
}

fn read_line(s: &UnixStream) -> String {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

fn read_exact(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

#[test]
fn host_initiated_connection_carries_data_and_closes() {
    let mut r = rig();
    let mut host = UnixStream::connect(&r.path).unwrap();
    host.write_all(b"CONNECT 1234\n").unwrap();
    let (req, _) = r.recv();
    assert_eq!((req.op, req.src_cid, req.dst_cid, req.dst_port), (OP_REQUEST, HOST_CID, GUEST_CID, 1234));
    let lp = req.src_port;
    r.send(guest_hdr(1234, lp, OP_RESPONSE, 0), &[]);
    assert_eq!(read_line(&host), format!("OK {lp}\n"));

    host.write_all(b"hello").unwrap();
    let (rw, data) = r.recv();
    assert_eq!((rw.op, rw.src_port, rw.dst_port), (OP_RW, lp, 1234));
    assert_eq!(data, b"hello");

    r.send(guest_hdr(1234, lp, OP_RW, 5), b"world");
    assert_eq!(read_exact(&mut host, 5), b"world");

    let mut sd = guest_hdr(1234, lp, OP_SHUTDOWN, 0);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    r.send(sd, &[]);
    let (rst, _) = r.recv();
    assert_eq!(rst.op, OP_RST);
    let mut buf = [0u8; 8];
    assert_eq!(host.read(&mut buf).unwrap(), 0, "host sees EOF after the guest closed");
    assert!(wait_for(WAIT, || r.dev.counters()["conns_closed"] == 1));
}

#[test]
fn guest_initiated_connection_reaches_path_port() {
    let mut r = rig();
    let listener = UnixListener::bind(format!("{}_5000", r.path.display())).unwrap();
    r.send(guest_hdr(77, 5000, OP_REQUEST, 0), &[]);
    let (resp, _) = r.recv();
    assert_eq!((resp.op, resp.src_port, resp.dst_port, resp.buf_alloc), (OP_RESPONSE, 5000, 77, muxer::CONN_BUF_ALLOC));
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(b"ping").unwrap();
    let (rw, data) = r.recv();
    assert_eq!((rw.op, data.as_slice()), (OP_RW, &b"ping"[..]));
    r.send(guest_hdr(77, 5000, OP_RW, 4), b"pong");
    assert_eq!(read_exact(&mut host, 4), b"pong");
    // Host closes: the guest is told both directions are shut.
    drop(host);
    let (sd, _) = r.recv();
    assert_eq!((sd.op, sd.flags), (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND));
    r.send(guest_hdr(77, 5000, OP_RST, 0), &[]);
    assert!(wait_for(WAIT, || r.dev.counters()["conns_closed"] == 1));
    // No listener on port 5001: refused with RST.
    r.send(guest_hdr(78, 5001, OP_REQUEST, 0), &[]);
    let (rst, _) = r.recv();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 5001, 78));
}

#[test]
fn credit_limits_what_the_host_sends() {
    let mut r = rig();
    let listener = UnixListener::bind(format!("{}_6000", r.path.display())).unwrap();
    let mut req = guest_hdr(90, 6000, OP_REQUEST, 0);
    req.buf_alloc = 16;
    r.send(req, &[]);
    assert_eq!(r.recv().0.op, OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(&[7u8; 100]).unwrap();
    let (rw, data) = r.recv();
    assert_eq!((rw.op, data.len()), (OP_RW, 16));
    assert!(r.nothing_for_guest(), "sent beyond the guest's credit");
    // The guest consumed 16 bytes.
    let mut cu = guest_hdr(90, 6000, OP_CREDIT_UPDATE, 0);
    cu.buf_alloc = 16;
    cu.fwd_cnt = 16;
    r.send(cu, &[]);
    let (rw, data) = r.recv();
    assert_eq!((rw.op, data.len()), (OP_RW, 16));
    // A credit request is answered with our buffer and forwarded count.
    let mut creq = guest_hdr(90, 6000, OP_CREDIT_REQUEST, 0);
    creq.buf_alloc = 16;
    creq.fwd_cnt = 16;
    r.send(creq, &[]);
    let (upd, _) = r.recv();
    assert_eq!((upd.op, upd.buf_alloc, upd.fwd_cnt), (OP_CREDIT_UPDATE, muxer::CONN_BUF_ALLOC, 0));
}

#[test]
fn hostile_packets_are_dropped_or_reset() {
    let mut r = rig();
    // Chain shorter than the header.
    r.mem.write_slice(&[1u8; 10], GuestAddress(0x80_0000)).unwrap();
    r.tx.add_chain(&[(0x80_0000, 10, false)]);
    // Header claims more payload than the chain has.
    r.mem.write_slice(&guest_hdr(1, 2, OP_RW, 5000).encode(), GuestAddress(0x81_0000)).unwrap();
    r.tx.add_chain(&[(0x81_0000, HDR_LEN as u32 + 10, false)]);
    // Outside guest memory.
    r.tx.add_chain(&[(0x7fff_0000_0000, 64, false)]);
    r.tx.kick();
    assert_eq!(r.tx.wait_used(3, WAIT).len(), 3);
    assert!(wait_for(WAIT, || r.dev.counters()["bad_packets"] == 3));
    // Spoofed source CID: silently dropped.
    let mut spoof = guest_hdr(1, 2, OP_REQUEST, 0);
    spoof.src_cid = 99;
    r.send(spoof, &[]);
    assert!(r.nothing_for_guest());
    // Datagram type: reset.
    let mut dgram = guest_hdr(5, 6, OP_REQUEST, 0);
    dgram.type_ = 2;
    r.send(dgram, &[]);
    assert_eq!(r.recv().0.op, OP_RST);
    // RW on a connection that does not exist: reset.
    r.send(guest_hdr(8, 9, OP_RW, 3), b"abc");
    assert_eq!(r.recv().0.op, OP_RST);
    // An rx buffer too small for a header is returned empty.
    r.rx.add_chain(&[(0xf0_0000, 8, true)]);
    r.send(guest_hdr(10, 11, OP_CREDIT_REQUEST, 0), &[]);
    let _ = r.rx.wait_used(1, WAIT);
    assert_eq!(r.irq.resets.load(Ordering::SeqCst), 0, "hostile packets must not break the device");
}

#[test]
fn bad_handshake_gets_an_error_line() {
    let r = rig();
    let mut host = UnixStream::connect(&r.path).unwrap();
    host.write_all(b"HELLO\n").unwrap();
    assert!(read_line(&host).starts_with("ERROR"));
}

#[test]
fn restore_sends_transport_reset_event() {
    let mut r = rig();
    let snap = r.dev.snapshot().unwrap().unwrap();
    r.dev.reset();
    let dir = tmp_dir();
    let cfg: VsockConfig = format!("cid={GUEST_CID},socket={}", dir.join("v.sock").display()).parse().unwrap();
    let mut dev = Vsock::new("vsock0", &cfg).unwrap();
    dev.restore(&snap).unwrap();
    let mut r2 = rig_with(dev, dir, true);
    let used = r2.ev.wait_used(1, WAIT);
    assert_eq!(used, vec![(0, 4)]);
    let id: u32 = r2.mem.read_obj(GuestAddress(0x30_0000)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    // A snapshot from another CID is refused.
    let other: VsockConfig = format!("cid=9,socket={}", r.dir.join("w.sock").display()).parse().unwrap();
    assert!(Vsock::new("vsock0", &other).unwrap().restore(&snap).is_err());
}

#[test]
fn config_space_and_bad_socket_path() {
    let r = rig();
    let mut c = [0u8; 8];
    r.dev.read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c), GUEST_CID);
    let file = r.dir.join("plain");
    std::fs::write(&file, b"x").unwrap();
    let cfg = VsockConfig { cid: 3, socket: file };
    let e = Vsock::new("v", &cfg).err().unwrap().to_string();
    assert!(e.contains("not a Unix socket"), "{e}");
}

#[test]
fn through_the_mmio_transport() {
    use crate::testing::MmioHarness;
    use vm_memory::GuestAddressSpace;
    let dir = tmp_dir();
    let cfg: VsockConfig = format!("cid=7,socket={}", dir.join("v.sock").display()).parse().unwrap();
    let dev = Vsock::new("vsock0", &cfg).unwrap();
    let mut h = MmioHarness::new(Arc::new(std::sync::Mutex::new(dev)));
    assert_eq!(h.read(0x08), TYPE_VSOCK);
    assert_eq!((h.read(0x100), h.read(0x104)), (7, 0), "guest_cid in config space");
    h.init(u64::MAX, &[64, 64, 8]);
    assert_eq!(h.status() & 0x40, 0);
    let listener = UnixListener::bind(format!("{}_1000", cfg.socket.display())).unwrap();
    let mem = h.mem.memory();
    h.queues[0].add(&mem, &[(0x10_0000, RX_BUF, true)]);
    let mut req = guest_hdr(50, 1000, OP_REQUEST, 0);
    req.src_cid = 7;
    mem.write_slice(&req.encode(), GuestAddress(0x20_0000)).unwrap();
    h.queues[1].add(&mem, &[(0x20_0000, HDR_LEN as u32, false)]);
    drop(mem);
    h.kick(0);
    h.kick(1);
    assert!(h.queues[1].wait_used(&h.mem).is_some());
    assert_eq!(h.queues[0].wait_used(&h.mem), Some((0, HDR_LEN as u32)));
    let mut raw = [0u8; HDR_LEN];
    h.mem.memory().read_slice(&mut raw, GuestAddress(0x10_0000)).unwrap();
    let resp = Header::decode(&raw);
    assert_eq!((resp.op, resp.dst_cid, resp.src_port, resp.dst_port), (OP_RESPONSE, 7, 1000, 50));
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_ok(), "the guest's connection reached PATH_1000");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unanswered_host_connect_times_out() {
    let mut r = rig();
    let mut host = UnixStream::connect(&r.path).unwrap();
    host.write_all(b"CONNECT 4321\n").unwrap();
    let (req, _) = r.recv();
    assert_eq!(req.op, OP_REQUEST);
    // The guest never answers: within the timeout (plus a sweep) the host
    // stream closes without OK and the guest gets an RST.
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    let (rst, _) = r.recv();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, req.src_port, 4321));
}

#[test]
fn extreme_port_numbers_work() {
    let mut r = rig();
    let listener = UnixListener::bind(format!("{}_{}", r.path.display(), u32::MAX)).unwrap();
    r.send(guest_hdr(u32::MAX, u32::MAX, OP_REQUEST, 0), &[]);
    assert_eq!(r.recv().0.op, OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(b"edge").unwrap();
    let (rw, data) = r.recv();
    assert_eq!((rw.op, rw.src_port, rw.dst_port, data.as_slice()), (OP_RW, u32::MAX, u32::MAX, &b"edge"[..]));
}

#[test]
fn random_hostile_rings_never_panic() {
    use crate::net::test_driver::scribble;
    use crate::worker::QueueHandler;
    let dir = tmp_dir();
    let listener = UnixListener::bind(dir.join("v.sock")).unwrap();
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut broken = 0;
    for round in 0..300 {
        let (mem, atomic) = guest_memory(16 << 20);
        let mut drivers = [Driver::new(&mem, 0, 16), Driver::new(&mem, 0x1_0000, 16), Driver::new(&mem, 0x2_0000, 8)];
        let queues: Vec<_> =
            drivers.iter_mut().enumerate().map(|(i, d)| d.activate(i as u16, round % 2 == 0).queue).collect();
        let counters = Arc::new(muxer::VsockCounters::default());
        let muxer =
            muxer::Muxer::new(GUEST_CID, &dir.join("v.sock"), listener.try_clone().unwrap(), counters.clone()).unwrap();
        let mut h = VsockHandler {
            mem: atomic,
            interrupt: Arc::new(TestIrq::default()),
            queues,
            index: vec![0, 1, 2],
            muxer,
            reset_event: round % 5 == 0,
            payload: Vec::new(),
            counters,
        };
        for d in drivers.iter_mut() {
            scribble(d, &mut rng, 16 << 20);
        }
        // Also a well-formed REQUEST now and then, so the muxer has replies
        // to push into the scribbled rx ring.
        if round % 4 == 0 {
            mem.write_slice(&guest_hdr(1, 2, OP_REQUEST, 0).encode(), GuestAddress(0x10_0000)).unwrap();
        }
        for q in [1, 0, 2, 1, 0] {
            if h.queue_notified(q).is_err() {
                broken += 1;
                break;
            }
        }
    }
    eprintln!("vsock: 300 random rings, {broken} marked the device broken");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn host_connect_helper_does_the_handshake() {
    let mut r = rig();
    let path = r.path.clone();
    let client = std::thread::spawn(move || host_connect(&path, 2222, WAIT));
    let (req, _) = r.recv();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 2222));
    r.send(guest_hdr(2222, req.src_port, OP_RESPONSE, 0), &[]);
    let (mut s, host_port) = client.join().unwrap().unwrap();
    assert_eq!(host_port, req.src_port);
    r.send(guest_hdr(2222, req.src_port, OP_RW, 3), b"hey");
    assert_eq!(read_exact(&mut s, 3), b"hey");
    // A refused connection is an error naming the port.
    let path = r.path.clone();
    let client = std::thread::spawn(move || host_connect(&path, 3333, WAIT));
    let (req, _) = r.recv();
    r.send(guest_hdr(3333, req.src_port, OP_RST, 0), &[]);
    let e = client.join().unwrap().unwrap_err().to_string();
    assert!(e.contains("3333"), "{e}");
}
