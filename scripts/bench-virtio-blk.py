#!/usr/bin/env python3
"""virtio-blk (cache=none), Tern vs QEMU microvm side by side in one run: the test guest's
virtio-drivers stack reads N sectors in 4 KiB synchronous requests (queue
depth 1) from a raw file over virtio-mmio. The per-request time is
(time(N) - time(small)) / requests, so boot cost cancels out. Also reports
the host reading the same file directly in 4 KiB O_DIRECT preads."""
import os, statistics, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TERN = os.environ.get("TERN", os.path.join(ROOT, "target/release/tern"))
RUNS = int(os.environ.get("RUNS", "5"))
SECTORS = int(os.environ.get("SECTORS", "65536"))  # 32 MiB

tmp = tempfile.mkdtemp(prefix="tern-blkbench-")
guest = os.path.join(tmp, "guest.elf")
disk = os.path.join(tmp, "disk.raw")
subprocess.run([TERN, "run", "--export-guest", guest], check=True)
with open(disk, "wb") as f:
    f.write(os.urandom(SECTORS * 512))

def tern(n):
    return [TERN, "run", "--transport", "mmio", "--kernel", guest, "--serial", "none",
            "--disk", f"path={disk},format=raw,cache=none", "--cmdline",
            f"tern.test=virtio-blk tern.virtio=mmio tern.blk_mode=read tern.blk_sectors={n}"]

def qemu(n):
    return ["qemu-system-x86_64", "-enable-kvm", "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on",
            "-cpu", "kvm64", "-m", "128", "-nographic", "-no-reboot", "-nodefaults", "-serial", "null",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-drive", f"id=d0,file={disk},format=raw,if=none,cache=none,aio=threads",
            "-device", "virtio-blk-device,drive=d0", "-kernel", guest, "-append",
            f"tern.test=virtio-blk tern.virtio=mmio tern.blk_mode=read tern.blk_sectors={n}"]

def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t

def per_request(mk):
    small = statistics.median(timed(mk(8)) for _ in range(RUNS))
    big = statistics.median(timed(mk(SECTORS)) for _ in range(RUNS))
    reqs = SECTORS // 8
    return (big - small) / reqs

def host_native():
    import mmap
    fd = os.open(disk, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)  # page aligned, as O_DIRECT needs
    t = time.perf_counter()
    for off in range(0, SECTORS * 512, 4096):
        os.preadv(fd, [buf], off)
    os.close(fd)
    return (time.perf_counter() - t) / (SECTORS // 8)

t = per_request(tern)
q = per_request(qemu)
h = host_native()
print(f"4 KiB QD1 reads over virtio-mmio, {SECTORS // 8} requests, medians of {RUNS}")
print(f"tern  {t * 1e6:8.1f} us/request  {1 / t:9.0f} IOPS")
print(f"qemu  {q * 1e6:8.1f} us/request  {1 / q:9.0f} IOPS")
print(f"host  {h * 1e6:8.1f} us/request  {1 / h:9.0f} IOPS (O_DIRECT pread)")
print(f"ratio tern/qemu IOPS: {q / t:.2f}x   tern/host-native: {h / t:.2f}x")
