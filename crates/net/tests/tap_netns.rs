//! Real TAP, bridge, veth and macvtap devices inside network namespaces this
//! test creates (needs root, as CI runs).

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use net::netns::NetNs;
use net::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO};
use net::{MacAddr, Tap, bridge, macvtap};

const WAIT: Duration = Duration::from_secs(3);

#[test]
fn namespace_is_named_with_pid_and_removed_on_drop() {
    let ns = NetNs::create("drop").unwrap();
    assert!(ns.name().contains(&std::process::id().to_string()));
    let path = ns.path().to_path_buf();
    assert!(path.exists());
    // `ip` sees it, and its own loopback is up.
    let out = ns.command("ip").args(["-o", "link", "show", "lo"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("UP"), "{out:?}");
    drop(ns);
    assert!(!path.exists());
}

#[test]
fn tap_frames_reach_the_kernel_and_back() {
    let ns = NetNs::create("tap").unwrap();
    ns.run(|| {
        let tap = Tap::open("ttap0").unwrap();
        assert!(tap.created());
        assert!(tap.vnet_hdr_enabled());
        tap.set_up().unwrap();
        net::iface::set_ipv4("ttap0", Ipv4Addr::new(10, 9, 0, 1), 24).unwrap();
        assert!(net::iface::is_link_up("ttap0").unwrap());

        // Guest -> host: an ARP request written with a zero vnet header...
        let guest = MacAddr::random_local();
        let mut pkt = vec![0u8; net::VNET_HDR_LEN];
        pkt.extend(arp_request(guest, Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 1)));
        assert_eq!(tap.write(&pkt).unwrap(), pkt.len());
        // ...is answered by the kernel: host -> guest.
        let (hdr, reply) =
            tap_recv_matching(&tap, WAIT, |f| is_arp_reply_to(f, guest)).expect("no ARP reply from the kernel");
        assert_eq!(hdr, vec![0u8; 12], "ARP reply needs no offload");
        assert_eq!(&reply[6..12], &tap.host_mac().unwrap().0);
    })
    .unwrap();
}

#[test]
fn offloads_make_the_kernel_hand_over_partial_checksums() {
    let ns = NetNs::create("csum").unwrap();
    ns.run(|| {
        let tap = Tap::open("tcsum0").unwrap();
        let applied = tap.set_offload_best_effort(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO).unwrap();
        assert!(applied & TUN_F_CSUM != 0);
        tap.set_up().unwrap();
        net::iface::set_ipv4("tcsum0", Ipv4Addr::new(10, 9, 1, 1), 24).unwrap();
        let guest = MacAddr::random_local();
        // Teach the kernel the guest's MAC so it sends without ARP.
        let st = std::process::Command::new("ip")
            .args(["neigh", "replace", "10.9.1.2", "lladdr", &guest.to_string(), "dev", "tcsum0"])
            .status()
            .unwrap();
        assert!(st.success());
        let sock = std::net::UdpSocket::bind("10.9.1.1:0").unwrap();
        sock.send_to(&[7u8; 3000], "10.9.1.2:9999").unwrap();
        // A 3000-byte datagram: with UFO it arrives as one GSO frame, without
        // as IP fragments; either way the first frame carries NEEDS_CSUM (1).
        let (hdr, frame) =
            tap_recv_matching(&tap, WAIT, |f| ethertype(f) == ETH_P_IP && f[..6] == guest.0).expect("no UDP frame");
        assert_eq!(frame[23], 17, "IP protocol is UDP");
        let offloaded = hdr[0] & 1 != 0;
        let fragmented = u16::from_be_bytes([frame[20], frame[21]]) & 0x2000 != 0;
        assert!(offloaded || fragmented, "header {hdr:?}");
        // Now turn offloads off: the kernel must checksum itself.
        tap.set_offload(0).unwrap();
        sock.send_to(&[9u8; 100], "10.9.1.2:9999").unwrap();
        let (hdr, _) = tap_recv_matching(&tap, WAIT, |f| ethertype(f) == ETH_P_IP && f.len() < 200).expect("no frame");
        assert_eq!(hdr[0] & 1, 0, "no partial checksum without TUN_F_CSUM");
    })
    .unwrap();
}

