//! virtio-balloon against real mmap'd guest memory: inflating touched pages
//! must make them non-resident (mincore) and lower the mapping's RSS
//! (/proc/self/smaps), for private anonymous and memfd-backed memory.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};

use super::*;
use crate::net::test_driver::{Driver, TestIrq, wait_for};

const WAIT: Duration = Duration::from_secs(3);
const MEM: u64 = 64 << 20;
/// Pages the tests touch and then inflate: 4 MiB at 16 MiB.
const DATA: u64 = 16 << 20;
const NPAGES: u64 = 1024;
const PFN_BUF: u64 = 0x10_0000;

struct Rig {
    dev: Balloon,
    mem: GuestMemoryMmap,
    inflate: Driver,
    deflate: Driver,
    stats: Driver,
    irq: Arc<TestIrq>,
}

fn rig(mem: GuestMemoryMmap, cfg: &str) -> Rig {
    let cfg: BalloonConfig = cfg.parse().unwrap();
    let mut dev = Balloon::new("balloon0", &cfg, MEM >> 20).unwrap();
    dev.ack_features(dev.features());
    let mut inflate = Driver::new(&mem, 0, 256);
    let mut deflate = Driver::new(&mem, 0x1_0000, 256);
    let mut stats = Driver::new(&mem, 0x2_0000, 16);
    let irq = Arc::new(TestIrq::default());
    // EVENT_IDX on the stats queue, as Linux negotiates it.
    let qs = vec![inflate.activate(0, false), deflate.activate(1, false), stats.activate(2, true)];
    dev.activate(GuestMemoryAtomic::new(mem.clone()), irq.clone(), qs).unwrap();
    Rig { dev, mem, inflate, deflate, stats, irq }
}

fn anon_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

fn memfd_memory() -> (GuestMemoryMmap, std::fs::File) {
    // SAFETY: memfd_create with a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"tern-balloon-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fd is a fresh descriptor we own.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(MEM).unwrap();
    let fo = FileOffset::new(file.try_clone().unwrap(), 0);
    let m = GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), MEM as usize, Some(fo))]).unwrap();
    (m, file)
}

fn touch(mem: &GuestMemoryMmap) {
    for p in 0..NPAGES {
        mem.write_obj(0xa5a5_a5a5u32, GuestAddress(DATA + p * PAGE_SIZE)).unwrap();
    }
}

/// Resident pages of the data range, from mincore(2).
fn resident_pages(mem: &GuestMemoryMmap) -> usize {
    let host = mem.get_host_address(GuestAddress(DATA)).unwrap();
    let mut vec = vec![0u8; NPAGES as usize];
    // SAFETY: the range is one page-aligned mapping of NPAGES pages; vec has
    // one byte per page.
    let r = unsafe { libc::mincore(host.cast(), (NPAGES * PAGE_SIZE) as usize, vec.as_mut_ptr()) };
    assert_eq!(r, 0);
    vec.iter().filter(|b| **b & 1 != 0).count()
}

/// Rss (KiB) of the smaps entry containing the guest memory mapping.
fn mapping_rss_kib(mem: &GuestMemoryMmap) -> u64 {
    let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((a, b)) = range.split_once('-')
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            inside = a <= host && host < b;
            continue;
        }
        if inside && let Some(v) = line.strip_prefix("Rss:") {
            return v.trim().trim_end_matches("kB").trim().parse().unwrap();
        }
    }
    panic!("guest mapping not in /proc/self/smaps");
}

fn inflate_data(r: &mut Rig) {
    let pfns: Vec<u8> = (0..NPAGES).flat_map(|p| (((DATA >> 12) + p) as u32).to_le_bytes()).collect();
    r.mem.write_slice(&pfns, GuestAddress(PFN_BUF)).unwrap();
    r.inflate.add_chain(&[(PFN_BUF, pfns.len() as u32, false)]);
    r.inflate.kick();
    assert_eq!(r.inflate.wait_used(1, WAIT).len(), 1);
}

