#!/usr/bin/env python3
"""virtio-blk side by side in one run: the same test guest (virtio-drivers,
scenario `blk-bench`, requests kept in flight at queue depth QD) under
`tern run` and under `qemu-system-x86_64 -M microvm` with virtio-blk-device,
both over virtio-mmio on the same raw file with cache=none (O_DIRECT), and
fio on the host reading the same file directly.

Workloads: 4 KiB random reads at QD16 and QD1 (IOPS), 1 MiB sequential reads
and writes at QD16 (bandwidth). Each VMM run issues requests for RUN_MS; the
figure is requests completed between the guest's `blk-bench start` and
`blk-bench done` serial lines, timed by the host's clock (the guest's TSC
figure is printed for comparison). Tern runs with its default engine
(io=auto, io_uring here) and io=threads; QEMU with its default aio=threads,
aio=io_uring and aio=native. Medians of RUNS runs, alternating VMMs.

Needs root (QEMU with KVM), qemu-system-x86, fio. Usage:
  python3 scripts/bench-virtio-blk.py            (TERN=path/to/tern RUNS=3 RUN_MS=2000 DISK_MB=512)
"""
import os, re, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TERN = os.environ.get("TERN", os.path.join(ROOT, "target/release/tern"))
RUNS = int(os.environ.get("RUNS", "3"))
RUN_MS = int(os.environ.get("RUN_MS", "2000"))
DISK_MB = int(os.environ.get("DISK_MB", "512"))

WORKLOADS = [  # (label, mode, block size, queue depth, unit)
    ("4k-randread-qd16", "randread", 4096, 16, "iops"),
    ("4k-randread-qd1", "randread", 4096, 1, "iops"),
    ("1m-seqread-qd16", "seqread", 1 << 20, 16, "MB/s"),
    ("1m-seqwrite-qd16", "seqwrite", 1 << 20, 16, "MB/s"),
]


def guest_args(mode, bs, qd):
    return (f"tern.test=blk-bench tern.virtio=mmio tern.blk_bench={mode} tern.blk_bs={bs} "
            f"tern.blk_qd={qd} tern.blk_ms={RUN_MS}")


def tern_cmd(disk, guest, io):
    def cmd(mode, bs, qd):
        engine = "" if io == "auto" else f",io={io}"
        return [TERN, "run", "--transport", "mmio", "--memory", "128M", "--kernel", guest, "--serial", "stdio",
                "--disk", f"path={disk},format=raw,cache=none{engine}", "--cmdline", guest_args(mode, bs, qd)]
    return cmd


def qemu_cmd(disk, guest, aio):
    def cmd(mode, bs, qd):
        return ["qemu-system-x86_64", "-enable-kvm", "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on",
                "-cpu", "kvm64", "-m", "128", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                "-drive", f"id=d0,file={disk},format=raw,if=none,cache=none,aio={aio}",
                "-device", "virtio-blk-device,drive=d0", "-kernel", guest, "-append", guest_args(mode, bs, qd)]
    return cmd


def run_vm(argv):
    """(ops, bytes, host seconds, guest TSC seconds) of one run."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    start = done = None
    for raw in p.stdout:
        line = raw.decode(errors="replace")
        if "blk-bench start" in line:
            start = time.perf_counter()
        elif "blk-bench done" in line:
            t = time.perf_counter()
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            done = (int(fields["ops"]), int(fields["bytes"]), t - start, int(fields["us"]) / 1e6)
        elif "result=fail" in line:
            print(f"  guest failed: {line.strip()}", file=sys.stderr)
    p.wait()
    if start is None or done is None:
        raise SystemExit(f"no blk-bench result from: {' '.join(argv)}")
    return done


def figure(unit, ops, nbytes, secs):
    return ops / secs if unit == "iops" else nbytes / secs / 1e6


def fio(disk, mode, bs, qd, unit, huge):
    rw = {"randread": "randread", "seqread": "read", "seqwrite": "write", "randwrite": "randwrite"}[mode]
    argv = ["fio", "--name=host", f"--filename={disk}", "--direct=1", f"--rw={rw}", f"--bs={bs}",
            f"--iodepth={qd}", "--ioengine=io_uring", f"--runtime={RUN_MS / 1000}", "--time_based",
            "--output-format=terse", "--terse-version=3"]
    if huge:
        argv.append("--iomem=shmhuge")
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        return None
    f = out.stdout.strip().splitlines()[-1].split(";")
    # terse v3: read KiB/s at 6, read IOPS at 7; write KiB/s at 47, write IOPS at 48.
    kib, iops = (int(f[6]), int(f[7])) if "read" in rw else (int(f[47]), int(f[48]))
    return iops if unit == "iops" else kib * 1024 / 1e6


def main():
    for tool in ("qemu-system-x86_64", "fio"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed: apt-get install {'qemu-system-x86' if 'qemu' in tool else tool}")
    tmp = tempfile.mkdtemp(prefix="tern-blkbench-")
    guest, disk = os.path.join(tmp, "guest.elf"), os.path.join(tmp, "disk.raw")
    subprocess.run([TERN, "run", "--export-guest", guest], check=True)
    with open(disk, "wb") as f:
        for _ in range(DISK_MB):
            f.write(os.urandom(1 << 20))
    # fio gets huge-page buffers, like the guests' THP-backed RAM, when the
    # host can spare 2 MiB pages (restored afterwards).
    nr = "/proc/sys/vm/nr_hugepages"
    old_nr = int(open(nr).read())
    try:
        open(nr, "w").write(str(max(old_nr, 64)))
    except OSError:
        pass
    huge = int(open(nr).read()) >= 64
    vmms = [("tern", tern_cmd(disk, guest, "auto")), ("tern io=threads", tern_cmd(disk, guest, "threads")),
            ("qemu aio=threads", qemu_cmd(disk, guest, "threads")),
            ("qemu aio=io_uring", qemu_cmd(disk, guest, "io_uring")),
            ("qemu aio=native", qemu_cmd(disk, guest, "native"))]
    print(f"virtio-blk over virtio-mmio, raw {DISK_MB} MiB file, cache=none; {RUN_MS} ms per run, "
          f"medians of {RUNS} (host clock; guest TSC in brackets)")
    try:
        for label, mode, bs, qd, unit in WORKLOADS:
            samples = {name: [] for name, _ in vmms}
            tsc = {name: [] for name, _ in vmms}
            for _ in range(RUNS):
                for name, mk in vmms:
                    ops, nbytes, host_s, guest_s = run_vm(mk(mode, bs, qd))
                    samples[name].append(figure(unit, ops, nbytes, host_s))
                    tsc[name].append(figure(unit, ops, nbytes, guest_s))
            native = fio(disk, mode, bs, qd, unit, huge)
            med = {n: statistics.median(v) for n, v in samples.items()}
            qemu_best = max(v for n, v in med.items() if n.startswith("qemu"))
            print(f"\n{label}")
            for name, _ in vmms:
                print(f"  {name:18} {med[name]:10.0f} {unit}  [{statistics.median(tsc[name]):10.0f}]")
            if native is not None:
                print(f"  {'host fio':18} {native:10.0f} {unit}  (io_uring, O_DIRECT{', huge-page buffers' if huge else ''})")
            line = (f"  tern/qemu-default {med['tern'] / med['qemu aio=threads']:.2f}x   "
                    f"tern/qemu-best {med['tern'] / qemu_best:.2f}x")
            if native:
                line += f"   tern/host-native {med['tern'] / native:.0%}"
            print(line)
    finally:
        try:
            open(nr, "w").write(str(old_nr))
        except OSError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
