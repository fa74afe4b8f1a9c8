//! Model-based test: random writes, zero writes, discards, snapshot
//! create/apply/delete, flushes and reopens against qcow2 and a plain
//! in-memory disk; contents must always be equal and qemu-img must find the
//! image clean at the end.

mod common;

use common::*;
use image::qcow2::{self, CreateOptions, Qcow2};
use image::{BlockBackend, Preallocation};
use proptest::prelude::*;

const SIZE: u64 = 1 << 20;

#[derive(Clone, Debug)]
enum Op {
    Write { off: u64, len: usize, seed: u64 },
    Zero { off: u64, len: u64, unmap: bool },
    Discard { off: u64, len: u64 },
    SnapCreate,
    SnapApply(usize),
    SnapDelete(usize),
    Flush,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..SIZE, 1usize..70_000, any::<u64>()).prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        2 => (0..SIZE, 1u64..200_000, any::<bool>()).prop_map(|(off, len, unmap)| Op::Zero { off, len, unmap }),
        2 => (0..SIZE, 1u64..200_000).prop_map(|(off, len)| Op::Discard { off, len }),
        1 => Just(Op::SnapCreate),
        1 => (0usize..4).prop_map(Op::SnapApply),
        1 => (0usize..4).prop_map(Op::SnapDelete),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

fn clamp(off: u64, len: u64) -> u64 {
    len.min(SIZE - off)
}

fn run_case(cluster_size: u64, refcount_bits: u32, version: u32, ops: &[Op]) {
    let d = TempDir::new("model");
    let p = d.path("m.qcow2");
    let opts = CreateOptions { cluster_size, refcount_bits, version, ..Default::default() };
    qcow2::create(&p, SIZE, Preallocation::Off, &opts).unwrap();
    // Tiny caches so tables are evicted (and written back in order) all the time.
    let open = || {
        let o = image::OpenOptions { l2_cache_bytes: Some(1), refcount_cache_bytes: Some(1), ..Default::default() };
        Qcow2::open_with(&p, &o).unwrap()
    };
    let mut img = open();
    let mut model = vec![0u8; SIZE as usize];
    let mut snaps: Vec<(String, Vec<u8>)> = Vec::new();
    let mut next_snap = 0;
    let cs = cluster_size;
    for op in ops {
        match op {
            Op::Write { off, len, seed } => {
                let len = clamp(*off, *len as u64) as usize;
                let data = pattern(*seed, len);
                img.write_at(*off, &data).unwrap();
                model[*off as usize..*off as usize + len].copy_from_slice(&data);
            }
            Op::Zero { off, len, unmap } => {
                let len = clamp(*off, *len);
                img.write_zeroes(*off, len, *unmap).unwrap();
                model[*off as usize..(*off + len) as usize].fill(0);
            }
            Op::Discard { off, len } => {
                let len = clamp(*off, *len);
                img.discard(*off, len).unwrap();
                // Only whole clusters are dropped; they then read as zeroes.
                let first = off.div_ceil(cs) * cs;
                let end = if off + len == SIZE { SIZE } else { (off + len) / cs * cs };
                if first < end {
                    model[first as usize..end as usize].fill(0);
                }
            }
            Op::SnapCreate => {
                if refcount_bits == 1 {
                    assert!(img.snapshot_create("x").is_err());
                    continue;
                }
                let name = format!("s{next_snap}");
                next_snap += 1;
                img.snapshot_create(&name).unwrap();
                snaps.push((name, model.clone()));
            }
            Op::SnapApply(i) => {
                if let Some((name, content)) = snaps.get(*i % snaps.len().max(1)) {
                    img.snapshot_apply(name).unwrap();
                    model = content.clone();
                }
            }
            Op::SnapDelete(i) => {
                if !snaps.is_empty() {
                    let (name, _) = snaps.remove(*i % snaps.len());
                    img.snapshot_delete(&name).unwrap();
                }
            }
            Op::Flush => img.flush().unwrap(),
            Op::Reopen => {
                drop(img);
                img = open();
            }
        }
        let mut got = vec![0u8; SIZE as usize];
        img.read_at(0, &mut got).unwrap();
        if let Some(i) = got.iter().zip(model.iter()).position(|(a, b)| a != b) {
            panic!("content differs at {i} after {op:?}");
        }
    }
    drop(img);
    assert_qemu_clean(&p);
    let r = {
        let img = Qcow2::open(&p, true).unwrap();
        qcow2::check::check(&img, qcow2::check::Repair::None).unwrap()
    };
    assert_eq!((r.corruptions, r.leaks), (0, 0), "{:?}", r.messages);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn qcow2_matches_model(
        cs in prop::sample::select(vec![512u64, 4096, 65536]),
        rb in prop::sample::select(vec![1u32, 4, 16, 64]),
        version in prop::sample::select(vec![2u32, 3]),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let rb = if version == 2 { 16 } else { rb };
        run_case(cs, rb, version, &ops);
    }
}