#[test]
fn inflate_releases_anonymous_memory() {
    let mut r = rig(anon_memory(), "stats=0");
    touch(&r.mem);
    assert_eq!(resident_pages(&r.mem), NPAGES as usize);
    let rss_before = mapping_rss_kib(&r.mem);
    inflate_data(&mut r);
    assert_eq!(resident_pages(&r.mem), 0, "inflated pages still resident");
    let rss_after = mapping_rss_kib(&r.mem);
    assert!(rss_before - rss_after >= 4000, "RSS {rss_before} -> {rss_after} KiB");
    eprintln!("anonymous guest memory RSS: {rss_before} KiB -> {rss_after} KiB after inflating 4 MiB");
    // The guest sees zeroes if it touches a released page again.
    assert_eq!(r.mem.read_obj::<u32>(GuestAddress(DATA)).unwrap(), 0);
    assert_eq!(r.dev.counters()["inflated_pages"], NPAGES);
}

#[test]
fn inflate_punches_holes_in_memfd_memory() {
    let (mem, file) = memfd_memory();
    let mut r = rig(mem, "stats=0");
    touch(&r.mem);
    let blocks = |f: &std::fs::File| {
        // SAFETY: fstat into a zeroed stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: f is an open file and st a valid out-pointer.
        assert_eq!(unsafe { libc::fstat(f.as_raw_fd(), &mut st) }, 0);
        st.st_blocks as u64 * 512
    };
    let before = blocks(&file);
    assert!(before >= NPAGES * PAGE_SIZE);
    inflate_data(&mut r);
    let after = blocks(&file);
    // What is left is the ring and PFN-list pages the inflate itself wrote.
    assert!(after <= 8 * PAGE_SIZE, "memfd allocation {before} -> {after} bytes");
    eprintln!("memfd guest memory allocation: {before} -> {after} bytes after inflating 4 MiB");
    assert_eq!(resident_pages(&r.mem), 0);
}

#[test]
fn target_config_and_interrupts() {
    let mut r = rig(anon_memory(), "size=8,stats=0");
    let h = r.dev.handle();
    let mut c = [0u8; 8];
    r.dev.read_config(0, &mut c);
    assert_eq!(u32::from_le_bytes(c[..4].try_into().unwrap()), 8 * 256);
    h.set_target_mib(32).unwrap();
    assert_eq!(h.target_mib(), 32);
    r.dev.read_config(0, &mut c);
    assert_eq!(u32::from_le_bytes(c[..4].try_into().unwrap()), 32 * 256);
    assert_eq!(r.irq.config.load(Ordering::SeqCst), 1, "config change must be signalled");
    assert_eq!(h.set_target_mib(65), Err(BalloonError::TargetTooBig { target: 65, memory: 64 }));
    // The driver reports what it holds.
    r.dev.write_config(4, &(16u32 * 256).to_le_bytes());
    assert_eq!(h.actual_mib(), 16);
    // num_pages is not driver-writable.
    r.dev.write_config(0, &[0, 0, 0, 0]);
    assert_eq!(h.target_mib(), 32);
    // Deflate only counts.
    let pfns: Vec<u8> = (0..10u32).flat_map(|p| (0x1000 + p).to_le_bytes()).collect();
    r.mem.write_slice(&pfns, GuestAddress(PFN_BUF)).unwrap();
    r.deflate.add_chain(&[(PFN_BUF, 40, false)]);
    r.deflate.kick();
    assert_eq!(r.deflate.wait_used(1, WAIT).len(), 1);
    assert_eq!(r.dev.counters()["deflated_pages"], 10);
    let snap = r.dev.snapshot().unwrap().unwrap();
    let st: BalloonState = snap.to_state().unwrap();
    assert_eq!((st.num_pages, st.actual), (32 * 256, 16 * 256));
}

