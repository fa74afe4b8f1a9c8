#!/usr/bin/env bash
# Build the virtio-devices fuzz target(s) and run each for a bounded time.
#   scripts/fuzz-virtio.sh [SECONDS_PER_TARGET]   (default 60)
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 unlocks the sanitizer
# flags. By default it builds with cargo-fuzz's coverage instrumentation by
# hand (no install, no ASAN rebuild of every dependency: the code under test
# is safe Rust, panics are what we hunt); FUZZ_ENGINE=cargo-fuzz uses an
# installed cargo-fuzz (with ASAN) instead.
set -euo pipefail
cd "$(dirname "$0")/../crates/virtio-devices/fuzz"
SECS="${1:-60}"
TARGETS=(blk_request transport_regs)
export RUSTC_BOOTSTRAP=1
# Own target dir: the instrumented build must not disturb the workspace one.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"
mkdir -p corpus artifacts

if [ "${FUZZ_ENGINE:-manual}" = cargo-fuzz ]; then
    for t in "${TARGETS[@]}"; do
        cargo fuzz build -O "$t"
        mkdir -p "corpus/$t"
        cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$SECS" -rss_limit_mb=2048
    done
    echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
    exit 0
fi

TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --target "$TRIPLE" --bins
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzz: running $t for ${SECS}s"
    "$CARGO_TARGET_DIR/$TRIPLE/release/$t" "corpus/$t" -artifact_prefix="artifacts/" \
        -max_total_time="$SECS" -rss_limit_mb=2048 -print_final_stats=1
done
echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
