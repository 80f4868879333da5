# mailgate: stateless REST gateway HTTP -> SMTP/IMAP/POP3.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY service ./service
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="mailgate" \
      org.opencontainers.image.licenses="GPL-3.0-only"
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --no-create-home mailgate
USER 10001
ENV MAILGATE_HOST=0.0.0.0 \
    MAILGATE_PORT=8025 \
    PYTHONUNBUFFERED=1
EXPOSE 8025
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8025/healthz').status != 200)"]
ENTRYPOINT ["mailgate"]
CMD ["serve"]
