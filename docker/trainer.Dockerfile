# syntax=docker/dockerfile:1
# The intentstream trainer image: `intentstream refresh` (train the sequence model, evaluate,
# promote into INTENTSTREAM_MODEL_DIR) on a CUDA GPU. Falls back to CPU when no GPU is visible.
# Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t intentstream-trainer .
# The PyTorch Linux wheels from the default index are CUDA builds that bundle the CUDA runtime,
# cuDNN and NCCL as pip packages, so a slim Python base is enough: the node only needs the NVIDIA
# driver and container toolkit (the NVIDIA GPU operator on Kubernetes). Pick another CUDA
# version with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (for example).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY models ./models
RUN pip install --no-cache-dir . \
    && python -c "import torch; assert torch.version.cuda, 'expected a CUDA build of torch, got ' + torch.__version__"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="intentstream-trainer" \
      org.opencontainers.image.description="intentstream sequence-model refresh job (CUDA PyTorch)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 intentstream \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin intentstream \
    && mkdir -p /var/lib/intentstream /models \
    && chown 10001:10001 /var/lib/intentstream /models
COPY --from=build /opt/venv /opt/venv
# NVIDIA_* tell the NVIDIA container runtime to mount the driver libraries into the container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    INTENTSTREAM_ENV=production \
    INTENTSTREAM_DATA_DIR=/var/lib/intentstream \
    INTENTSTREAM_MODEL_DIR=/models
USER 10001:10001
WORKDIR /var/lib/intentstream
# A batch job: no server, so no health check.
HEALTHCHECK NONE
ENTRYPOINT ["intentstream"]
CMD ["refresh"]
