# syntax=docker/dockerfile:1
# paystream: one binary. Built in the Rust image, run in slim Debian as a non-root user.
#   docker build -t paystream:local .      (compose.yaml builds it for every service)
# The same image runs every role: `serve payment|wallet|ledger|dlq|reconciler`, `psp-sim`,
# `migrate`, and the client and operator commands (`docker compose exec payment paystream dlq list`).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
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
ENV PAYSTREAM_DATA_DIR=/var/lib/paystream \
    PAYSTREAM_HTTP_ADDR=0.0.0.0:9464
EXPOSE 9464 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS -o /dev/null http://127.0.0.1:9464/readyz || exit 1
ENTRYPOINT ["paystream"]
# No default role: compose (or `docker run paystream:local serve payment`) names one.
CMD ["--help"]
