//! virtio-net against test guest memory and a real TAP inside a network
//! namespace created per test (root, as CI runs): frames the device
//! transmits reach the TAP's kernel side and frames sent there reach the
//! guest's rx buffers.

use migration::Pausable;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::net::netns::NetNs;
use ::net::packet::PacketSocket;
use ::net::{MacAddr, Tap};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::test_driver::{Driver, TestIrq, guest_memory, wait_for};
use super::*;

const WAIT: Duration = Duration::from_secs(3);
const RXQ_BASE: u64 = 0x0;
const TXQ_BASE: u64 = 0x1_0000;
const CTRLQ_BASE: u64 = 0x2_0000;
const BUFS: u64 = 0x10_0000;

/// A namespace whose TAPs carry only the frames the test sends.
fn quiet_ns(tag: &str) -> NetNs {
    let ns = NetNs::create(tag).unwrap();
    ns.disable_ipv6().unwrap();
    ns
}

struct Rig {
    net: Net,
    mem: GuestMemoryMmap,
    rx: Driver,
    tx: Driver,
    ctrl: Driver,
    irq: Arc<TestIrq>,
    /// Raw socket on the TAP's kernel side.
    peer: PacketSocket,
    guest: MacAddr,
}

/// A NIC on TAP `tap` (created here), activated with `features` (masked to
/// what the device offers).
fn rig(tap: &str, features: u64) -> Rig {
    let cfg: NetConfig = format!("tap={tap}").parse().unwrap();
    let mut net = Net::new("net0", &cfg).unwrap();
    assert_eq!(net.device_type(), TYPE_NET);
    net.ack_features(features);
    let (mem, atomic) = guest_memory(16 << 20);
    let mut rx = Driver::new(&mem, RXQ_BASE, 256);
    let mut tx = Driver::new(&mem, TXQ_BASE, 256);
    let mut ctrl = Driver::new(&mem, CTRLQ_BASE, 64);
    let irq = Arc::new(TestIrq::default());
    let mut queues = vec![rx.activate(0, false), tx.activate(1, false)];
    if net.common.has_feature(VIRTIO_NET_F_CTRL_VQ) {
        queues.push(ctrl.activate(2, false));
    }
    net.activate(atomic, irq.clone(), queues).unwrap();
    let peer = PacketSocket::bind(tap).unwrap();
    let guest = cfg.mac;
    Rig { net, mem, rx, tx, ctrl, irq, peer, guest }
}

fn frame(dst: MacAddr, src: MacAddr, len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&0x88b5u16.to_be_bytes());
    while f.len() < len {
        f.push(seed.wrapping_add((f.len() * 7) as u8));
    }
    f
}

fn counter(net: &Net, name: &str) -> u64 {
    net.counters()[name]
}

#[test]
fn config_space_and_features() {
    let ns = quiet_ns("vnetcfg");
    ns.run(|| {
        let cfg: NetConfig = "tap=vcfg0,mac=52:54:00:aa:bb:cc".parse().unwrap();
        let net = Net::new("net0", &cfg).unwrap();
        let mut c = [0u8; 8];
        net.read_config(0, &mut c);
        assert_eq!(&c[..6], &[0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), VIRTIO_NET_S_LINK_UP);
        let f = net.features();
        for bit in [VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM] {
            assert!(f & bit != 0, "feature {bit:#x} not offered");
        }
        assert!(f & crate::device::VIRTIO_RING_F_EVENT_IDX != 0);
        // The TAP exists and is up in the namespace.
        assert!(::net::iface::is_link_up("vcfg0").unwrap());
    })
    .unwrap();
}

