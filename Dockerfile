# syntax=docker/dockerfile:1
# ortserve, CPU image. Stages:
#   builder  a venv with the serving dependencies only (no torch, no transformers)
#   trainer  builder + the training extra; `docker compose --profile train run trainer`
#            writes the quick default models into the shared models volume
#   runtime  slim: the serving venv + app/, non-root, models mounted at /models
# Models are mounted rather than baked in: they are versioned artifacts with their own
# life cycle (retrain, pin, roll back) and a new version must not need a new image.

FROM python:3.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY app ./app
# The ONNX Runtime the image serves with, pinned: 1.24.1 or later refuses external-data
# paths that leave a model's folder (pyproject.toml); this one is the version tested.
ARG ONNXRUNTIME_VERSION=1.32.0
RUN pip install --no-compile . "onnxruntime==${ONNXRUNTIME_VERSION}"

FROM builder AS trainer
# PyPI's Linux torch wheels bundle CUDA (several GB); training the quick models needs only
# the CPU build, which PyTorch publishes on its own index.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY training ./training
# The extra's versions are pinned in pyproject.toml (torch==2.13.0), not on this line.
# hadolint ignore=DL3013
RUN pip install --no-compile --extra-index-url "${TORCH_INDEX}" ".[train]"
ENV HF_HUB_OFFLINE=1
CMD ["python", "-m", "training", "all", "--profile", "quick", "--output", "/models"]

FROM python:3.11-slim-bookworm AS runtime
# Listening on every interface, `ortserve serve` refuses to start without API keys: give it
# ORTSERVE_API_KEYS_FILE (a mounted secret) or ORTSERVE_API_KEYS at run time. The image never
# sets ORTSERVE_ALLOW_UNAUTHENTICATED (tests/test_deploy.py checks).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORTSERVE_MODELS_DIR=/models \
    ORTSERVE_HOST=0.0.0.0 \
    ORTSERVE_PORT=8000 \
    ORTSERVE_GRPC_PORT=8001
RUN useradd --system --uid 10001 --user-group --no-create-home ortserve
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /srv
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["ortserve", "serve"]
