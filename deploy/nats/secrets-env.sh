#!/bin/sh
# Entrypoint of compose.yaml's NATS nodes: exports each compose secret mounted in /run/secrets
# whose file name is a variable's (NATS_PAYSTREAM_PASSWORD, …) as that variable, without the
# trailing newline, then runs the command. nats/accounts.conf reads the users' passwords from
# nats-server's environment ($NATS_*_PASSWORD); this way no password is written in compose.yaml or
# shows in the container's configuration (`docker inspect`). SECRETS_DIR: another directory (tests).
# Checked by the test suite: nats-server -t with deploy/nats/cluster.conf through this script.
set -eu
dir="${SECRETS_DIR:-/run/secrets}"
for file in "$dir"/*; do
  [ -f "$file" ] || continue
  name=$(basename "$file")
  case "$name" in
    "" | [0-9]* | *[!A-Z0-9_]*) continue ;; # not a variable name
  esac
  value=$(cat "$file")
  export "$name=$value"
done
exec "$@"