#[test]
fn offloads_follow_guest_features() {
    assert_eq!(tap_offloads_for(0), 0);
    // TSO without checksum offload is meaningless and is not applied.
    assert_eq!(tap_offloads_for(VIRTIO_NET_F_GUEST_TSO4), 0);
    let all = VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6;
    assert_eq!(tap_offloads_for(all), TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
}

#[test]
fn tx_frames_reach_the_tap_peer() {
    let ns = quiet_ns("vnettx");
    ns.run(|| {
        let mut r = rig("vtx0", u64::MAX);
        let other = MacAddr::random_local();
        let f = frame(other, r.guest, 600, 1);
        // Header and frame in separate descriptors, frame split in two.
        r.mem.write_slice(&[0u8; HDR_LEN], GuestAddress(BUFS)).unwrap();
        r.mem.write_slice(&f[..100], GuestAddress(BUFS + 0x1000)).unwrap();
        r.mem.write_slice(&f[100..], GuestAddress(BUFS + 0x2000)).unwrap();
        let head =
            r.tx.add_chain(&[(BUFS, HDR_LEN as u32, false), (BUFS + 0x1000, 100, false), (BUFS + 0x2000, 500, false)]);
        r.tx.kick();
        let got = r.peer.recv_matching(WAIT, |p| p == f.as_slice());
        assert!(got.is_some(), "frame sent by the device never reached the TAP");
        assert_eq!(r.tx.wait_used(1, WAIT), vec![(head as u32, 0)]);
        assert!(wait_for(WAIT, || counter(&r.net, "tx_packets") == 1));
        assert_eq!(counter(&r.net, "tx_bytes"), 600);
        assert!(r.irq.queue.load(Ordering::SeqCst) >= 1);
    })
    .unwrap();
}

#[test]
fn rx_merges_buffers_and_sets_num_buffers() {
    let ns = quiet_ns("vnetrx");
    ns.run(|| {
        let mut r = rig("vrx0", u64::MAX);
        ::net::iface::set_mtu("vrx0", 9000).unwrap();
        for k in 0..3 {
            r.rx.add_chain(&[(BUFS + k * 0x1000, 1000, true)]);
        }
        r.rx.kick();
        let f = frame(r.guest, MacAddr::random_local(), 2500, 9);
        r.peer.send(&f).unwrap();
        let used = r.rx.wait_used(3, WAIT);
        assert_eq!(used, vec![(0, 1000), (1, 1000), (2, 512)]);
        let mut got = vec![0u8; HDR_LEN + 2500];
        r.mem.read_slice(&mut got[..1000], GuestAddress(BUFS)).unwrap();
        r.mem.read_slice(&mut got[1000..2000], GuestAddress(BUFS + 0x1000)).unwrap();
        r.mem.read_slice(&mut got[2000..], GuestAddress(BUFS + 0x2000)).unwrap();
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
        assert_eq!(&got[HDR_LEN..], f.as_slice());
        assert_eq!(counter(&r.net, "rx_packets"), 1);
        assert_eq!(counter(&r.net, "rx_bytes"), 2500);
    })
    .unwrap();
}

#[test]
fn rx_waits_for_buffers_then_resumes_on_notify() {
    let ns = quiet_ns("vnetwait");
    ns.run(|| {
        let mut r = rig("vwait0", u64::MAX);
        let f = frame(r.guest, MacAddr::random_local(), 200, 3);
        r.peer.send(&f).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(counter(&r.net, "rx_packets"), 0);
        assert_eq!(counter(&r.net, "rx_drops"), 0, "no buffers must mean wait, not drop");
        r.rx.add_chain(&[(BUFS, 4096, true)]);
        r.rx.kick();
        let used = r.rx.wait_used(1, WAIT);
        assert_eq!(used, vec![(0, (HDR_LEN + 200) as u32)]);
        let mut got = vec![0u8; 200];
        r.mem.read_slice(&mut got, GuestAddress(BUFS + HDR_LEN as u64)).unwrap();
        assert_eq!(got, f);
    })
    .unwrap();
}

#[test]
fn rx_without_mergeable_drops_frames_too_big_for_one_chain() {
    let ns = quiet_ns("vnetsmall");
    ns.run(|| {
        let mut r = rig("vsmall0", COMMON_FEATURES | VIRTIO_NET_F_MAC);
        r.rx.add_chain(&[(BUFS, 100, true)]);
        r.rx.add_chain(&[(BUFS + 0x1000, 2048, true)]);
        r.rx.kick();
        r.peer.send(&frame(r.guest, MacAddr::random_local(), 1000, 5)).unwrap();
        // The first chain is too small: returned empty, the frame dropped.
        assert_eq!(r.rx.wait_used(1, WAIT), vec![(0, 0)]);
        assert!(wait_for(WAIT, || counter(&r.net, "rx_drops") == 1));
        r.peer.send(&frame(r.guest, MacAddr::random_local(), 1000, 6)).unwrap();
        assert_eq!(r.rx.wait_used(1, WAIT), vec![(1, 1012)]);
        let mut hdr = [0u8; HDR_LEN];
        r.mem.read_slice(&mut hdr, GuestAddress(BUFS + 0x1000)).unwrap();
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1, "num_buffers is 1 without MRG_RXBUF");
    })
    .unwrap();
}

