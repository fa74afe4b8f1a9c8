//! Hostile images: every corruption must give a clear error, never a panic,
//! and never a write outside the image's own data clusters.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use image::qcow2::{self, CreateOptions, Qcow2};
use image::{BlockBackend, Error, Preallocation};

const CS: u64 = 65536;

/// A 16 MiB image with the first MiB written. Layout: header 0, reftable 1,
/// refblock 2, L1 3, then data and one L2 table.
fn base(d: &TempDir, name: &str) -> PathBuf {
    let p = d.path(name);
    qcow2::create(&p, 16 << 20, Preallocation::Off, &CreateOptions::default()).unwrap();
    let img = Qcow2::open(&p, false).unwrap();
    img.write_at(0, &pattern(1, 1 << 20)).unwrap();
    img.flush().unwrap();
    p
}

fn patch(p: &Path, off: u64, bytes: &[u8]) {
    std::fs::OpenOptions::new().write(true).open(p).unwrap().write_all_at(bytes, off).unwrap();
}

fn be64_at(p: &Path, off: u64) -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open(p).unwrap().read_exact_at(&mut b, off).unwrap();
    u64::from_be_bytes(b)
}

fn open_err(p: &Path) -> Error {
    match Qcow2::open(p, false) {
        Ok(_) => panic!("{} opened although it is corrupt", p.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "error must be one line: {msg}");
            e
        }
    }
}

#[test]
fn corrupt_headers_are_rejected() {
    let d = TempDir::new("hdr");
    let cases: Vec<(&str, u64, Vec<u8>)> = vec![
        ("magic", 0, b"QFI\x00".to_vec()),
        ("version", 4, 4u32.to_be_bytes().to_vec()),
        ("cluster_bits small", 20, 8u32.to_be_bytes().to_vec()),
        ("cluster_bits large", 20, 63u32.to_be_bytes().to_vec()),
        ("absurd size", 24, u64::MAX.to_be_bytes().to_vec()),
        ("crypt", 32, 1u32.to_be_bytes().to_vec()),
        ("l1_size huge", 36, u32::MAX.to_be_bytes().to_vec()),
        ("l1_size too small", 36, 0u32.to_be_bytes().to_vec()),
        ("l1 past eof", 40, (1u64 << 40).to_be_bytes().to_vec()),
        ("l1 unaligned", 40, 0x30008u64.to_be_bytes().to_vec()),
        ("l1 at header", 40, 0u64.to_be_bytes().to_vec()),
        ("reftable past eof", 48, (1u64 << 50).to_be_bytes().to_vec()),
        ("reftable clusters huge", 56, u32::MAX.to_be_bytes().to_vec()),
        ("reftable clusters zero", 56, 0u32.to_be_bytes().to_vec()),
        ("snapshots huge", 60, u32::MAX.to_be_bytes().to_vec()),
        ("unknown incompatible", 72, (1u64 << 40).to_be_bytes().to_vec()),
        ("external data file", 72, 4u64.to_be_bytes().to_vec()),
        ("extended l2", 72, 16u64.to_be_bytes().to_vec()),
        ("refcount_order", 96, 7u32.to_be_bytes().to_vec()),
        ("header_length", 100, 0x20000u32.to_be_bytes().to_vec()),
        ("header_length small", 100, 50u32.to_be_bytes().to_vec()),
        ("backing name", 8, [0x100u64.to_be_bytes().to_vec(), 100_000u32.to_be_bytes().to_vec()].concat()),
        ("backing outside cluster", 8, [(CS - 2).to_be_bytes().to_vec(), 100u32.to_be_bytes().to_vec()].concat()),
        ("extension overflow", 112, [0x1234_5678u32.to_be_bytes(), 0x7fff_0000u32.to_be_bytes()].concat()),
    ];
    for (name, off, bytes) in cases {
        let p = base(&d, "h.qcow2");
        patch(&p, off, &bytes);
        let e = open_err(&p);
        eprintln!("{name}: {e}");
    }
    // Truncated files.
    for len in [0u64, 10, 71, 100] {
        let p = base(&d, "t.qcow2");
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len).unwrap();
        open_err(&p);
    }
}

