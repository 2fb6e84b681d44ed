# syntax=docker/dockerfile:1
# paystream: one binary. Built in the Rust image, run in slim Debian as a non-root user.
#   docker build -t paystream:local .      (compose.yaml builds it for every service)
#   docker build --build-arg REVISION=$(git rev-parse HEAD) --build-arg CREATED=$(date -u +%FT%TZ) \
#     --build-arg SOURCE=<repository URL> -t paystream:local .      (fills in the OCI labels)
# The same image runs every role: `serve payment|wallet|ledger|dlq|reconciler`, `psp-sim`,
# `migrate`, and the client and operator commands (`docker compose exec payment paystream dlq list`).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The image's binary carries neither symbols nor debug info (the release profile keeps line tables
# for profiling on a workstation; in the image they only made it 158 MB). Set here, not in
# Cargo.toml, so local release builds keep them.
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p paystream \
 && install -D -m 0755 target/release/paystream /out/paystream

FROM debian:bookworm-slim
# curl: the container health check (`curl -fsS http://127.0.0.1:9464/readyz`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/paystream --create-home paystream
COPY --from=build /out/paystream /usr/local/bin/paystream
USER 10001:10001
WORKDIR /var/lib/paystream
# The operator console (`up`, `serve console`) speaks plain HTTP: publish it to the host's
# loopback only (`-p 127.0.0.1:9465:9465`) or behind a TLS proxy.
ENV PAYSTREAM_DATA_DIR=/var/lib/paystream \
    PAYSTREAM_HTTP_ADDR=0.0.0.0:9464 \
    PAYSTREAM_CONSOLE_ADDR=0.0.0.0:9465
EXPOSE 9464 9465 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS -o /dev/null http://127.0.0.1:9464/readyz || exit 1
# OCI labels, last: a build argument that changes (REVISION, CREATED) invalidates the layers
# after its declaration. Keep VERSION equal to Cargo.toml's workspace version (checked by
# scripts/check-compose.py).
ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="paystream" \
      org.opencontainers.image.description="Payment event pipeline on NATS JetStream: payment, wallet, ledger, dead-letter and reconciliation services, a PSP simulator, operator and client commands, in one binary" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["paystream"]
# No default role: compose (or `docker run paystream:local serve payment`) names one.
CMD ["--help"]