#[test]
fn stats_are_kept_and_refreshed() {
    let mut r = rig(anon_memory(), "stats=1");
    let mut buf = Vec::new();
    for (tag, v) in [(4u16, 123_456_789u64), (5, 1 << 30), (99, 7)] {
        buf.extend_from_slice(&tag.to_le_bytes());
        buf.extend_from_slice(&v.to_le_bytes());
    }
    r.mem.write_slice(&buf, GuestAddress(PFN_BUF)).unwrap();
    r.stats.add_chain(&[(PFN_BUF, buf.len() as u32, false)]);
    r.stats.kick();
    let h = r.dev.handle();
    assert!(wait_for(WAIT, || h.stats().is_some()));
    let s = h.stats().unwrap();
    assert_eq!((s.free_memory, s.total_memory, s.swap_in), (Some(123_456_789), Some(1 << 30), None));
    // Within the 1 s interval the buffer goes back to the driver for a refill.
    assert_eq!(r.stats.wait_used(1, WAIT), vec![(0, 0)]);
    // The device published avail_event = 1, so a driver honouring EVENT_IDX
    // kicks for its next buffer (a Linux guest refills stats only then).
    let avail_event: u16 = r.mem.read_obj(GuestAddress(r.stats.used + 4 + 8 * r.stats.size as u64)).unwrap();
    assert_eq!(avail_event, 1);
    buf[2..10].copy_from_slice(&42u64.to_le_bytes());
    r.mem.write_slice(&buf, GuestAddress(PFN_BUF + 0x1000)).unwrap();
    r.stats.add_chain(&[(PFN_BUF + 0x1000, buf.len() as u32, false)]);
    r.stats.kick();
    assert!(wait_for(WAIT, || h.stats().is_some_and(|s| s.free_memory == Some(42))));
}

#[test]
fn hostile_pfns_do_not_touch_host_memory() {
    let mut r = rig(anon_memory(), "stats=0");
    touch(&r.mem);
    // PFNs past the end of guest memory, an odd byte count, and a buffer
    // outside guest memory.
    let pfns: Vec<u8> = [0xffff_ffffu32, (MEM >> 12) as u32, ((MEM >> 12) - 1) as u32]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .chain([1, 2])
        .collect();
    r.mem.write_slice(&pfns, GuestAddress(PFN_BUF)).unwrap();
    r.inflate.add_chain(&[(PFN_BUF, pfns.len() as u32, false)]);
    r.inflate.add_chain(&[(0x7fff_0000_0000, 64, false)]);
    r.inflate.kick();
    assert_eq!(r.inflate.wait_used(2, WAIT).len(), 2);
    let c = r.dev.counters();
    assert_eq!(c["errors"], 3, "{c:?}");
    assert_eq!(resident_pages(&r.mem), NPAGES as usize, "unrelated guest pages must stay");
    assert_eq!(r.irq.resets.load(Ordering::SeqCst), 0);
}

#[test]
fn config_parsing() {
    assert_eq!("".parse::<BalloonConfig>().unwrap(), BalloonConfig::default());
    let c: BalloonConfig = "size=128,deflate_on_oom=off,stats=0".parse().unwrap();
    assert_eq!(
        c,
        BalloonConfig { size_mib: 128, deflate_on_oom: false, stats_interval_s: 0, free_page_reporting: false }
    );
    assert!("free_page_reporting=on".parse::<BalloonConfig>().unwrap().free_page_reporting);
    assert!("size=lots".parse::<BalloonConfig>().unwrap_err().to_string().contains("invalid value 'lots'"));
    assert!("colour=red".parse::<BalloonConfig>().unwrap_err().to_string().contains("unknown option"));
    let e = Balloon::new("b", &"size=100".parse().unwrap(), 64).err().unwrap();
    assert_eq!(e, BalloonError::TargetTooBig { target: 100, memory: 64 });
}