#[test]
fn tap_on_a_bridge_exchanges_frames_with_a_veth_peer() {
    let ns = NetNs::create("br").unwrap();
    ns.run(|| {
        bridge::create_bridge("tbr0").unwrap();
        bridge::set_address("tbr0", Ipv4Addr::new(10, 9, 2, 1), 24).unwrap();
        let tap = Tap::open("tbtap0").unwrap();
        bridge::add_port("tbr0", "tbtap0").unwrap();
        net::netlink::Netlink::open().unwrap().create_veth("tbv0", "tbv1").unwrap();
        bridge::add_port("tbr0", "tbv0").unwrap();
        bridge::set_up("tbv1", true).unwrap();
        assert_eq!(bridge::master_of("tbtap0").as_deref(), Some("tbr0"));
        assert_eq!(bridge::master_of("tbv0").as_deref(), Some("tbr0"));
        let peer = PacketSocket::bind("tbv1").unwrap();
        let guest = MacAddr::random_local();
        let other = MacAddr::random_local();

        // TAP (guest) -> bridge -> veth peer.
        let frame = test_frame(other, guest, 0x11, 200);
        let mut pkt = vec![0u8; 12];
        pkt.extend_from_slice(&frame);
        let got = (0..20).find_map(|_| {
            tap.write(&pkt).unwrap();
            peer.recv_matching(Duration::from_millis(150), |f| f == frame.as_slice())
        });
        assert!(got.is_some(), "frame from the TAP never reached the veth peer");

        // veth peer -> bridge (learned guest MAC) -> TAP.
        let back = test_frame(guest, other, 0x22, 300);
        peer.send(&back).unwrap();
        let (_, f) = tap_recv_matching(&tap, WAIT, |f| f == back.as_slice()).expect("frame never reached the TAP");
        assert_eq!(f.len(), 300);

        bridge::remove_port("tbtap0").unwrap();
        assert_eq!(bridge::master_of("tbtap0"), None);
        bridge::delete_bridge("tbr0").unwrap();
        assert!(net::iface::if_index("tbr0").is_err());
    })
    .unwrap();
}

#[test]
fn macvtap_frames_leave_through_the_parent() {
    let ns = NetNs::create("mvt").unwrap();
    ns.run(|| {
        let mut nl = net::netlink::Netlink::open().unwrap();
        nl.create_veth("tmv0", "tmv1").unwrap();
        nl.set_up("tmv0", true).unwrap();
        nl.set_up("tmv1", true).unwrap();
        let guest = MacAddr::random_local();
        macvtap::create_macvtap("tmvtap0", "tmv0", Some(guest)).unwrap();
        let tap = macvtap::open_macvtap("tmvtap0").unwrap();
        assert_eq!(net::iface::get_hwaddr("tmvtap0").unwrap(), guest);
        let peer = PacketSocket::bind("tmv1").unwrap();
        let other = MacAddr::random_local();
        let frame = test_frame(other, guest, 0x33, 128);
        let mut pkt = vec![0u8; 12];
        pkt.extend_from_slice(&frame);
        tap.write(&pkt).unwrap();
        assert!(peer.recv_matching(WAIT, |f| f == frame.as_slice()).is_some(), "macvtap frame not on the parent");
        // And back: frames to the guest MAC arriving on the parent reach the macvtap.
        let back = test_frame(guest, other, 0x44, 90);
        peer.send(&back).unwrap();
        assert!(tap_recv_matching(&tap, WAIT, |f| f == back.as_slice()).is_some());
        drop(tap);
        macvtap::delete_macvtap("tmvtap0").unwrap();
    })
    .unwrap();
}

#[test]
fn interfaces_move_between_namespaces() {
    let ns = NetNs::create("move").unwrap();
    let other = NetNs::create("move2").unwrap();
    ns.run(|| net::netlink::Netlink::open().unwrap().create_veth("tmove0", "tmove1").unwrap()).unwrap();
    ns.run(|| other.move_interface("tmove1").unwrap()).unwrap();
    assert!(ns.run(|| net::iface::if_index("tmove1").is_err()).unwrap());
    assert!(other.run(|| net::iface::if_index("tmove1").is_ok()).unwrap());
}

#[test]
fn persistent_tap_survives_close_and_reattaches() {
    let ns = NetNs::create("persist").unwrap();
    ns.run(|| {
        let tap = Tap::open("tpers0").unwrap();
        tap.set_persistent(true).unwrap();
        drop(tap);
        assert!(net::iface::if_index("tpers0").is_ok());
        let again = Tap::open("tpers0").unwrap();
        assert!(!again.created());
        again.set_persistent(false).unwrap();
        drop(again);
        assert!(net::iface::if_index("tpers0").is_err());
    })
    .unwrap();
}

#[test]
fn bad_names_give_one_line_errors() {
    let e = Tap::open("this-name-is-way-too-long").unwrap_err().to_string();
    assert!(e.contains("invalid interface name") && !e.contains('\n'), "{e}");
    let e = bridge::add_port("nosuchbr", "nosuchport").unwrap_err().to_string();
    assert!(e.contains("nosuchport"), "{e}");
}
