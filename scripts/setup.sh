#!/usr/bin/env bash
# Installs the Debian packages that building and testing voicegate need, and the npm packages of the
# browser end-to-end test. Safe to run again: it installs only what is missing.
set -euo pipefail

cd "$(dirname "$0")/.."

# Build: libopus for the codec, pkg-config and clang-free C toolchain pieces the -sys crates use.
# Tests: chromium for the browser end-to-end test, sox/iproute2/util-linux for test fixtures and the
# loopback-only network namespace.
packages=(
  pkg-config
  libopus-dev
  chromium
  iproute2
  util-linux
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The browser test drives Debian's chromium with playwright-core; never download a browser.
if [ ! -d web-tests/node_modules/playwright-core ]; then
  echo "setup: installing npm packages for the browser test"
  (cd web-tests && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
