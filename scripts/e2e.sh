#!/usr/bin/env bash
# Runs the browser end-to-end tests against the given voicegate binary, in a network namespace
# where only loopback exists, so every ICE candidate is 127.0.0.1 and no traffic leaves the
# machine.
#   scripts/e2e.sh [path/to/voicegate]   (voicegate-bench must be next to it)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${1:-target/debug/voicegate}")"
bench="$(dirname "$bin")/voicegate-bench"
[ -x "$bin" ] || { echo "e2e: no voicegate binary at $bin (cargo build first)" >&2; exit 1; }
[ -x "$bench" ] || { echo "e2e: no voicegate-bench next to it (cargo build first)" >&2; exit 1; }
mkdir -p web-tests/artifacts

run="cd web-tests && VOICEGATE_BIN='$bin' VOICEGATE_BENCH='$bench' node --test --test-reporter=spec --test-concurrency=1 *.e2e.mjs"
if [ "$(id -u)" -eq 0 ]; then
  exec unshare -n sh -c "ip link set lo up && $run"
elif unshare -rn true 2>/dev/null; then
  exec unshare -rn sh -c "ip link set lo up && $run"
else
  echo "e2e: cannot create a network namespace here; running on the host's network" >&2
  exec sh -c "$run"
fi
