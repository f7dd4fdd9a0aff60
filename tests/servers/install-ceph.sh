#!/usr/bin/env bash
# Install the Debian packages needed to run a throw-away Ceph radosgw for the
# test suite (see tests/servers/radosgw.py). Idempotent: a fast no-op when the
# binaries are already installed. Needs root (or sudo) on Debian 12.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# ceph-common brings ceph, monmaptool and ceph-authtool; radosgw brings
# radosgw-admin as well.
packages=(ceph-mon ceph-osd radosgw ceph-common)
binaries=(ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool ceph-authtool)

missing=0
for bin in "${binaries[@]}"; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        missing=1
        break
    fi
done
if [ "$missing" -eq 0 ]; then
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo -n)
fi

echo "install-ceph.sh: installing ${packages[*]}" >&2
"${sudo[@]}" apt-get update -q </dev/null
"${sudo[@]}" apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${packages[@]}" </dev/null

for bin in "${binaries[@]}"; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "install-ceph.sh: $bin still missing after install" >&2
        exit 1
    fi
done
