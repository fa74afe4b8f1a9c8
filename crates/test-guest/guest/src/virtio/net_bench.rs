//! `net-bench`: virtio-net throughput with a full ring of frames in flight
//! (benchmark scenario), through virtio-drivers' non-blocking `VirtIONetRaw`.
//!
//! `tern.net_dir=tx` (guest->host): ARP for the peer, then send
//! `tern.net_frames` UDP/IPv4 frames of `tern.net_len` bytes (Ethernet
//! header to payload end, 60..=1514; default 1514) to the peer's port
//! `tern.net_port` (5201), keeping the tx ring full; passes when every frame
//! completed.
//!
//! `tern.net_dir=rx` (host->guest): post every rx buffer, print
//! `TERN net-bench ready mac=..`, then count UDP frames for our IP and port
//! until `tern.net_frames` arrived or nothing came for `tern.net_idle_ms`
//! (500) after the first one; waits `tern.net_wait_ms` (60000) for the first.
//! Passes when at least one valid frame arrived.
//!
//! Frames carry a magic and a sequence number after the UDP header. Time is
//! the TSC between the first frame handed over (or received) and the last
//! completion (or reception). Other parameters as `virtio-net`:
//! `tern.net_ip` (10.0.2.15), `tern.net_peer` (10.0.2.2), `tern.net_timeout_ms`.

use super::hal::{BENCH_END, BENCH_START};
use super::net::{checksum, parse_ip};
use super::{GuestHal, deadline, num, transport_for};
use crate::boot::{BootInfo, param};
use crate::cpu::{rdtsc, tsc_hz};
use crate::{finish, tern};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::{DeviceType, SomeTransport};

/// Descriptors per queue: a full ring in flight. Both Tern and QEMU's
/// virtio-net-device take 256.
const QUEUE: usize = 256;
const BUF_LEN: usize = 2048;
const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const UDP_LEN: usize = 8;
const PAYLOAD_AT: usize = ETH_LEN + IP_LEN + UDP_LEN;
const MAGIC: &[u8; 8] = b"TERNBNCH";
/// Frame length limits: the Ethernet minimum and standard MTU 1500 + 14.
const MIN_LEN: usize = 60;
const MAX_LEN: usize = 1514;
/// Token value meaning "no buffer".
const NONE: u16 = u16::MAX;

type Raw = VirtIONetRaw<GuestHal, SomeTransport<'static>, QUEUE>;

/// Buffers in the benchmark region: tx at BENCH_START, rx after them.
fn buffer(dir_rx: bool, index: usize) -> &'static mut [u8] {
    const _: () = assert!(BENCH_START + (2 * QUEUE * BUF_LEN) as u64 <= BENCH_END);
    let base = BENCH_START as usize + if dir_rx { QUEUE * BUF_LEN } else { 0 };
    // SAFETY: identity-mapped RAM reserved for this scenario (one benchmark
    // per boot); each (direction, index) pair names a disjoint BUF_LEN range,
    // and the loops below hold at most one reference to each at a time.
    unsafe { core::slice::from_raw_parts_mut((base + index * BUF_LEN) as *mut u8, BUF_LEN) }
}

struct Addrs {
    mac: [u8; 6],
    ip: [u8; 4],
    peer: [u8; 4],
    port: u16,
}

fn mac_str(m: [u8; 6]) -> impl core::fmt::Display {
    struct Mac([u8; 6]);
    impl core::fmt::Display for Mac {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            let m = self.0;
            write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
        }
    }
    Mac(m)
}

pub fn run(boot: &BootInfo) -> ! {
    let (transport, via) = transport_for(DeviceType::Network, boot);
    let mut net: Raw = match VirtIONetRaw::new(transport) {
        Ok(n) => n,
        Err(e) => finish(false, format_args!(" reason=init error=\"{}\" queue={}", e, QUEUE)),
    };
    let a = Addrs {
        mac: net.mac_address(),
        ip: parse_ip(param(boot.cmdline, "tern.net_ip"), [10, 0, 2, 15]),
        peer: parse_ip(param(boot.cmdline, "tern.net_peer"), [10, 0, 2, 2]),
        port: num(boot, "tern.net_port", 5201) as u16,
    };
    let frames = num(boot, "tern.net_frames", 100_000).max(1);
    let len = (num(boot, "tern.net_len", MAX_LEN as u64) as usize).clamp(MIN_LEN, MAX_LEN);
    let rx = match param(boot.cmdline, "tern.net_dir") {
        Some(b"rx") => true,
        Some(b"tx") | None => false,
        Some(other) => finish(false, format_args!(" reason=bad-net_dir value={}", crate::serial::Printable(other))),
    };
    tern!(
        "net-bench dir={} transport={} mac={} frames={} len={} queue={}",
        if rx { "rx" } else { "tx" },
        via,
        mac_str(a.mac),
        frames,
        len,
        QUEUE
    );
    // Post every rx buffer first: tx needs them for the ARP reply.
    let mut rx_owner = [NONE; QUEUE];
    for i in 0..QUEUE {
        post_rx(&mut net, &mut rx_owner, i);
    }
    if rx {
        receive(&mut net, &mut rx_owner, &a, boot, frames, via)
    } else {
        transmit(&mut net, &mut rx_owner, &a, boot, frames, len, via)
    }
}

