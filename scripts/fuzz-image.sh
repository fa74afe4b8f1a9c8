#!/usr/bin/env bash
# Builds and runs the qcow2 metadata fuzz target for a bounded time.
#   scripts/fuzz-image.sh [seconds]   (default 60)
# Works on the stable toolchain: cargo-fuzz needs nightly flags, which
# RUSTC_BOOTSTRAP=1 enables. Installs cargo-fuzz if it is missing.
set -euo pipefail
SECS=${1:-60}
cd "$(dirname "$0")/../crates/image/fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
# Seed corpus: small valid images of several shapes, made by our own engine tests' tool.
CORPUS=corpus/qcow2_metadata
mkdir -p "$CORPUS"
if command -v qemu-img >/dev/null && [[ -z "$(ls -A "$CORPUS")" ]]; then
    tmp=$(mktemp -d)
    qemu-img create -q -f qcow2 "$tmp/a" 1M
    qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=1 "$tmp/b" 64K
    qemu-img create -q -f qcow2 -o compat=0.10 "$tmp/c" 1M
    qemu-img snapshot -c s "$tmp/a"
    for f in a b c; do head -c 200000 "$tmp/$f" >"$CORPUS/seed-$f"; done
    rm -rf "$tmp"
fi
cargo fuzz run qcow2_metadata "$CORPUS" -- -max_total_time="$SECS" -timeout=20 -rss_limit_mb=2048 -max_len=262144