#[test]
fn through_the_mmio_transport() {
    use crate::testing::MmioHarness;
    use vm_memory::GuestAddressSpace;
    let dev = Balloon::new("balloon0", &"stats=0".parse().unwrap(), 4).unwrap();
    let handle = dev.handle();
    let mut h = MmioHarness::new(Arc::new(std::sync::Mutex::new(dev)));
    assert_eq!(h.read(0x08), TYPE_BALLOON);
    h.init(u64::MAX, &[256, 256]);
    assert_eq!(h.status() & 0x40, 0, "device needs reset after init");
    assert!(h.status() & 0x4 != 0, "DRIVER_OK");
    let before = h.interrupts();
    handle.set_target_mib(2).unwrap();
    assert_eq!(h.interrupts(), before + 1);
    assert!(h.read(0x60) & 2 != 0, "interrupt status shows a config change");
    assert_eq!(h.read(0x100), 512, "num_pages");
    h.write(0x104, 512);
    assert_eq!(handle.actual_mib(), 2);
    // Inflate 1 MiB at 2 MiB through queue 0.
    let mem = h.mem.memory();
    for p in 0..256u64 {
        mem.write_obj(1u32, GuestAddress((2 << 20) + p * PAGE_SIZE)).unwrap();
    }
    let pfns: Vec<u8> = (0..256u32).flat_map(|p| (512 + p).to_le_bytes()).collect();
    mem.write_slice(&pfns, GuestAddress(0x10_0000)).unwrap();
    h.queues[0].add(&mem, &[(0x10_0000, pfns.len() as u32, false)]);
    drop(mem);
    h.kick(0);
    assert!(h.queues[0].wait_used(&h.mem).is_some());
    let mem = h.mem.memory();
    let host = mem.get_host_address(GuestAddress(2 << 20)).unwrap();
    let mut vec = vec![0u8; 256];
    // SAFETY: one page-aligned 1 MiB range of the guest mapping; one byte per page.
    assert_eq!(unsafe { libc::mincore(host.cast(), 1 << 20, vec.as_mut_ptr()) }, 0);
    assert!(vec.iter().all(|b| b & 1 == 0), "inflated pages are still resident");
}

#[test]
fn random_hostile_rings_never_panic() {
    use crate::net::test_driver::scribble;
    use crate::worker::QueueHandler;
    let mut rng = 0x0bad_cafe_f00d_d00du64;
    let dev = Balloon::new("b", &BalloonConfig::default(), 16).unwrap();
    let mut broken = 0;
    for round in 0..300 {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut drivers = [Driver::new(&mem, 0, 16), Driver::new(&mem, 0x1_0000, 16), Driver::new(&mem, 0x2_0000, 8)];
        let queues: Vec<_> =
            drivers.iter_mut().enumerate().map(|(i, d)| d.activate(i as u16, round % 2 == 0).queue).collect();
        let mut h = handler::BalloonHandler {
            mem: GuestMemoryAtomic::new(mem.clone()),
            interrupt: Arc::new(TestIrq::default()),
            queues,
            kinds: vec![handler::QueueKind::Inflate, handler::QueueKind::Deflate, handler::QueueKind::Reporting],
            index: vec![0, 1, 2],
            shared: dev.shared.clone(),
            stats_head: None,
            timer: None,
        };
        for d in drivers.iter_mut() {
            scribble(d, &mut rng, 16 << 20);
        }
        for q in [0, 1, 2, 0] {
            if let Err(e) = h.queue_notified(q) {
                if broken < 5 {
                    eprintln!("round {round}: {e}");
                }
                broken += 1;
                break;
            }
        }
        let _ = h.fd_ready(handler::TIMER_TOKEN, EventSet::IN);
    }
    eprintln!("balloon: 300 random rings, {broken} marked the device broken");
}

#[test]
fn free_page_reporting_discards_reported_blocks() {
    // No stats queue, so reporting is queue 2.
    let mut r = rig(anon_memory(), "stats=0,free_page_reporting=on");
    assert!(r.dev.features() & VIRTIO_BALLOON_F_REPORTING != 0);
    touch(&r.mem);
    assert_eq!(resident_pages(&r.mem), NPAGES as usize);
    // The guest reports the 4 MiB block as two 2 MiB free ranges.
    r.stats.add_chain(&[(DATA, 2 << 20, true), (DATA + (2 << 20), 2 << 20, true)]);
    r.stats.kick();
    assert_eq!(r.stats.wait_used(1, WAIT), vec![(0, 0)]);
    assert_eq!(resident_pages(&r.mem), 0);
    assert_eq!(r.dev.counters()["reported_pages"], NPAGES);
}
