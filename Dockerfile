# syntax=docker/dockerfile:1
# The webhook bridge image: `docker build -t webhook-bridge .`
# Runs `webhook-bridge run` against the Kafka in BRIDGE_KAFKA_BOOTSTRAP_SERVERS; every other
# webhook-bridge command (topics apply, webhooks ..., publish, receive, dlq ...) runs in it too.
# Kubernetes: helm/webhook-bridge (docs/operations-helm.md); local stack: docker-compose.yml.

ARG PYTHON_IMAGE=python:3.11-slim

# -- builder: the project's wheel, then a virtualenv with it and its runtime dependencies only
# (no `embedded` broker extra, no test tools).
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# README.md is optional for the build (pyproject names it): the glob copies it when present.
COPY pyproject.toml README.m[d] ./
COPY bridge/ bridge/
COPY topics/ topics/

RUN pip wheel --no-deps --wheel-dir /dist . \
    && python -m venv /opt/webhook-bridge \
    && /opt/webhook-bridge/bin/pip install /dist/*.whl \
    && /opt/webhook-bridge/bin/webhook-bridge --version

# -- runtime
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="webhook-bridge" \
      org.opencontainers.image.description="Delivers platform events from Kafka as signed webhooks (Faust stream processor)." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="LicenseRef-Proprietary" \
      org.opencontainers.image.documentation="docs/operations-helm.md"

# A fixed numeric user, so that Kubernetes' runAsNonRoot can check it (helm chart: 10001).
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin bridge \
    && mkdir /data \
    && chown 10001:10001 /data

COPY --from=builder /opt/webhook-bridge /opt/webhook-bridge

# BRIDGE_WEB_HOST: the worker binds 127.0.0.1 by default, unreachable for health checks and
# Prometheus from outside the container. BRIDGE_DATA_DIR: Faust's files, writable for 10001.
# BRIDGE_LOG_FORMAT: JSON lines for log collectors, even under `docker run -t` (the default,
# auto, writes readable lines to a terminal).
ENV PATH=/opt/webhook-bridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BRIDGE_WEB_HOST=0.0.0.0 \
    BRIDGE_WEB_PORT=6066 \
    BRIDGE_DATA_DIR=/data \
    BRIDGE_LOG_FORMAT=json

USER 10001:10001
WORKDIR /data

# Health, readiness and metrics (/healthz, /readyz, /metrics).
EXPOSE 6066

# Liveness of `run` (other commands, such as `receive`, override or disable it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('BRIDGE_WEB_PORT', '6066'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["webhook-bridge"]
CMD ["run"]
