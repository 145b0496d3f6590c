#!/usr/bin/env bash
# The test command: installs what the tests need, then runs everything.
#   1. lint: rustfmt and clippy (set VOICEGATE_SKIP_LINT=1 to skip)
#   2. unit and integration tests (real server, real WebRTC peers, real Opus)
#   3. the browser end-to-end test (headless chromium in a loopback-only network namespace)
#   4. the Kubernetes manifests, validated offline (scripts/validate-deploy.sh); it runs right
#      after lint, since it takes a second
#   5. the container image: built from the Dockerfile and called the same way
#      (scripts/container-test.sh; set VOICEGATE_SKIP_CONTAINER=1 to skip)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test

# A clean build of the suite takes several GB (target/); say how much room there was, so a full
# disk reads as such in a failed run's log.
echo "== disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free"

if [ "${VOICEGATE_SKIP_LINT:-0}" != "1" ]; then
  echo "== lint"
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

echo "== deploy manifests"
scripts/validate-deploy.sh

echo "== unit and integration tests"
# Property tests run this many cases each here; SECURITY.md has the command for a million.
export PROPTEST_CASES="${PROPTEST_CASES:-2000}"
cargo test --workspace --locked

echo "== browser end-to-end"
# With the test targets in the same invocation, the binaries get the features the tests' build
# unified (dev-dependencies turn some on), so this reuses that build and only adds the bench's
# binary; `-p voicegate -p voicegate-bench` alone would rebuild tokio and everything above it.
cargo build --locked --workspace --bins --tests
scripts/e2e.sh target/debug/voicegate

if [ "${VOICEGATE_SKIP_CONTAINER:-0}" != "1" ]; then
  echo "== container image"
  scripts/container-test.sh
fi
