#!/usr/bin/env bash
# Install the programs the test suite runs for real (Debian packages):
# - a single-node Ceph cluster (ceph-mon, ceph-osd) with its S3 gateway (radosgw): Ceph 16,
#   ~270 MB, ~40 s. The tests start and stop the daemons themselves (tests/services.py);
#   nothing is started here and nothing is configured under /etc;
# - headless Chromium (chromium, with the DejaVu fonts so text has a face on a bare image), which
#   renders the run report to check that it fits the page (tests/test_report.py).
# Idempotent: installs only what is not on PATH yet.
set -euo pipefail
packages=()
if ! command -v radosgw >/dev/null 2>&1; then
  packages+=(ceph-mon ceph-osd radosgw)
fi
if ! command -v chromium >/dev/null 2>&1; then
  packages+=(chromium fonts-dejavu-core)
fi
if [ "${#packages[@]}" -eq 0 ]; then
  echo "Test services already installed ($(command -v radosgw), $(command -v chromium))"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when apt does not know the packages yet (fresh image) or an
# install from the cached lists fails (stale lists).
if ! apt-cache show "${packages[@]}" >/dev/null 2>&1; then
  $SUDO apt-get update
fi
if ! $SUDO apt-get install -y --no-install-recommends "${packages[@]}"; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${packages[@]}"
fi
echo "Test services installed ($(command -v radosgw), $(command -v chromium))"
