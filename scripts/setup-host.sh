#!/usr/bin/env bash
# Installs what the lab needs on a Debian 12 host (as root): QEMU, CRIU, busybox, cpio, ...
# (debootstrap and qemu-utils build and overlay the Debian 13 profile's root file system; the
# -dev packages, compilers and dpkg-dev build the guests' pinned CRIU, see crates/lab/src/criu)
# Sourced by scripts/demo and scripts/test; safe to run again (installs only what is missing).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "overboot: run this as root (it installs Debian packages and boots QEMU guests)" >&2
  exit 3
fi
if ! command -v cargo >/dev/null 2>&1; then
  for c in "$HOME/.cargo/bin/cargo" /usr/local/cargo/bin/cargo; do
    if [ -x "$c" ]; then export PATH="$(dirname "$c"):$PATH"; break; fi
  done
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "overboot: a Rust toolchain (1.85 or newer, e.g. from rustup) is needed on PATH" >&2
  exit 1
fi

packages=(qemu-system-x86 criu busybox-static cpio xz-utils zstd e2fsprogs kmod
          redis-server redis-tools nftables iproute2 gcc gcc-12 make patch tar
          libelf1 zlib1g debootstrap qemu-utils
          build-essential dpkg-dev libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev
          protobuf-compiler libnl-3-dev libnl-route-3-dev libnet1-dev libbsd-dev libcap-dev
          libgnutls28-dev libnftables-dev uuid-dev pkg-config python3-protobuf)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "overboot: installing ${missing[*]}" >&2
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
# A redis-server package may start a host service; the lab only copies its binary into guests.
export OVERBOOT_LAB_CACHE="${OVERBOOT_LAB_CACHE:-/var/cache/overboot-lab}"
