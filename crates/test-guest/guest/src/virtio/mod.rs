//! virtio scenarios, driven by the `virtio-drivers` crate at CPL3 with
//! polling (no interrupts at CPL3).

mod balloon;
pub mod blk_bench;
pub mod hal;
mod net;
pub mod net_bench;
mod transport;

use crate::acpi::Acpi;
use crate::boot::{BootInfo, param, parse_u64};
use crate::cpu::rdtsc;
use crate::{finish, pci, tern};
use hal::GuestHal;
use transport::Want;
use virtio_drivers::device::blk::{SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::device::console::VirtIOConsole;
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::device::socket::{
    VMADDR_CID_HOST, VirtIOSocket, VsockAddr, VsockConnectionManager, VsockEventType,
};
use virtio_drivers::transport::{DeviceType, SomeTransport};

pub use crate::blk_pattern::sector_pattern;

pub(crate) fn transport_for(kind: DeviceType, boot: &BootInfo) -> (SomeTransport<'static>, &'static str) {
    let want = match param(boot.cmdline, "tern.virtio") {
        Some(b"mmio") => Want::Mmio,
        Some(b"pci") => Want::Pci,
        _ => Want::Any,
    };
    let acpi = Acpi::discover(boot.rsdp);
    let ecam = pci::ecam_base(acpi.as_ref());
    match transport::find(kind, want, acpi.as_ref(), ecam) {
        Some(t) => t,
        None => finish(false, format_args!(" reason=no-device")),
    }
}

pub(crate) fn num(boot: &BootInfo, key: &str, default: u64) -> u64 {
    param(boot.cmdline, key).and_then(parse_u64).unwrap_or(default)
}

/// Deadline in TSC cycles from a parameter in milliseconds.
pub(crate) fn deadline(boot: &BootInfo, key: &str, default_ms: u64) -> u64 {
    rdtsc() + crate::cpu::tsc_hz() / 1000 * num(boot, key, default_ms)
}

/// `virtio-blk`: write `tern.blk_sectors` (64) sectors from
/// `tern.blk_start` (0) with [`sector_pattern`], read them back and compare.
/// `tern.blk_mode=read` only reads and reports the checksum.
pub fn blk(boot: &BootInfo) -> ! {
    let (transport, via) = transport_for(DeviceType::Block, boot);
    let mut blk = match VirtIOBlk::<GuestHal, _>::new(transport) {
        Ok(b) => b,
        Err(e) => finish(false, format_args!(" reason=init error=\"{}\"", e)),
    };
    let capacity = blk.capacity();
    let start = num(boot, "tern.blk_start", 0);
    let count = num(boot, "tern.blk_sectors", 64).min(capacity.saturating_sub(start));
    let read_only = param(boot.cmdline, "tern.blk_mode") == Some(b"read") || blk.readonly();
    tern!("virtio-blk transport={} capacity={} readonly={}", via, capacity, blk.readonly());
    if count == 0 {
        finish(false, format_args!(" reason=no-room capacity={}", capacity));
    }
    const BATCH: u64 = 8;
    let mut buf = [0u8; SECTOR_SIZE * BATCH as usize];
    let mut checksum = 0u64;
    let mut sector = start;
    if !read_only {
        while sector < start + count {
            let n = (start + count - sector).min(BATCH);
            for i in 0..n {
                let chunk = &mut buf[i as usize * SECTOR_SIZE..(i as usize + 1) * SECTOR_SIZE];
                chunk.copy_from_slice(&sector_pattern(sector + i));
            }
            if let Err(e) = blk.write_blocks(sector as usize, &buf[..n as usize * SECTOR_SIZE]) {
                finish(false, format_args!(" reason=write sector={} error=\"{}\"", sector, e));
            }
            sector += n;
        }
        if let Err(e) = blk.flush() {
            tern!("virtio-blk flush error=\"{}\"", e);
        }
    }
    sector = start;
    let mut mismatches = 0u64;
    while sector < start + count {
        let n = (start + count - sector).min(BATCH);
        let bytes = &mut buf[..n as usize * SECTOR_SIZE];
        bytes.fill(0);
        if let Err(e) = blk.read_blocks(sector as usize, bytes) {
            finish(false, format_args!(" reason=read sector={} error=\"{}\"", sector, e));
        }
        for i in 0..n {
            let chunk = &bytes[i as usize * SECTOR_SIZE..(i as usize + 1) * SECTOR_SIZE];
            checksum = crate::blk_pattern::fnv1a(checksum, chunk);
            if !read_only && chunk != sector_pattern(sector + i) {
                mismatches += 1;
            }
        }
        sector += n;
    }
    let mode = if read_only { "read" } else { "write-read" };
    finish(
        mismatches == 0,
        format_args!(
            " sectors={} mode={} checksum={:#018x} mismatches={} transport={}",
            count, mode, checksum, mismatches, via
        ),
    )
}

/// `virtio-rng`: read `tern.rng_bytes` (64) bytes; they must not all be equal.
pub fn rng(boot: &BootInfo) -> ! {
    let (transport, via) = transport_for(DeviceType::EntropySource, boot);
    let mut rng = match VirtIORng::<GuestHal, _>::new(transport) {
        Ok(r) => r,
        Err(e) => finish(false, format_args!(" reason=init error=\"{}\"", e)),
    };
    let want = num(boot, "tern.rng_bytes", 64).clamp(2, 4096) as usize;
    let mut buf = [0u8; 4096];
    let mut got = 0;
    while got < want {
        match rng.request_entropy(&mut buf[got..want]) {
            Ok(0) => finish(false, format_args!(" reason=empty bytes={}", got)),
            Ok(n) => got += n,
            Err(e) => finish(false, format_args!(" reason=read error=\"{}\"", e)),
        }
    }
    let varied = buf[..got].iter().any(|&b| b != buf[0]);
    let distinct = {
        let mut seen = [false; 256];
        buf[..got].iter().for_each(|&b| seen[b as usize] = true);
        seen.iter().filter(|&&s| s).count()
    };
    finish(varied, format_args!(" bytes={} distinct={} transport={}", got, distinct, via))
}

/// `virtio-console`: write `TERN virtio-console hello` on the device's port 0.
pub fn console(boot: &BootInfo) -> ! {
    let (transport, via) = transport_for(DeviceType::Console, boot);
    let mut console = match VirtIOConsole::<GuestHal, _>::new(transport) {
        Ok(c) => c,
        Err(e) => finish(false, format_args!(" reason=init error=\"{}\"", e)),
    };
    let line = b"TERN virtio-console hello\n";
    if let Err(e) = console.send_bytes(line) {
        finish(false, format_args!(" reason=send error=\"{}\"", e));
    }
    finish(true, format_args!(" bytes={} transport={}", line.len(), via))
}

/// `virtio-vsock`: connect to the host (CID 2) port `tern.vsock_port`
/// (1234), send `TERN vsock hello\n`, wait for any reply bytes.
pub fn vsock(boot: &BootInfo) -> ! {
    let (transport, via) = transport_for(DeviceType::Socket, boot);
    let socket = match VirtIOSocket::<GuestHal, _>::new(transport) {
        Ok(s) => s,
        Err(e) => finish(false, format_args!(" reason=init error=\"{}\"", e)),
    };
    let mut mgr = VsockConnectionManager::new(socket);
    let port = num(boot, "tern.vsock_port", 1234) as u32;
    let peer = VsockAddr { cid: VMADDR_CID_HOST, port };
    let local = 50_000;
    tern!("virtio-vsock transport={} guest_cid={} peer_port={}", via, mgr.guest_cid(), port);
    if let Err(e) = mgr.connect(peer, local) {
        finish(false, format_args!(" reason=connect error=\"{}\"", e));
    }
    let end = deadline(boot, "tern.vsock_timeout_ms", 5000);
    let mut connected = false;
    let mut received = 0usize;
    let mut buf = [0u8; 512];
    while rdtsc() < end {
        let event = match mgr.poll() {
            Ok(Some(ev)) => ev,
            Ok(None) => continue,
            Err(e) => finish(false, format_args!(" reason=poll error=\"{}\"", e)),
        };
        match event.event_type {
            VsockEventType::Connected => {
                connected = true;
                if let Err(e) = mgr.send(peer, local, b"TERN vsock hello\n") {
                    finish(false, format_args!(" reason=send error=\"{}\"", e));
                }
            }
            VsockEventType::Received { .. } => {
                if let Ok(n) = mgr.recv(peer, local, &mut buf) {
                    received += n;
                    tern!("virtio-vsock received=\"{}\"", crate::serial::Printable(&buf[..n]));
                    let _ = mgr.shutdown(peer, local);
                    finish(true, format_args!(" sent=17 received={} transport={}", received, via));
                }
            }
            VsockEventType::Disconnected { .. } => {
                finish(false, format_args!(" reason=disconnected connected={}", connected))
            }
            _ => {}
        }
    }
    finish(false, format_args!(" reason=timeout connected={} received={}", connected, received))
}

pub use balloon::run as balloon;
pub use net::run as net;
