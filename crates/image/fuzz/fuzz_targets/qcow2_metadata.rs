//! Fuzzes qcow2 header, extension, snapshot-table and L1/L2/refcount parsing:
//! the input becomes the first bytes of an image file which is then opened,
//! read, checked and written. Any panic, overflow or out-of-bounds access is a bug.
#![no_main]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use image::BlockBackend;
use image::qcow2::{Qcow2, check, header::Header, snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Pure parsers first.
    let _ = Header::parse(data, data.len() as u64);
    let _ = snapshot::parse_table(data, 4, 512);

    static N: AtomicU64 = AtomicU64::new(0);
    let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
    let path = dir.join(format!("tern-fuzz-{}-{}.qcow2", std::process::id(), N.fetch_add(1, Ordering::Relaxed) % 4));
    let Ok(mut f) = std::fs::File::create(&path) else { return };
    if f.write_all(data).is_err() {
        return;
    }
    drop(f);
    // No syncs: the fuzzer needs speed, not durability.
    let opts = image::OpenOptions { cache_unsafe: true, ..Default::default() };
    if let Ok(img) = Qcow2::open_with(&path, &opts) {
        let size = img.size().min(4 << 20);
        let mut buf = vec![0u8; 65536];
        let mut off = 0;
        while off < size {
            let n = (size - off).min(buf.len() as u64) as usize;
            let _ = img.read_at(off, &mut buf[..n]);
            off += n as u64;
        }
        let _ = check::check(&img, check::Repair::None);
        let _ = img.write_at(0, &[0x5a; 4096]);
        let _ = img.discard(0, size);
        let _ = img.flush();
    }
    let _ = std::fs::remove_file(&path);
});