#[test]
fn tables_past_eof_or_into_metadata() {
    let d = TempDir::new("tables");
    // L1 entry pointing past the end of the file: reads and writes fail cleanly.
    let p = base(&d, "a.qcow2");
    patch(&p, 3 * CS, &((1u64 << 40) | (1 << 63)).to_be_bytes());
    let img = Qcow2::open(&p, false).unwrap();
    let mut b = vec![0u8; 4096];
    assert!(matches!(img.read_at(0, &mut b), Err(Error::Corrupt(_))));
    assert!(img.write_at(0, &b).is_err());
    drop(img);
    // L2 entry pointing at the L1 table (with COPIED): a guest write must not land in metadata.
    let p = base(&d, "b.qcow2");
    let l2 = be64_at(&p, 3 * CS) & 0x00ff_ffff_ffff_fe00;
    patch(&p, l2, &((3 * CS) | (1 << 63)).to_be_bytes());
    let before = std::fs::read(&p).unwrap();
    {
        let img = Qcow2::open(&p, false).unwrap();
        let e = img.write_at(0, &[0xee; 512]).unwrap_err();
        assert!(matches!(e, Error::Corrupt(_)), "{e}");
    }
    assert_eq!(std::fs::read(&p).unwrap()[..4 * CS as usize], before[..4 * CS as usize], "metadata was overwritten");
    // L2 entry pointing at the refcount block: refused, metadata intact.
    let p = base(&d, "c.qcow2");
    let l2 = be64_at(&p, 3 * CS) & 0x00ff_ffff_ffff_fe00;
    patch(&p, l2 + 8, &((2 * CS) | (1 << 63)).to_be_bytes());
    let before = std::fs::read(&p).unwrap();
    {
        let img = Qcow2::open(&p, false).unwrap();
        assert!(img.write_at(CS, &[0xee; 512]).is_err());
    }
    assert_eq!(std::fs::read(&p).unwrap()[..4 * CS as usize], before[..4 * CS as usize]);
    // "Offset 0 with COPIED" is just unallocated: the write allocates, the header stays intact.
    let p = base(&d, "h0.qcow2");
    patch(&p, l2 + 8, &(1u64 << 63).to_be_bytes());
    let before = std::fs::read(&p).unwrap();
    {
        let img = Qcow2::open(&p, false).unwrap();
        img.write_at(CS, &[0xee; 512]).unwrap();
    }
    assert_eq!(std::fs::read(&p).unwrap()[..CS as usize], before[..CS as usize]);
    // Compressed garbage: read fails with an error.
    let p = base(&d, "z.qcow2");
    let l2 = be64_at(&p, 3 * CS) & 0x00ff_ffff_ffff_fe00;
    patch(&p, l2, &((1u64 << 62) | (5 << 54) | (4 * CS)).to_be_bytes());
    let img = Qcow2::open(&p, true).unwrap();
    assert!(img.read_at(0, &mut b).is_err());
    drop(img);
    // Refcount block past EOF, or listed twice (would make allocation loop): refused at open.
    let p = base(&d, "r.qcow2");
    patch(&p, CS, &(1u64 << 40).to_be_bytes());
    assert!(matches!(Qcow2::open(&p, false), Err(Error::Corrupt(_))));
    let p = base(&d, "r2.qcow2");
    patch(&p, CS + 8, &(2 * CS).to_be_bytes());
    assert!(matches!(Qcow2::open(&p, false), Err(Error::Corrupt(_))));
}