fn post_rx(net: &mut Raw, owner: &mut [u16; QUEUE], index: usize) {
    // SAFETY: the buffer is not touched again until its token comes back on
    // the used ring and `receive_complete` returned it.
    match unsafe { net.receive_begin(buffer(true, index)) } {
        Ok(token) => owner[token as usize % QUEUE] = index as u16,
        Err(e) => finish(false, format_args!(" reason=rx-post error=\"{}\"", e)),
    }
}

/// Hand the next received frame, if any, to `f` and give its buffer straight
/// back to the device; false when the used ring was empty.
fn take_rx(net: &mut Raw, owner: &mut [u16; QUEUE], f: &mut impl FnMut(&[u8])) -> bool {
    let Some(token) = net.poll_receive() else { return false };
    let index = owner.get(token as usize).copied().unwrap_or(NONE);
    if index == NONE {
        finish(false, format_args!(" reason=rx-unknown-token token={}", token));
    }
    let buf = buffer(true, index as usize);
    // SAFETY: `buf` is the buffer passed to `receive_begin` for this token.
    match unsafe { net.receive_complete(token, buf) } {
        Ok((hdr, n)) if hdr + n <= buf.len() => f(&buf[hdr..hdr + n]),
        // A used length shorter than the header, or longer than the buffer.
        r => finish(false, format_args!(" reason=rx-bad-used-length result={:?}", r.map(|(h, n)| h + n))),
    }
    owner[token as usize] = NONE;
    post_rx(net, owner, index as usize);
    true
}

/// Ethernet + IPv4 + UDP headers from `a.mac`/`a.ip` to `dst_mac`/`a.peer`.
fn build_frame(frame: &mut [u8], a: &Addrs, dst_mac: [u8; 6]) {
    let len = frame.len();
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&a.mac);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut frame[ETH_LEN..ETH_LEN + IP_LEN];
    let total = ((len - ETH_LEN) as u16).to_be_bytes();
    // Version/IHL, TOS, length, id, DF, TTL 64, UDP, checksum (below).
    ip[..12].copy_from_slice(&[0x45, 0, total[0], total[1], 0x7e, 0x52, 0x40, 0, 64, 17, 0, 0]);
    ip[12..16].copy_from_slice(&a.ip);
    ip[16..20].copy_from_slice(&a.peer);
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut frame[ETH_LEN + IP_LEN..PAYLOAD_AT];
    let ulen = ((len - ETH_LEN - IP_LEN) as u16).to_be_bytes();
    // Source port = destination port; checksum 0: none (allowed for IPv4).
    udp[0..2].copy_from_slice(&a.port.to_be_bytes());
    udp[2..4].copy_from_slice(&a.port.to_be_bytes());
    udp[4..6].copy_from_slice(&ulen);
    udp[6..8].fill(0);
    let payload = &mut frame[PAYLOAD_AT..];
    for (i, b) in payload.iter_mut().enumerate() {
        *b = i as u8;
    }
    let magic_end = MAGIC.len().min(payload.len());
    payload[..magic_end].copy_from_slice(&MAGIC[..magic_end]);
}

