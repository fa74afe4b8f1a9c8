//! `virtio-net`: ARP for the peer, then ICMP echo to it.
//! Parameters: `tern.net_ip` (10.0.2.15), `tern.net_peer` (10.0.2.2, QEMU
//! user networking's gateway), `tern.net_ping=0` to skip the echo,
//! `tern.net_timeout_ms` (3000) per exchange.

use super::{GuestHal, deadline, transport_for};
use crate::boot::{BootInfo, param};
use crate::cpu::rdtsc;
use crate::{finish, tern};
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::{DeviceType, SomeTransport};

const QUEUE: usize = 16;
const BUF_LEN: usize = 2048;
type Net = VirtIONet<GuestHal, SomeTransport<'static>, QUEUE>;

pub(crate) fn parse_ip(text: Option<&[u8]>, default: [u8; 4]) -> [u8; 4] {
    let Some(text) = text else { return default };
    let mut ip = [0u8; 4];
    let mut parts = text.split(|&b| b == b'.');
    for octet in ip.iter_mut() {
        let Some(v) = parts.next().and_then(|p| core::str::from_utf8(p).ok()?.parse().ok()) else {
            return default;
        };
        *octet = v;
    }
    ip
}

pub(crate) fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in data.chunks(2) {
        let word = (pair[0] as u32) << 8 | *pair.get(1).unwrap_or(&0) as u32;
        sum += word;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn send(net: &mut Net, frame: &[u8]) {
    let mut tx = net.new_tx_buffer(frame.len().max(60));
    tx.packet_mut()[..frame.len()].copy_from_slice(frame);
    if let Err(e) = net.send(tx) {
        finish(false, format_args!(" reason=send error=\"{}\"", e));
    }
}

/// Poll the receive queue until `matches` accepts a frame or time runs out.
fn receive_until(net: &mut Net, end: u64, rx_count: &mut u64, mut matches: impl FnMut(&[u8]) -> bool) -> bool {
    while rdtsc() < end {
        match net.receive() {
            Ok(rx) => {
                *rx_count += 1;
                let hit = matches(rx.packet());
                if let Err(e) = net.recycle_rx_buffer(rx) {
                    finish(false, format_args!(" reason=recycle error=\"{}\"", e));
                }
                if hit {
                    return true;
                }
            }
            Err(virtio_drivers::Error::NotReady) => core::hint::spin_loop(),
            Err(e) => finish(false, format_args!(" reason=receive error=\"{}\"", e)),
        }
    }
    false
}

pub fn run(boot: &BootInfo) -> ! {
    let (transport, via) = transport_for(DeviceType::Network, boot);
    let mut net: Net = match VirtIONet::new(transport, BUF_LEN) {
        Ok(n) => n,
        Err(e) => finish(false, format_args!(" reason=init error=\"{}\"", e)),
    };
    let mac = net.mac_address();
    let ip = parse_ip(param(boot.cmdline, "tern.net_ip"), [10, 0, 2, 15]);
    let peer = parse_ip(param(boot.cmdline, "tern.net_peer"), [10, 0, 2, 2]);
    let ping = param(boot.cmdline, "tern.net_ping") != Some(b"0");
    tern!(
        "virtio-net transport={} mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        via,
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );

    // ARP who-has peer tell ip.
    let mut arp = [0u8; 42];
    arp[0..6].fill(0xff);
    arp[6..12].copy_from_slice(&mac);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    arp[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    arp[22..28].copy_from_slice(&mac);
    arp[28..32].copy_from_slice(&ip);
    arp[38..42].copy_from_slice(&peer);
    send(&mut net, &arp);
    let mut tx = 1u64;
    let mut rx = 0u64;
    let mut peer_mac = [0u8; 6];
    let got_arp = receive_until(&mut net, deadline(boot, "tern.net_timeout_ms", 3000), &mut rx, |f| {
        let hit = f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == peer;
        if hit {
            peer_mac.copy_from_slice(&f[22..28]);
        }
        hit
    });
    if !got_arp {
        finish(false, format_args!(" reason=no-arp-reply tx={} rx={} transport={}", tx, rx, via));
    }
    let m = peer_mac;
    tern!("virtio-net arp peer_mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]);
    if !ping {
        finish(true, format_args!(" tx={} rx={} arp=ok transport={}", tx, rx, via));
    }

    // ICMP echo request with a 32-byte payload.
    let mut frame = [0u8; 14 + 20 + 8 + 32];
    frame[0..6].copy_from_slice(&peer_mac);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_hdr = &mut frame[14..34];
    ip_hdr[..12].copy_from_slice(&[0x45, 0, 0, 60, 0x7e, 0x52, 0x40, 0, 64, 1, 0, 0]);
    ip_hdr[12..16].copy_from_slice(&ip);
    ip_hdr[16..20].copy_from_slice(&peer);
    let c = checksum(ip_hdr);
    ip_hdr[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut frame[34..];
    icmp[..8].copy_from_slice(&[8, 0, 0, 0, 0x7e, 0x52, 0, 1]);
    icmp[8..].copy_from_slice(b"TERN virtio-net echo payload 32B");
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let sent_at = rdtsc();
    send(&mut net, &frame);
    tx += 1;
    let got_echo = receive_until(&mut net, deadline(boot, "tern.net_timeout_ms", 3000), &mut rx, |f| {
        f.len() >= 42
            && f[12..14] == [0x08, 0x00]
            && f[23] == 1
            && f[26..30] == peer
            && f[34] == 0
            && f[38..40] == [0x7e, 0x52]
    });
    let us = (rdtsc() - sent_at) * 1_000_000 / crate::cpu::tsc_hz();
    if got_echo {
        tern!("metric=virtio-net-ping-rtt value={} unit=us", us);
    }
    finish(
        got_echo,
        format_args!(" tx={} rx={} arp=ok ping={} transport={}", tx, rx, if got_echo { "ok" } else { "timeout" }, via),
    )
}
