//! Helpers shared by the image integration tests: scratch directories, the
//! real `qemu-img`, deterministic data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "tern-image-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs qemu-img; returns (exit code, stdout, stderr).
pub fn qemu_img(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("qemu-img").args(args).output().expect("qemu-img must be installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn qemu_img_ok(args: &[&str]) -> String {
    let (rc, out, err) = qemu_img(args);
    assert_eq!(rc, 0, "qemu-img {args:?} failed: {out}{err}");
    out
}

/// Asserts `qemu-img check` finds no errors and no leaks.
pub fn assert_qemu_clean(p: &Path) {
    let (rc, out, err) = qemu_img(&["check", p.to_str().unwrap()]);
    assert_eq!(rc, 0, "qemu-img check {} failed (rc {rc}):\n{out}{err}", p.display());
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
