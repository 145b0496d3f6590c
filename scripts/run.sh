#!/usr/bin/env bash
# The run command: installs the build dependencies, builds in release mode and starts voicegate
# with the built-in defaults (HTTP on 127.0.0.1:8080, media on UDP 50000). Open
# http://127.0.0.1:8080/ and press Call. Arguments go to voicegate, e.g. --config my.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --locked --bin voicegate -- "$@"
