//! Interoperability with the real qemu-img: images we create and write pass
//! `qemu-img check` and `qemu-img compare`; images qemu-img creates read back
//! identically through our engine.

mod common;

use common::*;
use image::qcow2::{self, CreateOptions, header::CompressionType};
use image::{BlockBackend, Format, Preallocation};

/// Writes a mix of aligned, unaligned, cluster-crossing and zero writes to both
/// images so they must end up identical.
fn scribble(a: &dyn BlockBackend, b: &dyn BlockBackend, seed: u64) {
    let size = a.size();
    let ops: [(u64, usize); 8] = [
        (0, 512),
        (4096, 65536),
        (100_000, 3000),
        (1 << 20, 1 << 20),
        (size - 4096, 4096),
        (777, 1),
        (65535, 2),
        (3 << 20, 200_000),
    ];
    for (i, &(off, len)) in ops.iter().enumerate() {
        if off + len as u64 > size {
            continue;
        }
        let d = pattern(seed + i as u64, len);
        a.write_at(off, &d).unwrap();
        b.write_at(off, &d).unwrap();
    }
    a.write_zeroes(1 << 20, 70_000, true).unwrap();
    b.write_zeroes(1 << 20, 70_000, true).unwrap();
    a.flush().unwrap();
    b.flush().unwrap();
}

fn check_variant(opts: CreateOptions, prealloc: Preallocation) {
    let d = TempDir::new("variant");
    let q = d.path("a.qcow2");
    let r = d.path("a.raw");
    let size = 8 << 20;
    qcow2::create(&q, size, prealloc, &opts).unwrap();
    image::raw::create(&r, size, Preallocation::Off).unwrap();
    assert_qemu_clean(&q);
    {
        let qi = image::open(&q, None, false).unwrap();
        let ri = image::open(&r, Some(Format::Raw), false).unwrap();
        scribble(qi.as_ref(), ri.as_ref(), opts.cluster_size);
        // Read back through our engine.
        let mut x = vec![0u8; size as usize];
        let mut y = vec![0u8; size as usize];
        qi.read_at(0, &mut x).unwrap();
        ri.read_at(0, &mut y).unwrap();
        assert!(x == y, "engine read-back differs for {opts:?}");
    }
    assert_qemu_clean(&q);
    qemu_img_ok(&["compare", "-f", "qcow2", "-F", "raw", s(&q), s(&r)]);
}

#[test]
fn created_images_pass_qemu_check_for_every_cluster_size() {
    for cs in [512u64, 4096, 65536, 2 << 20] {
        check_variant(CreateOptions { cluster_size: cs, ..Default::default() }, Preallocation::Off);
    }
}

#[test]
fn created_images_pass_qemu_check_for_every_refcount_width() {
    for rb in [1u32, 2, 4, 8, 16, 32, 64] {
        check_variant(
            CreateOptions { refcount_bits: rb, cluster_size: 4096, ..Default::default() },
            Preallocation::Off,
        );
    }
}

#[test]
fn v2_lazy_zstd_and_preallocation_variants() {
    check_variant(CreateOptions { version: 2, ..Default::default() }, Preallocation::Off);
    check_variant(CreateOptions { lazy_refcounts: true, ..Default::default() }, Preallocation::Off);
    check_variant(CreateOptions { compression_type: CompressionType::Zstd, ..Default::default() }, Preallocation::Off);
    for p in [Preallocation::Metadata, Preallocation::Falloc, Preallocation::Full] {
        check_variant(CreateOptions::default(), p);
    }
}

#[test]
fn qemu_made_images_read_identically() {
    let d = TempDir::new("qemu-made");
    let raw = d.path("src.raw");
    let mut data = pattern(7, 6 << 20);
    data[1 << 20..2 << 20].fill(0);
    data[3 << 20..(3 << 20) + 70000].copy_from_slice(&vec![0x5a; 70000]);
    std::fs::write(&raw, &data).unwrap();
    for (extra, name) in [
        (vec!["-c"], "zlib.qcow2"),
        (vec!["-c", "-o", "compression_type=zstd"], "zstd.qcow2"),
        (vec!["-o", "cluster_size=512"], "c512.qcow2"),
        (vec!["-o", "cluster_size=2M"], "c2m.qcow2"),
        (vec!["-o", "compat=0.10"], "v2.qcow2"),
        (vec!["-o", "refcount_bits=1"], "rb1.qcow2"),
        (vec!["-o", "refcount_bits=64,cluster_size=4096"], "rb64.qcow2"),
        (vec!["-c", "-o", "cluster_size=4096"], "c4k-comp.qcow2"),
    ] {
        let q = d.path(name);
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend(extra.iter());
        args.push(s(&raw));
        args.push(s(&q));
        qemu_img_ok(&args);
        let img = image::open(&q, None, true).unwrap();
        let mut got = vec![0u8; data.len()];
        img.read_at(0, &mut got).unwrap();
        assert!(got == data, "{name}: content differs");
        drop(img);
        // Write into it, then qemu-img must still be happy.
        let img = image::open(&q, None, false).unwrap();
        let patch = pattern(99, 100_000);
        img.write_at(12345, &patch).unwrap();
        img.discard(4 << 20, 1 << 20).unwrap();
        img.flush().unwrap();
        drop(img);
        assert_qemu_clean(&q);
        let mut expect = data.clone();
        expect[12345..12345 + patch.len()].copy_from_slice(&patch);
        let img = image::open(&q, None, true).unwrap();
        img.read_at(0, &mut got).unwrap();
        let discarded_ok =
            got[4 << 20..5 << 20].iter().all(|&b| b == 0) || got[4 << 20..5 << 20] == expect[4 << 20..5 << 20];
        assert!(discarded_ok, "{name}: discarded range reads neither zeroes nor old data");
        got[4 << 20..5 << 20].copy_from_slice(&expect[4 << 20..5 << 20]);
        assert!(got == expect, "{name}: content after write differs");
    }
}

