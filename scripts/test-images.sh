#!/usr/bin/env bash
# Build both images (scripts/build-images.sh: installs podman, makes or reuses the Debian base and the
# wheelhouse) and run the tests that run them (tests/test_images.py, pytest marker `images`).
# Needs root (apt, rootful podman) and the dev environment (scripts/setup.sh dev) for pytest.
#   scripts/test-images.sh              build, then test
#   scripts/test-images.sh -x -k round  extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/build-images.sh
built=$(date +%s)
status=0
.venv/bin/python -m pytest -m images tests/test_images.py "$@" || status=$?
done_at=$(date +%s)
echo "images: build $((built - start))s, tests $((done_at - built))s, total $((done_at - start))s"
exit "$status"
