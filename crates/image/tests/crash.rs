//! Crash safety: a writer process is SIGKILLed at random moments. Afterwards
//! qemu-img must call the image clean or leaks-only, and every write that a
//! completed flush acknowledged must read back.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use image::Preallocation;
use image::qcow2::{self, CreateOptions};

const SIZE: u64 = 256 << 20;
const REGIONS: u64 = 512;
const REGION: u64 = SIZE / REGIONS;

/// Where write `i` goes and how long it is (deterministic, so the parent knows).
fn write_of(i: u64) -> (u64, usize) {
    let region = (i * 37) % REGIONS;
    let len = 1 + ((i * 7919) % 65536) as usize;
    let inner = (i * 4099) % (REGION - len as u64);
    (region * REGION + inner, len)
}

/// Region `j` is discarded at step `i` when this says so (never an acked region in the same step).
fn discard_of(i: u64) -> Option<u64> {
    if i % 5 == 4 { Some(((i - 3) * 37) % REGIONS) } else { None }
}

/// The writer. Runs only when the parent sets TERN_CRASH_CHILD.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var("TERN_CRASH_CHILD") else { return };
    let img = image::open(Path::new(&path), None, false).unwrap();
    let mut out = std::io::stdout();
    for i in 0.. {
        let (off, len) = write_of(i);
        img.write_at(off, &pattern(i, len)).unwrap();
        if let Some(r) = discard_of(i) {
            img.discard(r * REGION, REGION).unwrap();
        }
        if i % 3 == 2 {
            img.flush().unwrap();
            writeln!(out, "acked {}", i + 1).unwrap();
            out.flush().unwrap();
        }
    }
}

fn one_trial(cluster_size: u64, refcount_bits: u32, kill_after: Duration, trial: u32) {
    let d = TempDir::new("crash");
    let p = d.path("c.qcow2");
    qcow2::create(&p, SIZE, Preallocation::Off, &CreateOptions { cluster_size, refcount_bits, ..Default::default() })
        .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("TERN_CRASH_CHILD", &p)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acked = 0u64;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("acked ") {
                acked = n.trim().parse().unwrap();
            }
        }
        acked
    });
    let t0 = Instant::now();
    while t0.elapsed() < kill_after {
        std::thread::sleep(Duration::from_millis(5));
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let acked = reader.join().unwrap();
    let (rc, out, err) = qemu_img(&["check", s(&p)]);
    assert!(
        rc == 0 || rc == 3,
        "trial {trial} (cs {cluster_size}, rb {refcount_bits}): qemu-img check rc {rc}\n{out}{err}"
    );
    // Every acknowledged write is there unless a later step discarded or overwrote its region.
    let img = image::open(&p, None, true).unwrap();
    let mut last_touch = vec![u64::MAX; REGIONS as usize];
    let horizon = acked + 64;
    for i in 0..horizon {
        let (off, _) = write_of(i);
        let r = (off / REGION) as usize;
        last_touch[r] = i;
        if let Some(dr) = discard_of(i) {
            last_touch[dr as usize] = u64::MAX - 1;
        }
    }
    let mut verified = 0;
    for i in 0..acked {
        let (off, len) = write_of(i);
        let r = (off / REGION) as usize;
        if last_touch[r] != i {
            continue; // later write or discard of the same region
        }
        let mut buf = vec![0u8; len];
        img.read_at(off, &mut buf).unwrap();
        assert!(buf == pattern(i, len), "trial {trial}: acknowledged write {i} of {acked} is missing");
        verified += 1;
    }
    eprintln!(
        "trial {trial}: cs {cluster_size} rb {refcount_bits}: {acked} writes acked, {verified} verified, check rc {rc}"
    );
}

#[test]
fn sigkill_leaves_consistent_image() {
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for trial in 0..12u32 {
        let (cs, rb) = match trial % 3 {
            0 => (65536, 16),
            1 => (4096, 16),
            _ => (512, 64),
        };
        let ms = 30 + rnd() % 600;
        one_trial(cs, rb, Duration::from_millis(ms), trial);
    }
}
