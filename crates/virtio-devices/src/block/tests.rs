use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

use super::request::*;
use super::*;
use crate::testing::{F_NEXT, MmioHarness};

const DATA: u64 = 0x100000;
const HDR: u64 = 0x80000;
const STATUS: u64 = 0x80100;

struct TempDisk(PathBuf);
impl Drop for TempDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_disk(name: &str, size: u64) -> TempDisk {
    // /var/tmp: a real disk filesystem (O_DIRECT works there, unlike tmpfs).
    let p = PathBuf::from(format!("/var/tmp/tern-virtio-blk-{}-{name}.img", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    TempDisk(p)
}

fn harness(path: &Path, opts: &str) -> MmioHarness {
    let cfg: DiskConfig = format!("path={}{opts}", path.display()).parse().unwrap();
    let blk = Block::new("blk0", &cfg).unwrap();
    let mut h = MmioHarness::new(Arc::new(Mutex::new(blk)));
    h.init(!0, &[64]);
    assert_eq!(h.status() & 0x40, 0, "device came up");
    h
}

fn header(h: &MmioHarness, t: u32, sector: u64) {
    let m = h.mem.memory();
    m.write_obj(t, GuestAddress(HDR)).unwrap();
    m.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    m.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
}

/// Submit a request: header, payload buffers, status; wait for completion.
fn submit(h: &mut MmioHarness, t: u32, sector: u64, payload: &[(u64, u32)], device_writes: bool) -> (u8, u32) {
    header(h, t, sector);
    let mut bufs = vec![(HDR, 16, false)];
    bufs.extend(payload.iter().map(|&(a, l)| (a, l, device_writes)));
    bufs.push((STATUS, 1, true));
    let m = h.mem.memory();
    h.queues[0].add(&m, &bufs);
    drop(m);
    h.kick(0);
    let (_, len) = h.queues[0].wait_used(&h.mem).expect("request not completed");
    (h.mem.memory().read_obj::<u8>(GuestAddress(STATUS)).unwrap(), len)
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn write_read_round_trip(opts: &str) {
    let disk = temp_disk(&format!("rt{}", opts.len()), 1 << 20);
    let mut h = harness(&disk.0, opts);
    let data = pattern(7, 8192);
    h.mem.memory().write_slice(&data, GuestAddress(DATA)).unwrap();
    // Two segments: 4 KiB each, 4 KiB aligned.
    assert_eq!(submit(&mut h, T_OUT, 16, &[(DATA, 4096), (DATA + 4096, 4096)], false), (S_OK, 1));
    assert_eq!(submit(&mut h, T_FLUSH, 0, &[], false), (S_OK, 1));
    // The host file has the bytes at sector 16.
    let mut f = std::fs::File::open(&disk.0).unwrap();
    let mut host = vec![0u8; 8192];
    f.seek(SeekFrom::Start(16 * 512)).unwrap();
    f.read_exact(&mut host).unwrap();
    assert_eq!(host, data);
    // Read back into other guest memory.
    assert_eq!(submit(&mut h, T_IN, 16, &[(DATA + 0x10000, 8192)], true), (S_OK, 8193));
    let mut back = vec![0u8; 8192];
    h.mem.memory().read_slice(&mut back, GuestAddress(DATA + 0x10000)).unwrap();
    assert_eq!(back, data);
    // Unaligned guest buffer and sector: still right (bounce / blocking path).
    f.seek(SeekFrom::Start(3 * 512)).unwrap();
    let mut file = std::fs::OpenOptions::new().write(true).open(&disk.0).unwrap();
    file.seek(SeekFrom::Start(3 * 512)).unwrap();
    file.write_all(&pattern(9, 1024)).unwrap();
    file.sync_all().unwrap();
    assert_eq!(submit(&mut h, T_IN, 3, &[(DATA + 0x20001, 1024)], true), (S_OK, 1025));
    let mut back = vec![0u8; 1024];
    h.mem.memory().read_slice(&mut back, GuestAddress(DATA + 0x20001)).unwrap();
    assert_eq!(back, pattern(9, 1024));
    let c = h.transport.device().lock().unwrap().counters();
    assert_eq!((c["read_ops"], c["write_ops"], c["write_bytes"]), (2, 1, 8192));
    // With io_uring the requests went async, except (under O_DIRECT) the unaligned one.
    let uring = opts.contains("io_uring") || !opts.contains("io=threads");
    let want_async = match (uring, opts.contains("cache=none")) {
        (false, _) => 0,
        (true, false) => 3,
        (true, true) => 2,
    };
    assert_eq!(c["async_ops"], want_async);
    // And the reads and writes that went blocking saw the same data (above).
}

#[test]
fn threads_engine_writes_reads_and_flushes() {
    write_read_round_trip(",io=threads");
}

#[test]
fn default_engine_is_io_uring_for_raw_images() {
    write_read_round_trip("");
}

#[test]
fn io_uring_engine_writes_reads_and_flushes() {
    write_read_round_trip(",io=io_uring");
}

#[test]
fn direct_io_with_both_engines() {
    write_read_round_trip(",cache=none,io=threads");
    write_read_round_trip(",cache=none,io=io_uring");
}

#[test]
fn config_space_advertises_capacity_and_limits() {
    let disk = temp_disk("cfg", 1 << 20);
    let h = harness(&disk.0, "");
    let dev = h.transport.device().lock().unwrap();
    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 2048);
    let mut w = [0u8; 4];
    dev.read_config(12, &mut w);
    assert_eq!(u32::from_le_bytes(w), 254, "seg_max");
    dev.read_config(20, &mut w);
    assert_eq!(u32::from_le_bytes(w), 512, "blk_size");
    let f = dev.features();
    for bit in [VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_F_SEG_MAX] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn get_id_returns_the_serial() {
    let disk = temp_disk("id", 1 << 20);
    let mut h = harness(&disk.0, ",serial=my-disk");
    assert_eq!(submit(&mut h, T_GET_ID, 0, &[(DATA, 20)], true), (S_OK, 21));
    let mut id = [0u8; 20];
    h.mem.memory().read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..8], b"my-disk\0");
}

#[test]
fn bad_requests_get_error_status() {
    let disk = temp_disk("bad", 1 << 20);
    let mut h = harness(&disk.0, "");
    // Past the end, straddling the end, sector overflow.
    assert_eq!(submit(&mut h, T_IN, 2048, &[(DATA, 512)], true).0, S_IOERR);
    assert_eq!(submit(&mut h, T_IN, 2047, &[(DATA, 1024)], true).0, S_IOERR);
    assert_eq!(submit(&mut h, T_OUT, u64::MAX / 256, &[(DATA, 512)], false).0, S_IOERR);
    // Not a whole sector.
    assert_eq!(submit(&mut h, T_IN, 0, &[(DATA, 100)], true).0, S_IOERR);
    // Unknown request type.
    assert_eq!(submit(&mut h, 0x77, 0, &[(DATA, 512)], true).0, S_UNSUPP);
    // Discard with flags set is unsupported.
    let m = h.mem.memory();
    m.write_obj(0u64, GuestAddress(DATA)).unwrap();
    m.write_obj(8u32, GuestAddress(DATA + 8)).unwrap();
    m.write_obj(1u32, GuestAddress(DATA + 12)).unwrap();
    drop(m);
    assert_eq!(submit(&mut h, T_DISCARD, 0, &[(DATA, 16)], false).0, S_UNSUPP);
    // More segments than max_discard_seg.
    assert_eq!(submit(&mut h, T_DISCARD, 0, &[(DATA, 16 * 33)], false).0, S_IOERR);
    // Segment past the end.
    let m = h.mem.memory();
    m.write_obj(2040u64, GuestAddress(DATA)).unwrap();
    m.write_obj(16u32, GuestAddress(DATA + 8)).unwrap();
    m.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
    drop(m);
    assert_eq!(submit(&mut h, T_WRITE_ZEROES, 0, &[(DATA, 16)], false).0, S_IOERR);
    // Payload buffer outside guest memory: the chain is refused, not followed.
    header(&h, T_IN, 0);
    let m = h.mem.memory();
    h.queues[0].add(&m, &[(HDR, 16, false), (crate::testing::MEM_SIZE - 256, 512, true), (STATUS, 1, true)]);
    drop(m);
    h.kick(0);
    assert_eq!(h.queues[0].wait_used(&h.mem).map(|u| u.1), Some(0));
    // No status byte at all.
    let m = h.mem.memory();
    h.queues[0].add(&m, &[(HDR, 16, false)]);
    drop(m);
    h.kick(0);
    assert_eq!(h.queues[0].wait_used(&h.mem).map(|u| u.1), Some(0));
    assert!(h.transport.device().lock().unwrap().counters()["errors"] >= 10);
    assert_eq!(h.status() & 0x40, 0, "bad requests do not break the device");
    // And it still works.
    assert_eq!(submit(&mut h, T_IN, 0, &[(DATA, 512)], true), (S_OK, 513));
}

#[test]
fn readonly_disk_refuses_writes() {
    let disk = temp_disk("ro", 1 << 20);
    let mut h = harness(&disk.0, ",readonly=on");
    assert_ne!(h.transport.device().lock().unwrap().features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(submit(&mut h, T_OUT, 0, &[(DATA, 512)], false).0, S_IOERR);
    assert_eq!(submit(&mut h, T_IN, 0, &[(DATA, 512)], true).0, S_OK);
}

#[test]
fn write_zeroes_and_discard_clear_data() {
    let disk = temp_disk("wz", 1 << 20);
    std::fs::write(&disk.0, vec![0xaau8; 1 << 20]).unwrap();
    let mut h = harness(&disk.0, "");
    let m = h.mem.memory();
    m.write_obj(8u64, GuestAddress(DATA)).unwrap();
    m.write_obj(8u32, GuestAddress(DATA + 8)).unwrap();
    m.write_obj(WZ_FLAG_UNMAP, GuestAddress(DATA + 12)).unwrap();
    m.write_obj(64u64, GuestAddress(DATA + 16)).unwrap();
    m.write_obj(8u32, GuestAddress(DATA + 24)).unwrap();
    m.write_obj(0u32, GuestAddress(DATA + 28)).unwrap();
    drop(m);
    assert_eq!(submit(&mut h, T_WRITE_ZEROES, 0, &[(DATA, 32)], false).0, S_OK);
    let host = std::fs::read(&disk.0).unwrap();
    assert!(host[8 * 512..16 * 512].iter().all(|&b| b == 0));
    assert!(host[64 * 512..72 * 512].iter().all(|&b| b == 0));
    assert_eq!(host[16 * 512], 0xaa);
    assert_eq!(host[7 * 512], 0xaa);
    let m = h.mem.memory();
    m.write_obj(128u64, GuestAddress(DATA)).unwrap();
    m.write_obj(8u32, GuestAddress(DATA + 8)).unwrap();
    m.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
    drop(m);
    assert_eq!(submit(&mut h, T_DISCARD, 0, &[(DATA, 16)], false).0, S_OK);
}

#[test]
fn header_split_across_descriptors_and_indirect_chains() {
    let disk = temp_disk("split", 1 << 20);
    std::fs::write(&disk.0, pattern(3, 1 << 20)).unwrap();
    let mut h = harness(&disk.0, "");
    header(&h, T_IN, 1);
    let m = h.mem.memory();
    h.queues[0].add(&m, &[(HDR, 5, false), (HDR + 5, 11, false), (DATA, 512, true), (STATUS, 1, true)]);
    drop(m);
    h.kick(0);
    assert_eq!(h.queues[0].wait_used(&h.mem).map(|u| u.1), Some(513));
    let mut back = vec![0u8; 512];
    h.mem.memory().read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, pattern(3, 1 << 20)[512..1024]);
    // The same request through an indirect table at 0x90000.
    header(&h, T_IN, 2);
    let m = h.mem.memory();
    let table = 0x90000u64;
    for (i, (addr, len, flags)) in
        [(HDR, 16u32, F_NEXT), (DATA + 0x1000, 512, F_NEXT | 2), (STATUS, 1, 2)].iter().enumerate()
    {
        let d = table + 16 * i as u64;
        m.write_obj(*addr, GuestAddress(d)).unwrap();
        m.write_obj(*len, GuestAddress(d + 8)).unwrap();
        m.write_obj(*flags, GuestAddress(d + 12)).unwrap();
        m.write_obj(i as u16 + 1, GuestAddress(d + 14)).unwrap();
    }
    let q = &mut h.queues[0];
    q.write_desc(&m, 20, table, 48, crate::testing::F_INDIRECT, 0);
    q.publish(&m, 20);
    drop(m);
    h.kick(0);
    assert_eq!(h.queues[0].wait_used(&h.mem), Some((20, 513)));
    h.mem.memory().read_slice(&mut back, GuestAddress(DATA + 0x1000)).unwrap();
    assert_eq!(back, pattern(3, 1 << 20)[1024..1536]);
}

#[test]
fn qcow2_disk_through_the_image_crate() {
    let p = PathBuf::from(format!("/var/tmp/tern-virtio-blk-{}-q.qcow2", std::process::id()));
    let disk = TempDisk(p.clone());
    image::create(&p, image::Format::Qcow2, &image::CreateOptions { size: 1 << 20, ..Default::default() }).unwrap();
    let mut h = harness(&disk.0, ",format=qcow2,io=io_uring");
    let data = pattern(11, 4096);
    h.mem.memory().write_slice(&data, GuestAddress(DATA)).unwrap();
    assert_eq!(submit(&mut h, T_OUT, 100, &[(DATA, 4096)], false).0, S_OK);
    assert_eq!(submit(&mut h, T_IN, 100, &[(DATA + 0x8000, 4096)], true), (S_OK, 4097));
    let mut back = vec![0u8; 4096];
    h.mem.memory().read_slice(&mut back, GuestAddress(DATA + 0x8000)).unwrap();
    assert_eq!(back, data);
    drop(h);
    let img = image::open(&p, None, true).unwrap();
    let mut host = vec![0u8; 4096];
    img.read_at(100 * 512, &mut host).unwrap();
    assert_eq!(host, data);
}

#[test]
fn missing_file_is_a_clear_error() {
    let cfg: DiskConfig = "path=/nonexistent/disk.img".parse().unwrap();
    let e = Block::new("blk0", &cfg).err().unwrap().to_string();
    assert!(e.contains("/nonexistent/disk.img"), "{e}");
}

/// Submit 16 requests in one kick, each with its own header, 4 KiB buffer
/// and status byte, and collect all 16 completions (in any order).
fn submit_batch(h: &mut MmioHarness, t: u32, buf_base: u64, device_writes: bool) {
    const HDRS: u64 = 0xa0000;
    const STATUSES: u64 = 0xa1000;
    let m = h.mem.memory();
    for i in 0..16u64 {
        m.write_obj(t, GuestAddress(HDRS + 16 * i)).unwrap();
        m.write_obj(0u32, GuestAddress(HDRS + 16 * i + 4)).unwrap();
        m.write_obj(i * 8 + 64, GuestAddress(HDRS + 16 * i + 8)).unwrap();
        m.write_obj(0xffu8, GuestAddress(STATUSES + i)).unwrap();
        let bufs = [(HDRS + 16 * i, 16, false), (buf_base + 0x1000 * i, 4096, device_writes), (STATUSES + i, 1, true)];
        h.queues[0].add(&m, &bufs);
    }
    drop(m);
    h.kick(0);
    let mut heads = Vec::new();
    for _ in 0..16 {
        let (head, len) = h.queues[0].wait_used(&h.mem).expect("all 16 requests complete");
        assert_eq!(len, if device_writes { 4097 } else { 1 });
        heads.push(head);
    }
    heads.sort();
    heads.dedup();
    assert_eq!(heads.len(), 16, "each request returned once");
    for i in 0..16 {
        assert_eq!(h.mem.memory().read_obj::<u8>(GuestAddress(STATUSES + i)).unwrap(), S_OK, "request {i}");
    }
}

/// Many requests in flight at once (the io_uring ring, or the thread pool
/// for io=threads and qcow2) each land at their own sector and come back with
/// their own data.
#[test]
fn sixteen_requests_in_flight_with_every_engine() {
    for (name, opts) in [("uring", ""), ("threads", ",io=threads"), ("qcow2", ",format=qcow2")] {
        let path = PathBuf::from(format!("/var/tmp/tern-virtio-blk-{}-batch-{name}.img", std::process::id()));
        let disk = TempDisk(path.clone());
        let format = if name == "qcow2" { image::Format::Qcow2 } else { image::Format::Raw };
        image::create(&path, format, &image::CreateOptions { size: 1 << 20, ..Default::default() }).unwrap();
        let mut h = harness(&disk.0, opts);
        let m = h.mem.memory();
        for i in 0..16u8 {
            m.write_slice(&pattern(i.wrapping_mul(17), 4096), GuestAddress(DATA + 0x1000 * i as u64)).unwrap();
        }
        drop(m);
        submit_batch(&mut h, T_OUT, DATA, false);
        submit_batch(&mut h, T_IN, DATA + 0x10_0000, true);
        for i in 0..16u8 {
            let mut back = vec![0u8; 4096];
            h.mem.memory().read_slice(&mut back, GuestAddress(DATA + 0x10_0000 + 0x1000 * i as u64)).unwrap();
            assert_eq!(back, pattern(i.wrapping_mul(17), 4096), "{name}: request {i}");
        }
        let c = h.transport.device().lock().unwrap().counters();
        assert_eq!((c["read_ops"], c["write_ops"], c["errors"]), (16, 16, 0), "{name}");
        drop(h);
        let img = image::open(&path, None, true).unwrap();
        let mut host = vec![0u8; 4096];
        img.read_at((5 * 8 + 64) * 512, &mut host).unwrap();
        assert_eq!(host, pattern(5 * 17, 4096), "{name}: on the host");
    }
}
