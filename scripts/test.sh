#!/usr/bin/env bash
# The project's test command: installs what the tests need, builds, then runs
# every test: unit tests, integration tests against real KVM with the project's
# test guests, qemu-img interop, manager end to end, bounded fuzz runs, and last
# the Linux end-to-end boots (minutes each on an emulating host).
#   TERN_SKIP_LINUX=1  leave out the Linux boots
#   TERN_SKIP_FUZZ=1   leave out the fuzz runs
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for p in qemu-img:qemu-utils qemu-system-x86_64:qemu-system-x86 dnsmasq:dnsmasq mkfs.ext4:e2fsprogs \
  ip:iproute2 socat:socat nft:nftables lvcreate:lvm2 losetup:mount; do
  command -v "${p%%:*}" >/dev/null 2>&1 || need_pkgs+=("${p#*:}")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# Debian's qemu-system-x86 can replace a backported qemu-utils: make sure
# qemu-img is still there.
if ! command -v qemu-img >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
fi

export CARGO_TERM_COLOR=never
cargo build --release --workspace --all-targets

threads="${TERN_TEST_THREADS:-2}"
# Everything but the Linux boots.
cargo test --release --workspace -- --test-threads="$threads" --skip linux_vmlinux_ --skip linux_bzimage_

if [ -z "${TERN_SKIP_FUZZ:-}" ]; then
  for f in scripts/fuzz-*.sh; do
    [ -x "$f" ] && "$f" "${TERN_FUZZ_SECONDS:-30}"
  done
fi

if [ -z "${TERN_SKIP_LINUX:-}" ]; then
  # One boot per transport plus the bzImage, all at once (one vCPU each).
  cargo test --release -p tern --test linux_e2e -- --test-threads=3
fi
