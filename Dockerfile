# syntax=docker/dockerfile:1
# The hagmoe inference server: REST on 8000 (/metrics there too), gRPC on 50051, the bundled
# model inside (it ships in the package, hagmoe/assets/).
#
#   docker build -t hagmoe:0.1.0-cpu .                            # CPU (default)
#   docker build --build-arg VARIANT=cuda -t hagmoe:0.1.0-cuda .  # CUDA
#   docker run --rm -p 8000:8000 -p 50051:50051 hagmoe:0.1.0-cpu
#   docker run --rm --gpus all -p 8000:8000 hagmoe:0.1.0-cuda
#
# VARIANT picks the stage below that sets the torch wheel index and the device:
#   cpu   torch's CPU wheels (no CUDA libraries: a much smaller image), HAGMOE_DEVICE=cpu
#   cuda  PyPI's torch wheels, which carry the CUDA runtime, cuDNN and NCCL as pip packages,
#         HAGMOE_DEVICE=cuda; the host needs only the NVIDIA driver and the container toolkit.
# TORCH_INDEX_URL overrides the index (e.g. https://download.pytorch.org/whl/cu130).
#
# The install steps are those of `make install` (pip, then torch==2.13.0, then the project);
# tests/deployment/test_dockerfile.py keeps the two in step.
#
# Runs as uid 10001 and works with a read-only root filesystem: everything it writes goes to
# /tmp and /home/hagmoe (HOME and the torch, Triton, CUDA and Hugging Face caches), both
# declared VOLUMEs, so `docker run --read-only` and Kubernetes emptyDirs both work.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

FROM base AS variant-cpu
ENV HAGMOE_TORCH_INDEX=https://download.pytorch.org/whl/cpu \
    HAGMOE_DEVICE=cpu
# A C compiler: hagmoe's CPU kernels (hagmoe/kernels) are built for the host's CPU at start-up.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

FROM base AS variant-cuda
ENV HAGMOE_TORCH_INDEX=https://pypi.org/simple \
    HAGMOE_DEVICE=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# ---- build: a virtualenv in /opt/venv holding torch and hagmoe (with its bundled model) ----
# hadolint ignore=DL3006
FROM variant-${VARIANT} AS builder
ARG TORCH_INDEX_URL=""
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# torch in its own layer: it is most of the image and changes least.
# hadolint ignore=DL3013
RUN python -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --quiet --no-cache-dir --upgrade pip \
    && /opt/venv/bin/python -m pip install --quiet --no-cache-dir \
       --index-url "${TORCH_INDEX_URL:-$HAGMOE_TORCH_INDEX}" torch==2.13.0
COPY pyproject.toml README.md ./
COPY server ./server
COPY hagmoe ./hagmoe
# The project; then fail the build, not the first `docker run`, when the installed package
# (-I: not the sources in /src) lacks the bundled model.
RUN python -m pip install --quiet --no-cache-dir . \
    && python -I -c "from server.settings import BUNDLED_MODEL as m; import sys; \
missing = [f for f in ('config.json', 'model.safetensors', 'tokenizer.json') if not (m / f).is_file()]; \
sys.exit(f'bundled model incomplete in {m}: missing {missing}' if missing else 0)"

# ---- runtime ----
# hadolint ignore=DL3006
FROM variant-${VARIANT} AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="hagmoe" \
      org.opencontainers.image.description="HAG-MoE inference server (REST, gRPC, Prometheus metrics)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.hagmoe.variant="${VARIANT}"

# tini as PID 1 forwards SIGTERM to the server (which then drains) and reaps children.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 hagmoe \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/hagmoe --create-home \
       --shell /usr/sbin/nologin hagmoe

COPY --from=builder /opt/venv /opt/venv
COPY deployment/docker/healthcheck.py /usr/local/lib/hagmoe/healthcheck.py

ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/hagmoe \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/home/hagmoe/.cache \
    TORCHINDUCTOR_CACHE_DIR=/home/hagmoe/.cache/torchinductor \
    TRITON_CACHE_DIR=/home/hagmoe/.cache/triton \
    CUDA_CACHE_PATH=/home/hagmoe/.cache/nv \
    HF_HOME=/home/hagmoe/.cache/huggingface \
    HAGMOE_HOST=0.0.0.0 \
    HAGMOE_PORT=8000 \
    HAGMOE_GRPC_PORT=50051

VOLUME ["/tmp", "/home/hagmoe"]
WORKDIR /home/hagmoe
USER 10001:10001
EXPOSE 8000 50051

# Liveness only: /ready (model loaded, not draining) is for load balancers and Kubernetes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/lib/hagmoe/healthcheck.py"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "hagmoe"]
CMD ["serve"]
