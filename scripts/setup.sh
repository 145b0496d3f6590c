#!/usr/bin/env bash
# Installs what building voicegate needs from Debian (and, with --test, what its tests need:
# chromium for the browser test and the test's npm packages, coturn for the STUN/TURN tests,
# nftables to cut a browser's network in the network-change test, haproxy for the fleet test,
# the pinned Python tools that validate the Kubernetes manifests, in .venv-tools/, the
# examples' own Python and Node packages, which their tests run, and podman, runc and
# debootstrap for the container image test). Safe to run again: it installs
# only what is missing. Needs root or sudo for apt.
#
#   scripts/setup.sh          build and run
#   scripts/setup.sh --test   build, run and test
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep in step with the Dockerfile's build and runtime stages.
build_packages=(pkg-config libopus-dev libespeak-ng-dev libpocketsphinx-dev pocketsphinx-en-us)
test_packages=(chromium espeak-ng iproute2 util-linux nodejs npm coturn nftables haproxy python3 python3-venv podman runc debootstrap)

want=("${build_packages[@]}")
if [ "${1:-}" = "--test" ]; then
  want+=("${test_packages[@]}")
fi

missing=()
for p in "${want[@]}"; do
  # node and npm may come from outside Debian (the machine's own toolchain): that is enough.
  case "$p" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
    # Likewise a python3 that can make a virtual environment.
    python3) command -v python3 >/dev/null 2>&1 && continue ;;
    python3-venv) python3 -c 'import venv, ensurepip' >/dev/null 2>&1 && continue ;;
  esac
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

# Again whenever the lock file changed since the last install.
if [ "${1:-}" = "--test" ] && ! cmp -s web-tests/package-lock.json web-tests/node_modules/.installed-lock; then
  echo "setup: installing the browser test's npm packages"
  # playwright-core drives Debian's chromium; it never downloads a browser.
  (cd web-tests && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error &&
    cp package-lock.json node_modules/.installed-lock)
fi

# The manifest validators (scripts/validate-deploy.sh), pinned in scripts/deploy-tools.txt, in a
# venv of Debian's python3 inside the checkout; again whenever the pins change.
if [ "${1:-}" = "--test" ] && ! cmp -s scripts/deploy-tools.txt .venv-tools/.installed-requirements; then
  echo "setup: installing the manifest validators"
  rm -rf .venv-tools
  /usr/bin/python3 -m venv .venv-tools
  .venv-tools/bin/pip install --quiet --disable-pip-version-check -r scripts/deploy-tools.txt
  cp scripts/deploy-tools.txt .venv-tools/.installed-requirements
fi

if [ "${1:-}" = "--test" ]; then
  # The examples' packages, installed the way a team copying an example would: a virtual
  # environment under examples/ for the Python ones (never the system's site-packages), and
  # npm ci from the lock file for the Node one. The pinned versions are in their requirements.txt
  # and package-lock.json.
  if ! examples/.venv/bin/python -c 'import aiohttp' >/dev/null 2>&1; then
    echo "setup: installing the Python examples' packages into examples/.venv"
    python3 -m venv examples/.venv
    examples/.venv/bin/pip install --quiet --disable-pip-version-check \
      -r examples/python-agent/requirements.txt -r examples/ivr-menu/requirements.txt
  fi
  if [ ! -d examples/node-agent/node_modules/ws ]; then
    echo "setup: installing the Node example's npm packages"
    (cd examples/node-agent && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
