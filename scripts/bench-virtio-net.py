#!/usr/bin/env python3
"""virtio-net throughput over a TAP, Tern vs QEMU microvm side by side in one run.

The same test guest (scenario net-bench: virtio-drivers' VirtIONetRaw with a
full 256-entry ring in flight, polling at CPL3) runs under `tern run` and
under `qemu-system-x86_64 -M microvm` with virtio-net-device, alternately,
RUNS times each, in both directions:

  tx (guest->host): the guest ARPs for 10.0.2.2 and sends FRAMES UDP frames
     of LEN bytes to it; nftables counts and drops them in the namespace.
  rx (host->guest): the guest posts its rx buffers and prints a ready line;
     this script then floods UDP frames to the guest from a socket in the
     namespace (backing off while the TAP queue overflows) until the guest
     has counted FRAMES or stopped.

Figures: the guest's own (TSC between first and last frame) and the host's
(TAP counters sampled every 2 ms); guest-wait is the share of that time the
guest polled an empty rx ring / a full tx ring (high: the VMM side limits).
Prints medians and tern/qemu ratios (> 1: Tern is faster). A run fails when
the guest says so, or when the host did not count every tx frame.

Run as root; TERN points at a release `tern` (default target/release/tern).
Env: RUNS (5), FRAMES (200000), LEN (1514), VMMS (tern,qemu), DIRS (tx,rx),
TRANSPORTS (mmio; "mmio,pci" adds Tern's virtio-pci and QEMU microvm,pcie=on
with virtio-net-pci; use FRAMES=20000 there, it is ~10x slower), TERN_B (a
second tern binary run alongside, to A/B a change), PERF (perf events, e.g.
kvm:kvm_mmio,sched:sched_switch,syscalls:sys_enter_writev: each VM runs under
`perf stat` and the counts per frame are printed). The namespace is removed
at the end, also on failure or SIGTERM.
"""
import ctypes, json, os, re, signal, socket, statistics, struct, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TERN = os.environ.get("TERN", os.path.join(ROOT, "target/release/tern"))
# A second Tern build to compare against in the same run (A/B of a change).
TERN_B = os.environ.get("TERN_B")
RUNS = int(os.environ.get("RUNS", "5"))
FRAMES = int(os.environ.get("FRAMES", "200000"))
LEN = int(os.environ.get("LEN", "1514"))
TRANSPORTS = os.environ.get("TRANSPORTS", "mmio").split(",")
VMMS = os.environ.get("VMMS", "tern,qemu").split(",")
DIRS = os.environ.get("DIRS", "tx,rx").split(",")
PERF = os.environ.get("PERF", "")
NS = f"tern-netbench-{os.getpid()}"
TAP = "tap0"
HOST_IP, GUEST_IP, PORT = "10.0.2.2", "10.0.2.15", 5201
GUEST_MAC = "52:54:00:12:34:56"
MAGIC = b"TERNBNCH"
VM_TIMEOUT = 300
CLONE_NEWNET = 0x40000000


def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"bench-virtio-net: `{' '.join(args)}` failed: {r.stderr.strip()}")
    return r.stdout


def enter_namespace():
    """Create the namespace and move this process (and so every thread and
    child started from now on) into it."""
    sh("ip", "netns", "add", NS)
    fd = os.open(f"/run/netns/{NS}", os.O_RDONLY)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise SystemExit(f"bench-virtio-net: setns into {NS}: {os.strerror(ctypes.get_errno())}")
    os.close(fd)
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr")
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP)
    sh("ip", "link", "set", TAP, "up")
    sh("sysctl", "-qw", f"net.ipv6.conf.{TAP}.disable_ipv6=1")
    # Count and drop the guest's UDP frames (no socket, no ICMP unreachable).
    sh("nft", "add", "table", "ip", "netbench")
    sh("nft", "add", "chain", "ip", "netbench", "in", "{ type filter hook input priority 0; policy accept; }")
    sh("nft", "add", "rule", "ip", "netbench", "in", "udp", "dport", str(PORT), "counter", "drop")


def nft_count():
    data = json.loads(sh("nft", "-j", "list", "table", "ip", "netbench"))
    for item in data["nftables"]:
        for e in item.get("rule", {}).get("expr", []):
            if "counter" in e:
                return e["counter"]["packets"]
    return 0


NET_DEV_FIELDS = {"rx_bytes": 0, "rx_packets": 1, "rx_dropped": 3, "tx_bytes": 8, "tx_packets": 9, "tx_dropped": 11}


def tap_stat(name):
    """A TAP counter from /proc/thread-self/net/dev (this thread's namespace;
    /sys/class/net shows the namespace sysfs was mounted in)."""
    with open("/proc/thread-self/net/dev") as f:
        for line in f:
            dev, _, counters = line.partition(":")
            if dev.strip() == TAP:
                return int(counters.split()[NET_DEV_FIELDS[name]])
    raise SystemExit(f"bench-virtio-net: {TAP} is missing from /proc/net/dev")


