#!/usr/bin/env python3
"""VMM benchmarks, Tern side by side with QEMU (-M microvm) in one run.

1. exec -> first serial byte, and exec -> exit, booting the same PVH test
   guest (demo scenario: banner, device scan, ACPI power-off).
2. VMM memory overhead: RSS beyond guest memory, 1 vCPU / 128 MiB, guest idle.
Prints medians and ratios (QEMU time / Tern time: > 1 means Tern is faster).
"""
import os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TERN = os.environ.get("TERN", os.path.join(ROOT, "target/release/tern"))
N = int(os.environ.get("RUNS", "20"))

tmp = tempfile.mkdtemp(prefix="tern-bench-")
guest = os.path.join(tmp, "guest.elf")
subprocess.run([TERN, "run", "--export-guest", guest], check=True)

def tern_cmd(cmdline, mem="128M"):
    return [TERN, "run", "--kernel", guest, "--memory", mem, "--cmdline", cmdline]

def qemu_cmd(cmdline, mem="128"):
    return ["qemu-system-x86_64", "-enable-kvm", "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on",
            "-cpu", "kvm64", "-m", mem, "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-object", f"memory-backend-memfd,id=ram,size={mem}M", "-machine", "memory-backend=ram",
            "-kernel", guest, "-append", cmdline]

def time_boot(cmd):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.read(1)
    t1 = time.perf_counter()
    p.stdout.read()
    p.wait()
    t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t0) * 1000, p.returncode

def bench_boot(name, cmd):
    first, total = [], []
    for _ in range(N):
        f, t, rc = time_boot(cmd)
        first.append(f)
        total.append(t)
    return statistics.median(first), statistics.median(total), rc

def rss_overhead(cmd):
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    # Wait for the guest to be up and idle in its spin loop.
    buf = b""
    while b"TERN tick=3" not in buf:
        chunk = p.stdout.read1(4096)
        if not chunk:
            break
        buf += chunk
    try:
        status = open(f"/proc/{p.pid}/status").read()
        smaps = open(f"/proc/{p.pid}/smaps").read()
    except FileNotFoundError:
        return float("nan"), {"error": "the VMM had already exited"}
    p.kill()
    p.wait()
    f = {l.split(":")[0]: int(l.split()[1]) for l in status.splitlines() if l.split(":")[0] in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}
    # Guest RAM is whatever mapping is exactly the guest's size (Tern: private
    # anonymous memory with THP; QEMU here: a memfd): its resident pages are
    # the guest's, not the VMM's overhead. RssFile is the VMM binary's pages
    # (shared page cache), RssAnon its private heap plus, for Tern, guest RAM.
    f["GuestRss"] = guest_rss(smaps, GUEST_MIB * 1024)
    return (f["VmRSS"] - f["GuestRss"]) / 1024, f

GUEST_MIB = 128

def guest_rss(smaps, size_kib):
    total, in_guest = 0, False
    for line in smaps.splitlines():
        key = line.split(":")[0]
        if key == "Size":
            in_guest = int(line.split()[1]) == size_kib
        elif key == "Rss" and in_guest:
            total += int(line.split()[1])
    return total

have_qemu = subprocess.run(["which", "qemu-system-x86_64"], capture_output=True).returncode == 0
print(f"runs per measurement: {N}")
t_first, t_total, t_rc = bench_boot("tern", tern_cmd("tern.test=demo"))
print(f"tern  exec->first serial byte {t_first:7.2f} ms   exec->exit {t_total:7.2f} ms   (status {t_rc})")
if have_qemu:
    q_first, q_total, q_rc = bench_boot("qemu", qemu_cmd("tern.test=demo"))
    print(f"qemu  exec->first serial byte {q_first:7.2f} ms   exec->exit {q_total:7.2f} ms   (status {q_rc})")
    print(f"ratio (qemu/tern): first byte {q_first / t_first:5.1f}x   exit {q_total / t_total:5.1f}x")
t_rss, tf = rss_overhead(tern_cmd("tern.test=spin"))
print(f"tern  VMM RSS beyond guest memory: {t_rss:6.2f} MiB  {tf}")
if have_qemu:
    q_rss, qf = rss_overhead(qemu_cmd("tern.test=spin"))
    print(f"qemu  VMM RSS beyond guest memory: {q_rss:6.2f} MiB  {qf}")
    print(f"ratio (qemu/tern) memory overhead: {q_rss / t_rss:5.1f}x")
