//! Builds the freestanding guest in `guest/` with a nested `cargo build`
//! for the host target (stable toolchain, no extra targets): panic=abort,
//! static relocation model, our own linker script (see guest/build.rs).
//! The nested build has its own target directory, `tern-test-guest/` next to
//! the outer profile directories (so debug, release and check builds share
//! one guest build), never the outer build's lock.
//!
//! `TERN_TEST_GUEST_ELF=/path/to/elf` skips the nested build and embeds that
//! file instead (for toolchains that cannot link the guest).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let guest_dir = manifest_dir.join("guest");
    let dest = out_dir.join("tern-test-guest.elf");

    println!("cargo:rerun-if-env-changed=TERN_TEST_GUEST_ELF");
    if let Some(prebuilt) = env::var_os("TERN_TEST_GUEST_ELF") {
        println!("cargo:rerun-if-changed={}", PathBuf::from(&prebuilt).display());
        std::fs::copy(&prebuilt, &dest)
            .unwrap_or_else(|e| panic!("TERN_TEST_GUEST_ELF={}: cannot copy: {e}", PathBuf::from(&prebuilt).display()));
        return;
    }
    for file in ["Cargo.toml", "Cargo.lock", "build.rs", "link.ld", "src"] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(file).display());
    }

    // OUT_DIR is <target>/[<triple>/]<profile>/build/<pkg>-<hash>/out.
    let target_dir = match out_dir.ancestors().nth(4) {
        Some(target) if out_dir.ancestors().nth(2).is_some_and(|b| b.ends_with("build")) => {
            target.join("tern-test-guest")
        }
        _ => out_dir.join("guest-target"),
    };
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let rustflags =
        ["-Cpanic=abort", "-Crelocation-model=static", "-Ctarget-feature=+crt-static", "-Cforce-unwind-tables=no"]
            .join("\x1f");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest_dir)
        .args(["build", "--release", "--target", GUEST_TARGET, "--manifest-path"])
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // Nothing of the outer build's configuration may leak into the guest's.
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "CARGO_PROFILE_RELEASE_LTO",
        "CARGO_PROFILE_RELEASE_PANIC",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_PROFILE_RELEASE_OPT_LEVEL",
        "CARGO_PROFILE_RELEASE_CODEGEN_UNITS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run cargo for the test guest: {e}"));
    if !status.success() {
        panic!(
            "building the test guest in {} failed ({status}); set TERN_TEST_GUEST_ELF to a prebuilt guest to skip it",
            guest_dir.display()
        );
    }
    let built = target_dir.join(GUEST_TARGET).join("release").join("tern-test-guest");
    std::fs::copy(&built, &dest).unwrap_or_else(|e| panic!("test guest {}: {e}", built.display()));
}