class Sampler(threading.Thread):
    """Samples one TAP counter every 2 ms; gives the host's view of the rate."""

    def __init__(self, stat):
        super().__init__(daemon=True)
        self.stat, self.samples, self.stop = stat, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.samples.append((time.perf_counter(), tap_stat(self.stat)))
            time.sleep(0.002)

    def rate(self, skip=0):
        """(frames, seconds) from the first sample past base+skip to the first at the final count."""
        if len(self.samples) < 2:
            return 0, 0.0
        base, final = self.samples[0][1] + skip, self.samples[-1][1]
        t0 = next((t for t, c in self.samples if c > base), None)
        c0 = next((c for t, c in self.samples if c > base), None)
        t1 = next((t for t, c in self.samples if c >= final), None)
        if t0 is None or t1 is None or t1 <= t0:
            return final - base, 0.0
        return final - c0, t1 - t0


class Flood(threading.Thread):
    """Floods UDP frames to the guest; sleeps a little whenever the TAP's
    queue overflowed (counted as its tx_dropped), so it keeps the queue full
    without taking a whole core from the VMM."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop, self.sent, self.backoffs = threading.Event(), 0, 0

    def run(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.bind((HOST_IP, PORT))
        payload = bytearray(MAGIC + bytes(8) + bytes(i & 0xFF for i in range(max(0, LEN - 42 - 16))))
        payload = payload[: max(len(MAGIC), LEN - 42)]
        dst = (GUEST_IP, PORT)
        dropped = tap_stat("tx_dropped")
        seq = 0
        while not self.stop.is_set():
            for _ in range(32):
                if len(payload) >= 16:
                    struct.pack_into(">Q", payload, 8, seq)
                try:
                    s.sendto(payload, dst)
                    seq += 1
                except OSError:  # ENOBUFS: queue full
                    break
            now = tap_stat("tx_dropped")
            if now != dropped:
                dropped = now
                self.backoffs += 1
                time.sleep(0.001)
        self.sent = seq


def vm_cmd(vmm, transport, cmdline, guest):
    if vmm in ("tern", "tern-b"):
        return [TERN if vmm == "tern" else TERN_B, "run", "--transport", transport, "--kernel", guest, "--memory", "128M",
                "--net", f"tap={TAP},mac={GUEST_MAC}", "--cmdline", cmdline]
    pci = transport == "pci"
    machine = "microvm,x-option-roms=off,isa-serial=on,rtc=on" + (",pcie=on" if pci else "")
    return ["qemu-system-x86_64", "-enable-kvm", "-M", machine,
            "-cpu", "kvm64", "-m", "128", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
            "-device", f"virtio-net-{'pci' if pci else 'device'},netdev=n0,mac={GUEST_MAC}",
            "-kernel", guest, "-append", cmdline]


def metrics(text):
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"TERN metric=(\S+) value=([0-9.]+)", text)}


def run_once(vmm, transport, direction, guest):
    cmdline = (f"tern.test=net-bench tern.virtio={transport} tern.net_dir={direction} "
               f"tern.net_frames={FRAMES} tern.net_len={LEN} tern.net_ip={GUEST_IP} tern.net_peer={HOST_IP} "
               f"tern.net_port={PORT} tern.net_timeout_ms=10000")
    before_nft = nft_count()
    sampler = Sampler("rx_packets" if direction == "tx" else "tx_packets")
    flood = Flood()
    cmd = vm_cmd(vmm, transport, cmdline, guest)
    perf_out = None
    if PERF:
        perf_out = tempfile.mktemp(prefix="tern-netbench-perf-")
        cmd = ["perf", "stat", "-x", ",", "-o", perf_out, "-e", PERF, "--"] + cmd
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = []
    killer = threading.Timer(VM_TIMEOUT, p.kill)
    killer.start()
    sampler.start()
    try:
        for raw in p.stdout:
            line = raw.decode(errors="replace")
            out.append(line)
            if "TERN net-bench ready" in line and direction == "rx":
                # The guest's MAC is fixed; no ARP needed (and it answers none).
                sh("ip", "neigh", "replace", GUEST_IP, "lladdr", GUEST_MAC, "dev", TAP, "nud", "permanent")
                flood.start()
            if "result=" in line:
                break
        p.stdout.read()
        p.wait()
    finally:
        killer.cancel()
        flood.stop.set()
        sampler.stop.set()
        if p.poll() is None:
            p.kill()
            p.wait()
    if flood.is_alive() or flood.ident:
        flood.join()
    sampler.join()
    text = "".join(out)
    m = metrics(text)
    ok = "result=pass" in text
    result = re.search(r"TERN test=\S+ result=(.*)", text)
    if not ok:
        sys.stderr.write(f"--- {vmm} {transport} {direction}: no pass; output:\n{text[-3000:]}\n")
    d = direction
    r = {"ok": ok, "result": result.group(1).strip() if result else f"no result line (exit status {p.returncode})", "fps": m.get(f"net-{d}-fps", 0.0), "mbps": m.get(f"net-{d}-mbps", 0.0),
         "frames": m.get(f"net-{d}-frames", 0.0), "wait": m.get(f"net-{d}-guest-wait", 0.0)}
    if direction == "tx":
        frames, secs = sampler.rate(skip=1)  # the ARP request comes first
        r["host_arrived"] = nft_count() - before_nft
        if ok and r["host_arrived"] != FRAMES:
            r["ok"] = False
            r["result"] = f"the guest completed {FRAMES} frames but the host counted {r['host_arrived']}"
    else:
        frames, secs = sampler.rate()
        r["host_sent"] = flood.sent
        r["backoffs"] = flood.backoffs
    r["host_fps"] = frames / secs if secs > 0 else 0.0
    if perf_out:
        per = max(r["frames"], 1)
        with open(perf_out) as f:
            counts = [l.split(",") for l in f if l.count(",") >= 2 and not l.startswith("#")]
        os.unlink(perf_out)
        r["perf"] = "  ".join(f"{c[2].split(':')[-1]}={float(c[0]) / per:.3f}" for c in counts
                              if c[0].replace(".", "").isdigit())
    r["host_mbps"] = r["host_fps"] * LEN * 8 / 1e6
    return r


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below
    if os.geteuid() != 0:
        raise SystemExit("bench-virtio-net: run as root (it creates a network namespace and a TAP)")
    if not os.access(TERN, os.X_OK):
        raise SystemExit(f"bench-virtio-net: no tern binary at {TERN}; build one with `cargo build --release -p tern` "
                         "and point TERN at it")
    if not 60 <= LEN <= 1514:
        raise SystemExit(f"bench-virtio-net: LEN={LEN} is outside 60..1514 (Ethernet frame bytes without FCS)")
    tmp = tempfile.mkdtemp(prefix="tern-netbench-")
    guest = os.path.join(tmp, "guest.elf")
    subprocess.run([TERN, "run", "--export-guest", guest], check=True)
    configs = [(vmm, t) for t in TRANSPORTS for vmm in VMMS + (["tern-b"] if TERN_B else [])]
    results = {}
    load0 = f"{os.getloadavg()[0]:.2f}"
    try:
        enter_namespace()
        for direction in DIRS:
            for i in range(RUNS):
                for vmm, transport in configs:  # alternate, so drifts hit both alike
                    r = run_once(vmm, transport, direction, guest)
                    results.setdefault((vmm, transport, direction), []).append(r)
                    extra = (f"host-arrived={r['host_arrived']}" if direction == "tx"
                             else f"host-sent={r['host_sent']} backoffs={r['backoffs']}")
                    print(f"run {i + 1} {direction} {vmm:6} {transport:4} {'pass' if r['ok'] else 'FAIL'}  "
                          f"guest {r['fps']:9.0f} frames/s {r['mbps']:8.1f} Mbit/s  host {r['host_fps']:9.0f} "
                          f"frames/s  frames={r['frames']:.0f} guest-wait={r['wait']:.0f}% {extra}", flush=True)
                    if not r["ok"]:
                        print(f"      {vmm} failed: {r['result']}", flush=True)
                    if r.get("perf"):
                        print(f"      per frame: {r['perf']}", flush=True)
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    print(f"\nvirtio-net over TAP, {LEN}-byte frames, {FRAMES} per run, medians of {RUNS} (guest TSC figures; "
          f"host = TAP counters); load average before {load0}, after {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    med = {}
    for (vmm, transport, direction), rs in results.items():
        good = [r for r in rs if r["ok"]] or rs
        med[(vmm, transport, direction)] = {k: statistics.median(r[k] for r in good) for k in
                                            ("fps", "mbps", "host_fps", "host_mbps", "wait")}
        m = med[(vmm, transport, direction)]
        print(f"{direction}  {vmm:6} {transport:4}  {m['fps']:9.0f} frames/s  {m['mbps']:8.1f} Mbit/s   host "
              f"{m['host_fps']:9.0f} frames/s {m['host_mbps']:8.1f} Mbit/s   guest-wait {m['wait']:3.0f}%   passed {sum(r['ok'] for r in rs)}/{len(rs)}")
    for direction in DIRS:
        for transport in TRANSPORTS:
            q = med.get(("qemu", transport, direction))
            for name in ("tern", "tern-b"):
                t = med.get((name, transport, direction))
                if q and t and q["fps"] > 0:
                    print(f"ratio {name}/qemu {direction} {transport}: {t['fps'] / q['fps']:.2f}x "
                          f"(host view {t['host_fps'] / q['host_fps'] if q['host_fps'] else float('nan'):.2f}x)")
    failed = sum(not r["ok"] for rs in results.values() for r in rs)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