/// ARP for the peer, answering nothing else; returns its MAC.
fn arp(net: &mut Raw, rx_owner: &mut [u16; QUEUE], a: &Addrs, boot: &BootInfo) -> [u8; 6] {
    let buf = buffer(false, 0);
    let hdr = match net.fill_buffer_header(buf) {
        Ok(h) => h,
        Err(e) => finish(false, format_args!(" reason=header error=\"{}\"", e)),
    };
    let f = &mut buf[hdr..hdr + MIN_LEN];
    f.fill(0);
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&a.mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&a.mac);
    f[28..32].copy_from_slice(&a.ip);
    f[38..42].copy_from_slice(&a.peer);
    let buf = buffer(false, 0);
    if let Err(e) = net.send(&buf[hdr..hdr + MIN_LEN]) {
        finish(false, format_args!(" reason=arp-send error=\"{}\"", e));
    }
    let end = deadline(boot, "tern.net_timeout_ms", 3000);
    let mut peer_mac = None;
    while peer_mac.is_none() && rdtsc() < end {
        take_rx(net, rx_owner, &mut |f: &[u8]| {
            if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == a.peer {
                let mut m = [0u8; 6];
                m.copy_from_slice(&f[22..28]);
                peer_mac = Some(m);
            }
        });
    }
    match peer_mac {
        Some(m) => m,
        None => finish(false, format_args!(" reason=no-arp-reply")),
    }
}

/// Cycles the guest spent polling without anything to do (an empty rx
/// ring, a full tx ring): a high share means the device side is the limit.
#[derive(Default)]
struct Waiting {
    since: Option<u64>,
    cycles: u64,
}

impl Waiting {
    fn idle(&mut self, now: u64) {
        self.since.get_or_insert(now);
    }
    fn busy(&mut self, now: u64) {
        if let Some(s) = self.since.take() {
            self.cycles += now - s;
        }
    }
}

fn report(dir: &str, frames: u64, bytes: u64, cycles: u64, waiting: u64) {
    let hz = tsc_hz();
    let ns = (cycles as u128 * 1_000_000_000 / hz.max(1) as u128) as u64;
    let fps = if ns > 0 { frames as u128 * 1_000_000_000 / ns as u128 } else { 0 };
    let kbps = if ns > 0 { bytes as u128 * 8 * 1_000_000 / ns as u128 } else { 0 };
    tern!("metric=net-{}-frames value={}", dir, frames);
    tern!("metric=net-{}-bytes value={} unit=B", dir, bytes);
    tern!("metric=net-{}-ns value={} unit=ns", dir, ns);
    tern!("metric=net-{}-fps value={} unit=frames/s", dir, fps);
    tern!("metric=net-{}-mbps value={}.{:03} unit=Mbit/s", dir, kbps / 1000, kbps % 1000);
    tern!("metric=net-{}-guest-wait value={} unit=%", dir, waiting * 100 / cycles.max(1));
}

fn transmit(
    net: &mut Raw,
    rx_owner: &mut [u16; QUEUE],
    a: &Addrs,
    boot: &BootInfo,
    frames: u64,
    len: usize,
    via: &str,
) -> ! {
    let peer_mac = arp(net, rx_owner, a, boot);
    tern!("net-bench arp peer_mac={}", mac_str(peer_mac));
    // Every tx buffer holds a ready frame; only the sequence number changes.
    let mut hdr = 0;
    for i in 0..QUEUE {
        let buf = buffer(false, i);
        hdr = match net.fill_buffer_header(buf) {
            Ok(h) => h,
            Err(e) => finish(false, format_args!(" reason=header error=\"{}\"", e)),
        };
        build_frame(&mut buf[hdr..hdr + len], a, peer_mac);
    }
    let seq_at = hdr + PAYLOAD_AT + MAGIC.len();
    let stamp = len >= PAYLOAD_AT + MAGIC.len() + 8;
    let mut owner = [NONE; QUEUE];
    let mut free: [u16; QUEUE] = core::array::from_fn(|i| i as u16);
    let mut free_len = QUEUE;
    let (mut sent, mut done, mut failed) = (0u64, 0u64, 0u64);
    let stall = tsc_hz() / 1000 * num(boot, "tern.net_timeout_ms", 3000);
    let start = rdtsc();
    let mut progress = start;
    let mut waiting = Waiting::default();
    while done < frames {
        let before = (sent, done);
        // Reap completions, then refill the ring.
        while let Some(token) = net.poll_transmit() {
            let index = owner.get(token as usize).copied().unwrap_or(NONE);
            if index == NONE {
                finish(false, format_args!(" reason=tx-unknown-token token={} done={}", token, done));
            }
            let buf = buffer(false, index as usize);
            // SAFETY: the same buffer (and length) passed to `transmit_begin`.
            if unsafe { net.transmit_complete(token, &buf[..hdr + len]) }.is_err() {
                failed += 1;
            }
            owner[token as usize] = NONE;
            free[free_len] = index;
            free_len += 1;
            done += 1;
            progress = rdtsc();
        }
        while sent < frames && free_len > 0 {
            free_len -= 1;
            let index = free[free_len];
            let buf = buffer(false, index as usize);
            if stamp {
                buf[seq_at..seq_at + 8].copy_from_slice(&sent.to_be_bytes());
            }
            // SAFETY: the buffer is not touched again until its completion
            // is reaped above.
            match unsafe { net.transmit_begin(&buf[..hdr + len]) } {
                Ok(token) => owner[token as usize % QUEUE] = index,
                Err(e) => finish(false, format_args!(" reason=tx-begin error=\"{}\" sent={}", e, sent)),
            }
            sent += 1;
        }
        let now = rdtsc();
        if (sent, done) == before {
            waiting.idle(now);
        } else {
            waiting.busy(now);
        }
        if now - progress > stall {
            finish(false, format_args!(" reason=tx-stall sent={} done={} transport={}", sent, done, via));
        }
        core::hint::spin_loop();
    }
    let cycles = rdtsc() - start;
    waiting.busy(start + cycles);
    report("tx", done, done * len as u64, cycles, waiting.cycles);
    finish(
        failed == 0,
        format_args!(" dir=tx frames={} completed={} failed={} transport={}", frames, done, failed, via),
    )
}