#[test]
fn hostile_tx_chains_are_dropped_and_the_device_keeps_working() {
    let ns = quiet_ns("vnethost");
    ns.run(|| {
        let mut r = rig("vhost0", u64::MAX);
        // Outside guest memory.
        r.tx.add_chain(&[(0xffff_f000_0000, 64, false)]);
        // Too short for the vnet header.
        r.tx.add_chain(&[(BUFS, 5, false)]);
        // Oversized: 70000 bytes.
        r.tx.add_chain(&[(BUFS, 70_000, false)]);
        // Length overflowing the end of memory.
        r.tx.add_chain(&[((16 << 20) - 16, 64, false)]);
        // A loop: descriptor 10 -> 11 -> 10.
        r.tx.write_desc(10, BUFS, 64, 1, 11);
        r.tx.write_desc(11, BUFS, 64, 1, 10);
        r.tx.publish(10);
        r.tx.kick();
        let used = r.tx.wait_used(5, WAIT);
        assert_eq!(used.len(), 5, "every hostile chain is returned: {used:?}");
        assert!(used.iter().all(|&(_, len)| len == 0));
        assert!(wait_for(WAIT, || counter(&r.net, "tx_errors") + counter(&r.net, "tx_drops") == 5));
        assert_eq!(counter(&r.net, "tx_packets"), 0);
        assert_eq!(r.irq.resets.load(Ordering::SeqCst), 0);
        // A good frame still goes through afterwards.
        let f = frame(MacAddr::random_local(), r.guest, 64, 2);
        let mut pkt = vec![0u8; HDR_LEN];
        pkt.extend_from_slice(&f);
        r.mem.write_slice(&pkt, GuestAddress(BUFS + 0x4000)).unwrap();
        r.tx.add_chain(&[(BUFS + 0x4000, pkt.len() as u32, false)]);
        r.tx.kick();
        assert!(r.peer.recv_matching(WAIT, |p| p == f.as_slice()).is_some());
    })
    .unwrap();
}

#[test]
fn hostile_rx_chain_and_ring_index() {
    let ns = quiet_ns("vnetring");
    ns.run(|| {
        let mut r = rig("vring0", u64::MAX);
        // A read-only rx buffer: nothing can be written, the frame is dropped.
        r.rx.add_chain(&[(BUFS, 4096, false)]);
        r.rx.kick();
        r.peer.send(&frame(r.guest, MacAddr::random_local(), 100, 1)).unwrap();
        assert_eq!(r.rx.wait_used(1, WAIT), vec![(0, 0)]);
        assert!(wait_for(WAIT, || counter(&r.net, "rx_errors") == 1));
        // An available index 1000 entries ahead of a 256-entry ring breaks
        // the device: it asks for a reset instead of reading garbage.
        r.tx.set_avail_idx(1000);
        r.tx.kick();
        assert!(wait_for(WAIT, || r.irq.resets.load(Ordering::SeqCst) == 1));
    })
    .unwrap();
}

