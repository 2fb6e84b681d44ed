#!/usr/bin/env bash
# Fuzz every decoder target for a bounded time: scripts/fuzz.sh [seconds per target] (default 60).
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
# New inputs found go to a temporary directory: the checked-in corpus (fuzz/corpus/<target>)
# only changes when someone copies a worthwhile input there. A crash fails the script and leaves
# its input in fuzz/artifacts/<target>/ (reproduce: cargo fuzz run <target> <file>).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
targets=$(cargo fuzz list)
cargo fuzz build
for target in $targets; do
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "fuzz: $target for ${seconds}s"
  # pipefail: the fuzzer's failure fails the pipeline, whatever `tail` does.
  if ! cargo fuzz run "$target" "$work" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 40; then
    echo "fuzz: $target failed (input in fuzz/artifacts/$target/)"
    exit 1
  fi
  rm -rf "$work"
done