fn receive(net: &mut Raw, rx_owner: &mut [u16; QUEUE], a: &Addrs, boot: &BootInfo, frames: u64, via: &str) -> ! {
    tern!("net-bench ready mac={} ip={}.{}.{}.{} port={}", mac_str(a.mac), a.ip[0], a.ip[1], a.ip[2], a.ip[3], a.port);
    let wait_end = deadline(boot, "tern.net_wait_ms", 60_000);
    let idle = tsc_hz() / 1000 * num(boot, "tern.net_idle_ms", 500);
    let (mut got, mut bytes, mut other, mut next_seq, mut out_of_order) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut first, mut last) = (0u64, 0u64);
    let mut waiting = Waiting::default();
    while got < frames {
        let seen = got;
        let mut on_frame = |f: &[u8]| {
            let now = rdtsc();
            let valid = f.len() >= PAYLOAD_AT + MAGIC.len()
                && f[0..6] == a.mac
                && f[12..14] == [0x08, 0x00]
                && f[ETH_LEN] == 0x45
                && f[ETH_LEN + 9] == 17
                && f[ETH_LEN + 16..ETH_LEN + 20] == a.ip
                && f[ETH_LEN + IP_LEN + 2..ETH_LEN + IP_LEN + 4] == a.port.to_be_bytes()
                && u16::from_be_bytes([f[ETH_LEN + IP_LEN + 4], f[ETH_LEN + IP_LEN + 5]]) as usize
                    == f.len() - ETH_LEN - IP_LEN
                && f[PAYLOAD_AT..PAYLOAD_AT + MAGIC.len()] == *MAGIC;
            if !valid {
                other += 1;
                return;
            }
            if got == 0 {
                first = now;
            }
            got += 1;
            bytes += f.len() as u64;
            last = now;
            let s = PAYLOAD_AT + MAGIC.len();
            if f.len() >= s + 8 {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&f[s..s + 8]);
                let seq = u64::from_be_bytes(seq);
                if seq < next_seq {
                    out_of_order += 1;
                }
                next_seq = seq + 1;
            }
        };
        if take_rx(net, rx_owner, &mut on_frame) {
            if seen > 0 {
                waiting.busy(last);
            }
            continue;
        }
        let now = rdtsc();
        if got > 0 {
            waiting.idle(now);
        }
        if got == 0 && now > wait_end {
            finish(false, format_args!(" reason=no-frames other={} transport={}", other, via));
        }
        if got > 0 && now - last > idle {
            break;
        }
        core::hint::spin_loop();
    }
    // Rate over the intervals between the first and the last frame.
    let frames_after_first = got.saturating_sub(1);
    report("rx", frames_after_first, bytes * frames_after_first / got.max(1), last - first, waiting.cycles);
    finish(
        got > 0 && out_of_order == 0,
        format_args!(
            " dir=rx frames={} bytes={} other={} out_of_order={} transport={}",
            got, bytes, other, out_of_order, via
        ),
    )
}
