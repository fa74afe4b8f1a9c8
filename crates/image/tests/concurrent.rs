//! Several threads share one image, as virtio-blk queue workers do. Threads
//! write disjoint sectors that share clusters, so allocations and
//! copy-on-write of the same cluster race; nothing may be lost.

mod common;

use std::sync::Arc;

use common::*;
use image::qcow2::{self, CreateOptions};
use image::{BlockBackend, Preallocation};

fn stress(cluster_size: u64, with_backing: bool) {
    let d = TempDir::new("conc");
    let size = 8u64 << 20;
    let base = d.path("base.qcow2");
    let top = d.path("top.qcow2");
    qcow2::create(&base, size, Preallocation::Off, &CreateOptions { cluster_size, ..Default::default() }).unwrap();
    if with_backing {
        // The backing file has data, so every first write to a top cluster is a copy-on-write.
        let b = image::open(&base, None, false).unwrap();
        b.write_at(0, &vec![0x11; size as usize]).unwrap();
        b.flush().unwrap();
    }
    let path = if with_backing {
        let o = CreateOptions {
            cluster_size,
            backing_file: Some("base.qcow2".into()),
            backing_format: Some("qcow2".into()),
            ..Default::default()
        };
        qcow2::create(&top, size, Preallocation::Off, &o).unwrap();
        top.clone()
    } else {
        base.clone()
    };
    let img: Arc<dyn BlockBackend> = Arc::from(image::open(&path, None, false).unwrap());
    const THREADS: u64 = 8;
    let sectors = size / 512;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let img = img.clone();
            s.spawn(move || {
                // Thread t owns sectors with index % THREADS == t; visit them in a scrambled order.
                let mine: Vec<u64> = (0..sectors).filter(|i| i % THREADS == t).collect();
                let n = mine.len() as u64;
                for k in 0..n {
                    let sec = mine[((k * 7919) % n) as usize];
                    img.write_at(sec * 512, &[(t as u8) << 4 | (sec % 16) as u8; 512]).unwrap();
                    if k % 97 == 0 {
                        img.flush().unwrap();
                    }
                    if k % 13 == 0 {
                        let mut b = [0u8; 512];
                        img.read_at(((sec + 1) % sectors) * 512, &mut b).unwrap();
                    }
                }
            });
        }
    });
    img.flush().unwrap();
    let mut all = vec![0u8; size as usize];
    img.read_at(0, &mut all).unwrap();
    for sec in 0..sectors {
        let want = ((sec % THREADS) as u8) << 4 | (sec % 16) as u8;
        let got = &all[(sec * 512) as usize..(sec * 512 + 512) as usize];
        assert!(
            got.iter().all(|&b| b == want),
            "sector {sec} lost its write (cs {cluster_size}, backing {with_backing})"
        );
    }
    drop(img);
    assert_qemu_clean(&path);
}

#[test]
fn concurrent_writers_sharing_clusters() {
    for cs in [4096u64, 65536] {
        stress(cs, false);
        stress(cs, true);
    }
}
