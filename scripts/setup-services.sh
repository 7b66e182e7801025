#!/usr/bin/env bash
# Install the services the test suite runs for real: a single-node Ceph cluster (ceph-mon,
# ceph-osd) with its S3 gateway (radosgw). Debian packages, Ceph 16, ~270 MB, ~40 s.
# The tests start and stop the daemons themselves (tests/services.py); nothing is started here
# and nothing is configured under /etc. Idempotent: does nothing when radosgw is on PATH.
set -euo pipefail
if command -v radosgw >/dev/null 2>&1; then
  echo "Ceph services already installed ($(command -v radosgw))"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
packages=(ceph-mon ceph-osd radosgw)
# Refresh the package lists only when apt does not know the packages yet (fresh image) or an
# install from the cached lists fails (stale lists).
if ! apt-cache show "${packages[@]}" >/dev/null 2>&1; then
  $SUDO apt-get update
fi
if ! $SUDO apt-get install -y --no-install-recommends "${packages[@]}"; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${packages[@]}"
fi
echo "Ceph services installed ($(command -v radosgw))"
