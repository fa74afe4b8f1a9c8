#!/usr/bin/env bash
# Side-by-side benchmark of `tern img` and qemu-img on the same files.
#   scripts/bench-img.sh            (builds tern in release)
#   TERN=/path/to/tern scripts/bench-img.sh
# Env: BENCH_DIR (scratch dir, default /tmp/tern-bench-img), KEEP=1 keeps files.
set -euo pipefail

cd "$(dirname "$0")/.."
TERN=${TERN:-}
if [[ -z "$TERN" ]]; then
    cargo build --release -p tern >&2
    TERN="${CARGO_TARGET_DIR:-target}/release/tern"
fi
command -v qemu-img >/dev/null || { echo "bench-img: qemu-img is not installed" >&2; exit 1; }
DIR=${BENCH_DIR:-/tmp/tern-bench-img}
rm -rf "$DIR"
mkdir -p "$DIR"
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$DIR"' EXIT

now() { date +%s.%N; }
REPS=${REPS:-3}
# timeit CMD... -> best wall time in seconds over $REPS runs (the host is shared
# and noisy). Dirty pages are synced before each run so neither tool pays for
# the other's writeback; an output file named last is removed first.
timeit() {
    local best="" t0 t1 d i out="${!#}"
    for ((i = 0; i < REPS; i++)); do
        [[ "${REMOVE_OUT:-0}" == 1 ]] && rm -f "$out"
        sync
        t0=$(now)
        "$@" >/dev/null
        t1=$(now)
        d=$(echo "$t1 - $t0" | bc -l)
        if [[ -z "$best" ]] || (($(echo "$d < $best" | bc -l))); then best=$d; fi
    done
    echo "$best"
}

ROWS=()
row() { # name qemu_seconds tern_seconds
    ROWS+=("$(printf '%-34s %10.3f %10.3f %8.2fx' "$1" "$2" "$3" "$(echo "$2 / $3" | bc -l)")")
}

echo "preparing inputs in $DIR ..." >&2
SRC=$DIR/src.raw
# 1 GiB: 512 MiB of random data, then 512 MiB of explicitly written zeroes.
head -c $((512 << 20)) /dev/urandom >"$SRC"
head -c $((512 << 20)) /dev/zero >>"$SRC"
cat "$SRC" >/dev/null

# convert raw -> qcow2
q=$(REMOVE_OUT=1 timeit qemu-img convert -O qcow2 "$SRC" "$DIR/q.qcow2")
t=$(REMOVE_OUT=1 timeit "$TERN" img convert -O qcow2 "$SRC" "$DIR/t.qcow2")
qemu-img compare -q "$SRC" "$DIR/t.qcow2"
row "convert raw->qcow2 1G (half zero)" "$q" "$t"

# convert -c: compressible text in the random half so compression does real work.
TXT=$DIR/text.raw
python3 - "$TXT" <<'PY'
import sys
line = b"".join(b"%08d the quick brown fox jumps over the lazy dog\n" % i for i in range(100000))
with open(sys.argv[1], "wb") as f:
    left = 512 << 20
    while left > 0:
        n = min(left, len(line)); f.write(line[:n]); left -= n
    f.write(b"\0" * (512 << 20))
PY
q=$(REMOVE_OUT=1 timeit qemu-img convert -c -O qcow2 "$TXT" "$DIR/qc.qcow2")
t=$(REMOVE_OUT=1 timeit "$TERN" img convert -c -O qcow2 "$TXT" "$DIR/tc.qcow2")
qemu-img compare -q "$TXT" "$DIR/tc.qcow2"
row "convert -c 1G (text + zero)" "$q" "$t"

# check of a fragmented 4 GiB image: 4 KiB clusters (2048 L2 tables), ~100k of
# them allocated in random order by random 4 KiB writes (~400 MB on disk).
FRAG=$DIR/frag.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 "$FRAG" 4G
"$TERN" img bench -q -w --random -c 100000 -s 4096 -d 4 "$FRAG"
qemu-img check "$FRAG" >/dev/null
q=$(timeit qemu-img check "$FRAG")
t=$(timeit "$TERN" img check "$FRAG")
row "check fragmented 4G" "$q" "$t"

# bench: 4 KiB requests, depth 64, on the converted image (reads hit data and zeroes).
BIMG=$DIR/bench.qcow2
cp "$DIR/q.qcow2" "$BIMG"
q=$(timeit qemu-img bench -c 200000 -s 4096 -d 64 "$BIMG")
t=$(timeit "$TERN" img bench -c 200000 -s 4096 -d 64 "$BIMG")
row "bench read 4K x200000" "$q" "$t"
q=$(timeit qemu-img bench -w -c 100000 -s 4096 -d 64 "$BIMG")
t=$(timeit "$TERN" img bench -w -c 100000 -s 4096 -d 64 "$BIMG")
row "bench write 4K x100000" "$q" "$t"
# qemu-img bench has no random mode; a large prime step scatters the offsets.
STEP=$((1048583 * 4096 % (1 << 30) / 4096 * 4096))
q=$(timeit qemu-img bench -c 100000 -s 4096 -S "$STEP" "$BIMG")
t=$(timeit "$TERN" img bench -c 100000 -s 4096 -S "$STEP" "$BIMG")
row "bench read 4K scattered" "$q" "$t"
q=$(timeit qemu-img bench -w -c 50000 -s 4096 -S "$STEP" "$BIMG")
t=$(timeit "$TERN" img bench -w -c 50000 -s 4096 -S "$STEP" "$BIMG")
row "bench write 4K scattered" "$q" "$t"
qemu-img check -q "$BIMG"

printf '%-34s %10s %10s %9s\n' "benchmark" "qemu-img" "tern" "speedup"
printf '%s\n' "${ROWS[@]}"