#[test]
fn refcount_overflow_is_an_error() {
    let d = TempDir::new("overflow");
    let p = d.path("o.qcow2");
    qcow2::create(&p, 1 << 20, Preallocation::Off, &CreateOptions { refcount_bits: 1, ..Default::default() }).unwrap();
    let img = Qcow2::open(&p, false).unwrap();
    img.write_at(0, &[1u8; 4096]).unwrap();
    assert!(img.snapshot_create("a").is_err());
    drop(img);
    assert_qemu_clean(&p);
    let p = d.path("o2.qcow2");
    qcow2::create(&p, 1 << 20, Preallocation::Off, &CreateOptions { refcount_bits: 2, ..Default::default() }).unwrap();
    let img = Qcow2::open(&p, false).unwrap();
    img.write_at(0, &[1u8; 4096]).unwrap();
    img.snapshot_create("a").unwrap();
    img.snapshot_create("b").unwrap();
    let e = img.snapshot_create("c").unwrap_err();
    assert!(matches!(e, Error::RefcountOverflow(_)), "{e}");
    drop(img);
    let (rc, out, err) = qemu_img(&["check", s(&p)]);
    assert!(rc == 0 || rc == 3, "{out}{err}");
}

#[test]
fn backing_loops_are_detected() {
    let d = TempDir::new("loop");
    let (a, b) = (d.path("a.qcow2"), d.path("b.qcow2"));
    for (img, back) in [(&a, "b.qcow2"), (&b, "a.qcow2")] {
        let o = CreateOptions {
            backing_file: Some(back.into()),
            backing_format: Some("qcow2".into()),
            ..Default::default()
        };
        qcow2::create(img, 1 << 20, Preallocation::Off, &o).unwrap();
    }
    assert!(matches!(image::open(&a, None, true), Err(Error::BackingLoop(_))));
    let c = d.path("c.qcow2");
    let o = CreateOptions { backing_file: Some("c.qcow2".into()), ..Default::default() };
    qcow2::create(&c, 1 << 20, Preallocation::Off, &o).unwrap();
    assert!(matches!(image::open(&c, None, true), Err(Error::BackingLoop(_))));
}

#[test]
fn absurd_sizes_are_refused() {
    let d = TempDir::new("absurd");
    let p = d.path("x.qcow2");
    assert!(qcow2::create(&p, u64::MAX, Preallocation::Off, &CreateOptions::default()).is_err());
    assert!(
        qcow2::create(&p, 1 << 62, Preallocation::Off, &CreateOptions { cluster_size: 512, ..Default::default() })
            .is_err()
    );
    qcow2::create(&p, 1 << 20, Preallocation::Off, &CreateOptions::default()).unwrap();
    let img = Qcow2::open(&p, false).unwrap();
    assert!(matches!(img.write_at(u64::MAX - 10, &[0; 100]), Err(Error::OutOfRange { .. })));
    assert!(img.read_at(1 << 20, &mut [0u8; 1]).is_err());
    assert!(img.resize(u64::MAX).is_err());
}

/// Random byte flips in the metadata of a valid image: open, read everything,
/// check and write must never panic.
#[test]
fn random_metadata_mutations_never_panic() {
    let d = TempDir::new("mutate");
    let p0 = base(&d, "orig.qcow2");
    {
        let img = Qcow2::open(&p0, false).unwrap();
        img.snapshot_create("s").unwrap();
        img.write_at(8 << 20, &[3u8; 100_000]).unwrap();
    }
    let orig = std::fs::read(&p0).unwrap();
    let meta_end = 6 * CS as usize;
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let p = d.path("m.qcow2");
    for _ in 0..300 {
        let mut m = orig.clone();
        for _ in 0..1 + rnd() % 4 {
            let i = (rnd() as usize) % meta_end.min(m.len());
            m[i] = rnd() as u8;
        }
        std::fs::write(&p, &m).unwrap();
        let r = std::panic::catch_unwind(|| {
            if let Ok(img) = Qcow2::open(&p, false) {
                let mut buf = vec![0u8; 1 << 20];
                for off in (0..img.size()).step_by(1 << 20) {
                    let n = (img.size() - off).min(1 << 20) as usize;
                    let _ = img.read_at(off, &mut buf[..n]);
                }
                let _ = qcow2::check::check(&img, qcow2::check::Repair::None);
                let _ = img.write_at(4 << 20, &[9u8; 70_000]);
                let _ = img.snapshot_create("t");
                let _ = img.flush();
            }
        });
        assert!(r.is_ok(), "panic on a mutated image");
    }
}