#[test]
fn reset_pause_resume_and_snapshot() {
    let ns = quiet_ns("vnetlife");
    ns.run(|| {
        let mut r = rig("vlife0", u64::MAX);
        r.net.pause().unwrap();
        let f = frame(MacAddr::random_local(), r.guest, 80, 4);
        let mut pkt = vec![0u8; HDR_LEN];
        pkt.extend_from_slice(&f);
        r.mem.write_slice(&pkt, GuestAddress(BUFS)).unwrap();
        r.tx.add_chain(&[(BUFS, pkt.len() as u32, false)]);
        r.tx.kick();
        assert!(r.peer.recv_matching(Duration::from_millis(200), |p| p == f.as_slice()).is_none());
        r.net.resume().unwrap();
        assert!(r.peer.recv_matching(WAIT, |p| p == f.as_slice()).is_some(), "nothing sent after resume");
        let snap = r.net.snapshot().unwrap().unwrap();
        let st: NetState = snap.to_state().unwrap();
        assert_eq!(st.mac, r.guest);
        assert_eq!(st.tap, "vlife0");
        r.net.reset();
        // A fresh device restored from the snapshot takes the snapshot's MAC.
        let tap = Tap::open("vlife1").unwrap();
        let mut other = Net::with_tap("net0", tap, MacAddr::random_local()).unwrap();
        other.restore(&snap).unwrap();
        assert_eq!(other.mac(), r.guest);
    })
    .unwrap();
}

#[test]
fn rx_with_event_idx_resumes_after_buffers_arrive() {
    let ns = quiet_ns("vnetevidx");
    ns.run(|| {
        let cfg: NetConfig = "tap=vevidx0".parse().unwrap();
        let mut net = Net::new("net0", &cfg).unwrap();
        net.ack_features(!VIRTIO_NET_F_CTRL_VQ);
        let (mem, atomic) = guest_memory(16 << 20);
        let mut rx = Driver::new(&mem, RXQ_BASE, 256);
        let mut tx = Driver::new(&mem, TXQ_BASE, 256);
        let irq = Arc::new(TestIrq::default());
        net.activate(atomic, irq.clone(), vec![rx.activate(0, true), tx.activate(1, true)]).unwrap();
        let peer = PacketSocket::bind("vevidx0").unwrap();
        for k in 0..3u8 {
            peer.send(&frame(cfg.mac, MacAddr::random_local(), 100, k)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        // No buffers yet: the device asked to be told (avail_event) when the
        // guest posts past its position.
        let avail_event: u16 = mem.read_obj(GuestAddress(rx.used + 4 + 8 * 256)).unwrap();
        assert_eq!(avail_event, 0);
        for k in 0..3 {
            rx.add_chain(&[(BUFS + k * 0x1000, 2048, true)]);
        }
        rx.kick();
        let used = rx.wait_used(3, WAIT);
        assert_eq!(used.len(), 3, "{used:?}");
        assert!(used.iter().all(|&(_, len)| len == 112));
    })
    .unwrap();
}

/// Throughput of the device's TAP path with MTU-sized frames (not a guest
/// benchmark: the "guest" is this test recycling buffers). Run with
/// `cargo test --release -p virtio-devices net::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let ns = quiet_ns("vnetbench");
    ns.run(|| {
        let mut r = rig("vbench0", u64::MAX);
        // TERN_BENCH_FRAME=60000 measures large (GSO-sized) frames on tx.
        let frame_len: usize = std::env::var("TERN_BENCH_FRAME").ok().and_then(|v| v.parse().ok()).unwrap_or(1514);
        const FRAME: usize = 1514;
        const BATCH: u64 = 128;
        const ROUNDS: u64 = 400;
        // tx: guest -> TAP.
        let f = frame(MacAddr::random_local(), r.guest, frame_len, 1);
        let mut pkt = vec![0u8; HDR_LEN];
        pkt.extend_from_slice(&f);
        let stride = (pkt.len() as u64 + 0xfff) & !0xfff;
        for k in 0..BATCH {
            r.mem.write_slice(&pkt, GuestAddress(BUFS + k * stride)).unwrap();
        }
        let start = std::time::Instant::now();
        for _ in 0..ROUNDS {
            for k in 0..BATCH {
                r.tx.add_chain(&[(BUFS + k * stride, pkt.len() as u32, false)]);
            }
            r.tx.kick();
            assert_eq!(r.tx.wait_used(BATCH as usize, WAIT).len(), BATCH as usize);
        }
        let secs = start.elapsed().as_secs_f64();
        let n = BATCH * ROUNDS;
        eprintln!(
            "tx: {n} frames of {frame_len} B in {secs:.3} s = {:.0} kpps, {:.0} Mbit/s (drops {})",
            n as f64 / secs / 1e3,
            n as f64 * frame_len as f64 * 8.0 / secs / 1e6,
            counter(&r.net, "tx_drops")
        );
        // rx: TAP -> guest, the peer sending as fast as it can.
        let base = 0xa0_0000u64;
        for k in 0..256u64 {
            r.rx.add_chain(&[(base + k * 0x1000, 4096, true)]);
        }
        r.rx.kick();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rx_frame = frame(r.guest, MacAddr::random_local(), FRAME, 2);
        let sender = {
            let stop = stop.clone();
            let peer = PacketSocket::bind("vbench0").unwrap();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = peer.send(&rx_frame);
                }
            })
        };
        let start = std::time::Instant::now();
        let mut got = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            let used = r.rx.take_used();
            if used.is_empty() {
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
            for (head, _) in used {
                got += 1;
                let addr = base + (head as u64) * 0x1000;
                let h = r.rx.add_chain(&[(addr, 4096, true)]);
                debug_assert_eq!(h as u32, head);
            }
            r.rx.kick();
        }
        stop.store(true, Ordering::Relaxed);
        sender.join().unwrap();
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "rx: {got} frames of {FRAME} B in {secs:.3} s = {:.0} kpps, {:.0} Mbit/s (drops {})",
            got as f64 / secs / 1e3,
            got as f64 * FRAME as f64 * 8.0 / secs / 1e6,
            counter(&r.net, "rx_drops")
        );
        assert!(got > 0);
    })
    .unwrap();
}

