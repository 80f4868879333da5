# mailgate: stateless REST gateway HTTP -> SMTP/IMAP/POP3.
# Reproducible: the base image is pinned by digest (override with
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>,
# the digest read with `docker buildx imagetools inspect python:3.11-slim-bookworm`)
# and every Python package comes from requirements.lock with its hashes (`make lock`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --prefix=/install -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY service ./service
RUN pip install --no-cache-dir --no-deps --prefix=/install .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mailgate" \
      org.opencontainers.image.licenses="GPL-3.0-only"
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --no-create-home mailgate
USER 10001
ENV MAILGATE_HOST=0.0.0.0 \
    MAILGATE_PORT=8025 \
    PYTHONUNBUFFERED=1
EXPOSE 8025
# The probe follows MAILGATE_PORT when the container is started with another port.
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('MAILGATE_PORT', '8025'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["mailgate"]
CMD ["serve"]