#[test]
fn backing_chain_made_by_qemu() {
    let d = TempDir::new("chain");
    let base = d.path("base.qcow2");
    let mid = d.path("mid.qcow2");
    let top = d.path("top.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", s(&base), "4M"]);
    qemu_img_ok(&["create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", s(&mid)]);
    qemu_img_ok(&["create", "-f", "qcow2", "-b", s(&mid), "-F", "qcow2", s(&top)]);
    {
        let b = image::open(&base, None, false).unwrap();
        b.write_at(0, &[1u8; 100_000]).unwrap();
        b.flush().unwrap();
    }
    {
        let m = image::open(&mid, None, false).unwrap();
        m.write_at(50_000, &[2u8; 1000]).unwrap();
        m.write_zeroes(90_000, 5000, false).unwrap();
        m.flush().unwrap();
    }
    let t = image::open(&top, None, false).unwrap();
    t.write_at(99_000, &[3u8; 10]).unwrap();
    t.flush().unwrap();
    let mut got = vec![0u8; 200_000];
    t.read_at(0, &mut got).unwrap();
    drop(t);
    let mut expect = vec![0u8; 200_000];
    expect[..100_000].fill(1);
    expect[50_000..51_000].fill(2);
    expect[90_000..95_000].fill(0);
    expect[99_000..99_010].fill(3);
    assert!(got == expect);
    for p in [&base, &mid, &top] {
        assert_qemu_clean(p);
    }
    let flat = d.path("flat.raw");
    qemu_img_ok(&["convert", "-O", "raw", s(&top), s(&flat)]);
    let f = std::fs::read(&flat).unwrap();
    assert!(f[..200_000] == expect[..]);
}

#[test]
fn snapshots_interoperate_with_qemu() {
    let d = TempDir::new("snap");
    let q = d.path("s.qcow2");
    qcow2::create(&q, 4 << 20, Preallocation::Off, &CreateOptions { cluster_size: 4096, ..Default::default() })
        .unwrap();
    let img = qcow2::Qcow2::open(&q, false).unwrap();
    img.write_at(0, &[1u8; 3 << 20]).unwrap();
    img.snapshot_create("one").unwrap();
    img.write_at(4096, &[2u8; 8192]).unwrap();
    img.snapshot_create("two").unwrap();
    img.write_at(1 << 20, &[3u8; 4096]).unwrap();
    img.discard(2 << 20, 1 << 20).unwrap();
    img.flush().unwrap();
    drop(img);
    assert_qemu_clean(&q);
    let list = qemu_img_ok(&["snapshot", "-l", s(&q)]);
    assert!(list.contains("one") && list.contains("two"), "{list}");
    // qemu-img reads snapshot "one" as we wrote it.
    let raw1 = d.path("one.raw");
    qemu_img_ok(&["convert", "-O", "raw", "-l", "snapshot.name=one", s(&q), s(&raw1)]);
    let one = std::fs::read(&raw1).unwrap();
    assert!(one[..3 << 20].iter().all(|&b| b == 1));
    // Apply "one" with our engine, check contents and consistency.
    let img = qcow2::Qcow2::open(&q, false).unwrap();
    img.snapshot_apply("one").unwrap();
    let mut buf = vec![0u8; 4 << 20];
    img.read_at(0, &mut buf).unwrap();
    assert!(buf[..3 << 20].iter().all(|&b| b == 1) && buf[3 << 20..].iter().all(|&b| b == 0));
    img.snapshot_delete("two").unwrap();
    img.write_at(0, &[9u8; 5000]).unwrap();
    img.flush().unwrap();
    drop(img);
    assert_qemu_clean(&q);
    // qemu-img makes a snapshot, we delete it and write.
    qemu_img_ok(&["snapshot", "-c", "three", s(&q)]);
    let img = qcow2::Qcow2::open(&q, false).unwrap();
    assert_eq!(img.snapshots().len(), 2);
    img.snapshot_delete("one").unwrap();
    img.write_at(8192, &[4u8; 100]).unwrap();
    img.snapshot_delete("three").unwrap();
    img.flush().unwrap();
    drop(img);
    assert_qemu_clean(&q);
    let (_, out, _) = qemu_img(&["check", "--output", "json", s(&q)]);
    assert!(!out.contains("\"leaks\""), "{out}");
}

#[test]
fn resize_grow_and_shrink() {
    let d = TempDir::new("resize");
    let q = d.path("r.qcow2");
    qcow2::create(&q, 1 << 20, Preallocation::Off, &CreateOptions { cluster_size: 512, ..Default::default() }).unwrap();
    let img = qcow2::Qcow2::open(&q, false).unwrap();
    img.write_at(0, &[7u8; 1 << 20]).unwrap();
    img.resize(64 << 20).unwrap();
    img.write_at((64 << 20) - 512, &[8u8; 512]).unwrap();
    img.resize(100_352).unwrap();
    img.resize(200_704).unwrap();
    let mut b = vec![0u8; 200_704];
    img.read_at(0, &mut b).unwrap();
    assert!(b[..100_352].iter().all(|&x| x == 7) && b[100_352..].iter().all(|&x| x == 0));
    drop(img);
    assert_qemu_clean(&q);
    let info = qemu_img_ok(&["info", "--output", "json", s(&q)]);
    assert!(info.contains("\"virtual-size\": 200704"), "{info}");
}