#[test]
fn through_the_mmio_transport() {
    use crate::testing::MmioHarness;
    use vm_memory::GuestAddressSpace;
    let ns = quiet_ns("vnetmmio");
    ns.run(|| {
        let cfg: NetConfig = "tap=vmmio0,mac=52:54:00:01:02:03".parse().unwrap();
        let dev = Net::new("net0", &cfg).unwrap();
        let mut h = MmioHarness::new(Arc::new(std::sync::Mutex::new(dev)));
        assert_eq!(h.read(0x08), TYPE_NET);
        assert_eq!(h.read(0x100).to_le_bytes(), [0x52, 0x54, 0x00, 0x01]);
        assert_eq!(h.read(0x104) & 0xffff, 0x0302);
        assert_eq!(h.read(0x104) >> 16, VIRTIO_NET_S_LINK_UP as u32);
        h.init(u64::MAX, &[64, 64, 16]);
        assert_eq!(h.status() & 0x40, 0);
        let peer = PacketSocket::bind("vmmio0").unwrap();
        let f = frame(MacAddr::random_local(), cfg.mac, 300, 8);
        let mut pkt = vec![0u8; HDR_LEN];
        pkt.extend_from_slice(&f);
        let mem = h.mem.memory();
        mem.write_slice(&pkt, GuestAddress(0x10_0000)).unwrap();
        h.queues[1].add(&mem, &[(0x10_0000, pkt.len() as u32, false)]);
        h.queues[0].add(&mem, &[(0x20_0000, 2048, true)]);
        drop(mem);
        h.kick(1);
        h.kick(0);
        assert!(peer.recv_matching(WAIT, |p| p == f.as_slice()).is_some());
        let back = frame(cfg.mac, MacAddr::random_local(), 200, 9);
        peer.send(&back).unwrap();
        assert_eq!(h.queues[0].wait_used(&h.mem), Some((0, 212)));
        assert!(h.interrupts() >= 1);
    })
    .unwrap();
}

