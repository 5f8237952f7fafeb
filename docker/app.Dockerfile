# The app image: Python with celery-chaos (the harness's worker shim and history recorder),
# the sample app, Flower and Locust. Build context: the repository root.
# A team's own image needs the same: their app plus `pip install celery-chaos`.
ARG BASE_IMAGE=celery-chaos/base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
# The build machine's CA bundle (a registry behind a TLS-inspecting proxy needs it).
COPY docker/.build/ca-certificates.crt /etc/ssl/certs/build-ca.crt
ENV PIP_CERT=/etc/ssl/certs/build-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=180
# Dependencies first (a layer kept while only the source changes).
COPY docker/.build/requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -q -r /tmp/requirements.txt flower
COPY pyproject.toml README.md /src/
COPY harness /src/harness
COPY sample_app /src/sample_app
RUN /opt/venv/bin/pip install -q --no-deps /src && rm -rf /src/build
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /opt/app
CMD ["celery", "-A", "celery_chaos.sample_app.app:app", "worker", "-l", "INFO"]
