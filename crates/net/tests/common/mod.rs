//! Helpers shared by the integration tests: raw packet sockets and frame
//! builders. These tests need root (they create namespaces and TAPs).
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use net::{MacAddr, Tap};

pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IP: u16 = 0x0800;

#[allow(unused_imports)]
pub use net::packet::PacketSocket;

/// Read frames (vnet header stripped) from a non-blocking TAP until `pred`
/// accepts one or `timeout` passes. Returns (vnet header, frame).
pub fn tap_recv_matching(tap: &Tap, timeout: Duration, pred: impl Fn(&[u8]) -> bool) -> Option<(Vec<u8>, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536 + 12];
    while Instant::now() < deadline {
        match tap.read(&mut buf) {
            Ok(n) if n >= 12 => {
                if pred(&buf[12..n]) {
                    return Some((buf[..12].to_vec(), buf[12..n].to_vec()));
                }
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    None
}

pub fn ethertype(frame: &[u8]) -> u16 {
    if frame.len() < 14 { 0 } else { u16::from_be_bytes([frame[12], frame[13]]) }
}

/// An Ethernet frame with an arbitrary payload and a test ethertype.
pub fn test_frame(dst: MacAddr, src: MacAddr, marker: u8, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&0x88b5u16.to_be_bytes()); // IEEE local experimental
    while f.len() < len {
        f.push(marker.wrapping_add(f.len() as u8));
    }
    f
}

/// An ARP who-has request for `target` from (`mac`, `ip`).
pub fn arp_request(mac: MacAddr, ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f.resize(60, 0);
    f
}

pub fn is_arp_reply_to(frame: &[u8], mac: MacAddr) -> bool {
    frame.len() >= 42 && ethertype(frame) == ETH_P_ARP && frame[20..22] == [0, 2] && frame[..6] == mac.0
}
