//! A real dnsmasq in a namespace answers a DHCPDISCOVER written to the TAP
//! exactly as a guest NIC would send it (needs root and dnsmasq, which
//! scripts/test.sh installs).

mod common;

use std::time::Duration;

use common::*;
use net::testnet::{DhcpNetwork, RANGE_END, RANGE_START};
use net::{MacAddr, Tap};

fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn dhcp_discover(mac: MacAddr, xid: u32) -> Vec<u8> {
    let mut bootp = vec![0u8; 236];
    bootp[0] = 1; // BOOTREQUEST
    bootp[1] = 1; // Ethernet
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(&xid.to_be_bytes());
    bootp[10..12].copy_from_slice(&0x8000u16.to_be_bytes()); // broadcast reply
    bootp[28..34].copy_from_slice(&mac.0);
    bootp.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1, 255]); // cookie, DHCPDISCOVER, end
    let udp_len = 8 + bootp.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    let c = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&68u16.to_be_bytes());
    f.extend_from_slice(&67u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&bootp);
    f
}

#[test]
fn dnsmasq_offers_an_address_through_the_tap() {
    let net = DhcpNetwork::start("dhcp", "tdhcp0").unwrap();
    let guest = MacAddr::random_local();
    let xid = 0x1234_5678;
    let offer = net
        .ns()
        .run(|| {
            // What the VMM does: attach to the TAP by name inside the namespace.
            let tap = Tap::open("tdhcp0").unwrap();
            assert!(!tap.created(), "the network's persistent TAP should be reused");
            let mut pkt = vec![0u8; net::VNET_HDR_LEN];
            pkt.extend(dhcp_discover(guest, xid));
            (0..10).find_map(|_| {
                tap.write(&pkt).unwrap();
                tap_recv_matching(&tap, Duration::from_millis(500), |f| {
                    f.len() > 42 + 240
                        && ethertype(f) == ETH_P_IP
                        && f[23] == 17
                        && f[36..38] == 68u16.to_be_bytes()
                        && f[42] == 2
                        && f[46..50] == xid.to_be_bytes()
                })
            })
        })
        .unwrap();
    let (_, offer) = offer.unwrap_or_else(|| panic!("no DHCPOFFER; dnsmasq log:\n{}", net.log()));
    let yiaddr = std::net::Ipv4Addr::new(offer[58], offer[59], offer[60], offer[61]);
    assert!(yiaddr >= RANGE_START && yiaddr <= RANGE_END, "offered {yiaddr}");
    assert!(net.log().contains("DHCPOFFER"), "{}", net.log());
}
