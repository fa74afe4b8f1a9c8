#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs every
# test (unit, integration against real KVM, image interop against qemu-img,
# end-to-end Linux boots). Set TERN_SKIP_SLOW=1 to leave out the Linux boots.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for p in qemu-img:qemu-utils dnsmasq:dnsmasq mkfs.ext4:e2fsprogs ip:iproute2 socat:socat nft:nftables lvcreate:lvm2 losetup:mount; do
  command -v "${p%%:*}" >/dev/null 2>&1 || need_pkgs+=("${p#*:}")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing: ${need_pkgs[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

cargo build --release --workspace --all-targets
cargo test --release --workspace -- --test-threads="${TERN_TEST_THREADS:-2}"
