#!/usr/bin/env bash
# Manager benchmarks through a real `tern daemon` with test-guest VMs:
#   1. API start request -> the guest's first serial byte relayed by the daemon
#   2. `list` latency with N VMs running (REST call and the `tern list` CLI)
#   3. N test-guest VMs (64 MiB, `tern.test=hlt`) started concurrently
#   4. daemon RSS with N VMs running
#   scripts/bench-manager.sh            (builds tern in release)
#   TERN=/path/to/tern GUEST=/path/to/tern-test-guest.elf scripts/bench-manager.sh
# Figures on the 2-core PVM dev host (release build, load average ~15 from other builds):
#   start request -> first serial byte via daemon: median 37 ms (direct `tern run`: 24 ms)
#   100 VMs started concurrently: 1.4-1.8 s; `list` with 100 running: 1.2 ms REST, 6.5 ms CLI
#   daemon RSS with 100 VMs: 13.5 MiB
# Env: N (VM count, default 100), REPS (first-byte repetitions, default 10),
#      BENCH_DIR (scratch dir, default /tmp/tern-bench-mgr).
set -euo pipefail

cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
TERN=${TERN:-}
if [[ -z "$TERN" ]]; then
    cargo build --release -p tern >&2
    TERN="$TARGET/release/tern"
fi
GUEST=${GUEST:-$(ls -t "$TARGET"/release/build/test-guest-*/out/tern-test-guest.elf 2>/dev/null | head -1 || true)}
[[ -f "$GUEST" ]] || { echo "bench-manager: test guest ELF not found; set GUEST=" >&2; exit 1; }
N=${N:-100}
REPS=${REPS:-10}
DIR=${BENCH_DIR:-/tmp/tern-bench-mgr}
SOCK="$DIR/tern.sock"

cleanup() {
    [[ -n "${DPID:-}" ]] && kill -9 "$DPID" 2>/dev/null || true
    # Kill every VM the daemon started: each shim leads its own session, so
    # its process group holds the shim and its VMM.
    for f in "$DIR"/state/vms/*/shim.json; do
        [[ -f "$f" ]] || continue
        pid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$f")
        kill -9 -- "-$pid" 2>/dev/null || true
    done
    rm -rf "$DIR"
}
rm -rf "$DIR"
mkdir -p "$DIR"
trap cleanup EXIT
cp "$GUEST" "$DIR/guest.elf"

"$TERN" daemon --state-dir "$DIR/state" --socket "$SOCK" >"$DIR/daemon.log" 2>&1 &
DPID=$!
for _ in $(seq 100); do [[ -S "$SOCK" ]] && break; sleep 0.05; done

python3 - "$SOCK" "$DIR" "$N" "$REPS" "$DPID" "$TERN" <<'PY'
import http.client, json, os, socket, statistics, subprocess, sys, threading, time

sock, d, n, reps, dpid, tern = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]

class UnixConn(http.client.HTTPConnection):
    def __init__(self):
        super().__init__("tern")
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sock)

def call(method, path, body=None):
    c = UnixConn()
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    v = json.loads(data) if data else None
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {v}")
    return v

def define(name, scenario):
    toml = (f'name = "{name}"\nmemory = "64M"\n[boot]\nkernel = "{d}/guest.elf"\n'
            f'cmdline = "tern.test={scenario}"\n')
    call("POST", "/1.0/vms", {"toml": toml})

def start(name):
    op = call("PUT", f"/1.0/vms/{name}/state", {"action": "start"})
    done = call("GET", f"/1.0/operations/{op['id']}?wait=120")
    if done["status"] != "success":
        raise RuntimeError(f"start {name}: {done.get('error')}")

def destroy(name):
    op = call("PUT", f"/1.0/vms/{name}/state", {"action": "destroy"})
    call("GET", f"/1.0/operations/{op['id']}?wait=60")

ms = lambda s: f"{s * 1000:.1f} ms"

# 1. start request -> first byte of guest serial output in the daemon's console log
define("fb", "hlt")
log = f"{d}/state/vms/fb/console.log"
first, started = [], []
for _ in range(reps):
    size0 = os.path.getsize(log) if os.path.exists(log) else 0
    t0 = time.perf_counter()
    op = call("PUT", "/1.0/vms/fb/state", {"action": "start"})
    while not (os.path.exists(log) and os.path.getsize(log) > size0):
        time.sleep(0.0002)
    first.append(time.perf_counter() - t0)
    call("GET", f"/1.0/operations/{op['id']}?wait=60")
    started.append(time.perf_counter() - t0)
    destroy("fb")
print(f"start request -> first serial byte via daemon: median {ms(statistics.median(first))} "
      f"(min {ms(min(first))}, max {ms(max(first))}, {reps} runs)")
print(f"start request -> start operation complete:     median {ms(statistics.median(started))}")

# 3. N VMs started concurrently
names = [f"vm{i:03}" for i in range(n)]
for nm in names:
    define(nm, "hlt")
errors = []
def worker(nm):
    try:
        start(nm)
    except Exception as e:
        errors.append(str(e))
t0 = time.perf_counter()
threads = [threading.Thread(target=worker, args=(nm,)) for nm in names]
for t in threads: t.start()
for t in threads: t.join()
elapsed = time.perf_counter() - t0
running = sum(1 for v in call("GET", "/1.0/vms") if v["state"] == "running")
print(f"{n} VMs (64 MiB, test guest) started concurrently: {elapsed:.2f} s, {running} running, {len(errors)} errors")
for e in errors[:3]:
    print("  error:", e)

# 2. list latency with N VMs
lat = []
for _ in range(50):
    t0 = time.perf_counter(); call("GET", "/1.0/vms"); lat.append(time.perf_counter() - t0)
cli = []
for _ in range(10):
    t0 = time.perf_counter()
    subprocess.run([tern, "list", "--socket", sock], stdout=subprocess.DEVNULL, check=True)
    cli.append(time.perf_counter() - t0)
print(f"list with {running} VMs running: REST median {ms(statistics.median(lat))} (p90 {ms(sorted(lat)[44])}), "
      f"`tern list` median {ms(statistics.median(cli))}")

# 4. daemon RSS
rss = int([l for l in open(f"/proc/{dpid}/status") if l.startswith("VmRSS")][0].split()[1])
threads_n = len(os.listdir(f"/proc/{dpid}/task"))
vmm_rss = [v["rss_kib"] or 0 for v in call("GET", "/1.0/vms?details=1") if v["state"] == "running"]
print(f"daemon RSS with {running} VMs: {rss / 1024:.1f} MiB ({threads_n} threads); "
      f"VMM RSS median {statistics.median(vmm_rss) / 1024:.1f} MiB per VM")

t0 = time.perf_counter()
threads = [threading.Thread(target=destroy, args=(nm,)) for nm in names]
for t in threads: t.start()
for t in threads: t.join()
print(f"{n} VMs destroyed concurrently: {time.perf_counter() - t0:.2f} s")
PY