/// Random descriptor tables and rings thrown at the handler directly (so a
/// panic fails the test): every round ends in Ok or a "needs reset", and
/// nothing outside guest memory is touched (the process would crash).
#[test]
fn random_hostile_rings_never_panic() {
    use super::handler::{NetBackend, NetHandler};
    use crate::net::test_driver::scribble;
    use crate::worker::QueueHandler;
    let ns = quiet_ns("vnetfuzz");
    ns.run(|| {
        let tap = Arc::new(Tap::open("vfuzz0").unwrap());
        tap.set_up().unwrap();
        let peer = PacketSocket::bind("vfuzz0").unwrap();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut broken = 0;
        for round in 0..300 {
            let (mem, atomic) = guest_memory(16 << 20);
            let mut rx = Driver::new(&mem, RXQ_BASE, 16);
            let mut tx = Driver::new(&mem, TXQ_BASE, 16);
            let (qr, qt) = (rx.activate(0, round % 2 == 0), tx.activate(1, round % 3 == 0));
            let backend = NetBackend {
                queue_index: [0, 1],
                tap: tap.clone(),
                mrg_rxbuf: round % 2 == 1,
                counters: Arc::default(),
            };
            let mut h = NetHandler::new(atomic, Arc::new(TestIrq::default()), qr.queue, qt.queue, backend);
            scribble(&mut tx, &mut rng, 16 << 20);
            scribble(&mut rx, &mut rng, 16 << 20);
            let _ = peer.send(&frame(MacAddr::random_local(), MacAddr::random_local(), 60 + round, 1));
            for q in [1, 0, 1, 0] {
                if h.queue_notified(q).is_err() {
                    broken += 1;
                    break;
                }
            }
        }
        eprintln!("net: 300 random rings, {broken} marked the device broken");
    })
    .unwrap();
}

#[test]
fn control_queue_acks_rx_mode_and_announce_after_restore() {
    let ns = quiet_ns("vnetctrl");
    ns.run(|| {
        let mut r = rig("vctrl0", u64::MAX);
        let cmd = |r: &mut Rig, class: u8, cmd: u8, at: u64| -> u8 {
            r.mem.write_slice(&[class, cmd, 1], GuestAddress(at)).unwrap();
            r.mem.write_slice(&[0xff], GuestAddress(at + 0x100)).unwrap();
            r.ctrl.add_chain(&[(at, 3, false), (at + 0x100, 1, true)]);
            r.ctrl.kick();
            assert_eq!(r.ctrl.wait_used(1, WAIT).len(), 1);
            r.mem.read_obj(GuestAddress(at + 0x100)).unwrap()
        };
        assert_eq!(cmd(&mut r, 0, 0, BUFS), ctrl::OK, "RX PROMISC is acknowledged");
        assert_eq!(cmd(&mut r, 9, 9, BUFS + 0x1000), ctrl::ERR, "unknown class is refused");
        // Restore: the guest is asked to announce itself.
        let snap = r.net.snapshot().unwrap().unwrap();
        r.net.reset();
        drop(r);
        let mut r = {
            let tap = Tap::open("vctrl1").unwrap();
            tap.set_up().unwrap();
            let mut net = Net::with_tap("net0", tap, MacAddr::random_local()).unwrap();
            net.restore(&snap).unwrap();
            let (mem, atomic) = guest_memory(16 << 20);
            let mut rx = Driver::new(&mem, RXQ_BASE, 256);
            let mut tx = Driver::new(&mem, TXQ_BASE, 256);
            let mut ctrl = Driver::new(&mem, CTRLQ_BASE, 64);
            let irq = Arc::new(TestIrq::default());
            let qs = vec![rx.activate(0, false), tx.activate(1, false), ctrl.activate(2, false)];
            net.activate(atomic, irq.clone(), qs).unwrap();
            let peer = PacketSocket::bind("vctrl1").unwrap();
            let guest = net.mac();
            Rig { net, mem, rx, tx, ctrl, irq, peer, guest }
        };
        let status = |net: &Net| {
            let mut b = [0u8; 2];
            net.read_config(6, &mut b);
            u16::from_le_bytes(b)
        };
        assert_eq!(status(&r.net), VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE);
        assert_eq!(r.irq.config.load(Ordering::SeqCst), 1);
        assert_eq!(cmd(&mut r, 3, 0, BUFS), ctrl::OK, "ANNOUNCE_ACK");
        assert_eq!(status(&r.net), VIRTIO_NET_S_LINK_UP);
    })
    .unwrap();
}
