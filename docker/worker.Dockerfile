# syntax=docker/dockerfile:1
# The intentstream worker image: Faust worker, simulator, topic init and the CPU refresh job.
# Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t intentstream-worker .
# CPU-only PyTorch: the workers score on CPU, and the CUDA wheels would add gigabytes.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first and from the CPU index, so the project's `torch` requirement is already met
# and pip never reaches for the default (CUDA) wheel.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY models ./models
RUN pip install --no-cache-dir . \
    && python -c "import torch; assert not torch.cuda.is_available() and '+cpu' in torch.__version__, torch.__version__"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="intentstream-worker" \
      org.opencontainers.image.description="Real-time shopper-intent engine: Faust worker (CPU PyTorch)" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid so Kubernetes can check runAsNonRoot and fsGroup can own the state volume.
RUN groupadd --system --gid 10001 intentstream \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin intentstream \
    && mkdir -p /var/lib/intentstream /models \
    && chown 10001:10001 /var/lib/intentstream /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    INTENTSTREAM_ENV=production \
    INTENTSTREAM_DATA_DIR=/var/lib/intentstream \
    INTENTSTREAM_MODEL_DIR=/models \
    INTENTSTREAM_STORE=rocksdb:// \
    INTENTSTREAM_WEB_PORT=6066 \
    INTENTSTREAM_WEB_HOST=0.0.0.0
USER 10001:10001
WORKDIR /var/lib/intentstream
VOLUME ["/var/lib/intentstream"]
EXPOSE 6066
# Liveness only (the process serves HTTP); readiness (table recovery done) is /readyz, used by Kubernetes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('INTENTSTREAM_WEB_PORT', '6066'), timeout=4)"]
ENTRYPOINT ["intentstream"]
CMD ["worker"]
