//! Bad input to `tern run`: one line on stderr, non-zero status, nothing left behind.

mod common;

use std::time::Duration;

use common::*;

fn fails_with(args: &[&str], needle: &str) {
    let dir = TempDir::new("bad");
    let sock = dir.join("api.sock");
    let out = run_with_timeout(tern().arg("run").args(args).arg("--api-socket").arg(&sock), Duration::from_secs(30));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: expected '{needle}' in: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(out.stdout.is_empty(), "{args:?}: guest output on error");
    assert!(!sock.exists(), "{args:?}: control socket left behind");
}

#[test]
fn missing_kernel() {
    fails_with(&["--kernel", "/nonexistent/vmlinux"], "/nonexistent/vmlinux");
}

#[test]
fn a_file_that_is_no_kernel() {
    let dir = TempDir::new("nokernel");
    let p = dir.join("notes.txt");
    std::fs::write(&p, "hello, I am not a kernel\n".repeat(100)).unwrap();
    fails_with(&["--kernel", p.to_str().unwrap()], "neither an ELF vmlinux nor a bzImage");
}

#[test]
fn zero_cpus() {
    fails_with(&["--cpus", "0"], "--cpus must be between 1 and");
}

#[test]
fn memory_larger_than_the_host() {
    fails_with(&["--memory", "64T"], "more than this host has");
}

#[test]
fn bad_memory_size() {
    fails_with(&["--memory", "lots"], "invalid size 'lots'");
}

#[test]
fn unknown_cpu_feature() {
    fails_with(&["--cpu-model", "host,+warpdrive"], "unknown CPU feature 'warpdrive'");
}

#[test]
fn unknown_cpu_model() {
    fails_with(&["--cpu-model", "pentium9"], "unknown CPU model 'pentium9'");
}

#[test]
fn missing_initrd() {
    fails_with(&["--initrd", "/nonexistent/initrd.img"], "/nonexistent/initrd.img");
}

#[test]
fn kvm_device_missing() {
    let dir = TempDir::new("nokvm");
    let sock = dir.join("api.sock");
    let out = run_with_timeout(
        tern().arg("run").arg("--api-socket").arg(&sock).env("TERN_KVM_DEVICE", "/nonexistent/kvm"),
        Duration::from_secs(30),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/nonexistent/kvm does not exist"), "{err}");
    assert!(!sock.exists());
}

#[test]
fn kvm_device_not_writable() {
    // A file root cannot open read-write: sysfs refuses writes to read-only
    // attributes whatever the uid.
    let out = run_with_timeout(tern().arg("run").env("TERN_KVM_DEVICE", "/sys/kernel/notes"), Duration::from_secs(30));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot open /sys/kernel/notes read-write"), "{err}");
}

#[test]
fn kvm_device_that_is_not_kvm() {
    let out = run_with_timeout(tern().arg("run").env("TERN_KVM_DEVICE", "/dev/null"), Duration::from_secs(30));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/dev/null is not a KVM device"), "{err}");
}
