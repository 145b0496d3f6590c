#!/usr/bin/env bash
# Builds the container image from the Dockerfile and tests it end to end: the browser test harness
# (web-tests/, headless chromium) calls the image in a loopback-only network namespace, checks
# /health, /ready and the HEALTHCHECK, that it runs as a non-root user, that an echo call and a
# dialog call are heard, that every log line is JSON, and that SIGTERM drains and exits 0.
#
#   scripts/container-test.sh        (run by scripts/test.sh; needs scripts/setup.sh --test first)
#
# Base images: the Dockerfile builds FROM rust:<version>-bookworm and debian:bookworm-slim. When a
# container registry serves them, they are pulled. Otherwise (an air-gapped machine) they are made
# locally and passed as the Dockerfile's BUILD_IMAGE and RUNTIME_IMAGE build arguments:
#   - the runtime base: `debootstrap --variant=minbase` of the same Debian release from the
#     machine's own Debian mirror, slimmed as debian:*-slim is;
#   - the build image: that base plus build-essential, the machine's installed Rust toolchain and
#     its cargo registry cache (the crates Cargo.lock names), building offline.
# Both are kept in podman's storage under a tag that hashes their inputs, so later runs reuse them
# and a change of input (the recipe, the mirror, the toolchain, the crates) makes new ones.
#
# Environment:
#   VOICEGATE_BASE_IMAGES=auto|registry|local   where the base images come from (default auto:
#                                                the registry if it answers, else local)
#   VOICEGATE_DEBIAN_MIRROR=<url>                mirror for the local base (default: apt's own)
#   VOICEGATE_KEEP_IMAGE=1                       keep the built image (default: removed)
set -euo pipefail
cd "$(dirname "$0")/.."
# The braces make bash read the whole script before running it, so editing the file during a run
# (which takes minutes) cannot change what the run does.
{

say() { echo "container-test: $*" >&2; }
skip() {
  say "SKIPPED: $*"
  exit 0
}
started=$SECONDS
phase_start=$SECONDS
phase() {
  say "$1 ($((SECONDS - phase_start)) s)"
  phase_start=$SECONDS
}

# Podman here runs rootful (runc, a network namespace of our own); run as root or through sudo.
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    exec sudo -n --preserve-env=VOICEGATE_BASE_IMAGES,VOICEGATE_DEBIAN_MIRROR,VOICEGATE_KEEP_IMAGE,CARGO_HOME,PATH "$0" "$@"
  fi
  skip "needs root or passwordless sudo (rootful podman)"
fi
for tool in podman node unshare ip; do
  command -v "$tool" >/dev/null 2>&1 || {
    say "$tool is missing: run scripts/setup.sh --test first"
    exit 1
  }
done
[ -d web-tests/node_modules/playwright-core ] || {
  say "the browser test's npm packages are missing: run scripts/setup.sh --test first"
  exit 1
}

work="$(mktemp -d "${TMPDIR:-/var/tmp}/voicegate-container-test.XXXXXX")"
image="localhost/voicegate:test-$$"
# shellcheck disable=SC2317 # run by the trap below
cleanup() {
  if [ "${VOICEGATE_KEEP_IMAGE:-0}" != "1" ]; then
    podman rmi -f "$image" >/dev/null 2>&1 || true
  fi
  # Images left without a tag by this build or an earlier one (the build cache stays).
  podman image prune -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Podman's settings for this run only. Limits that podman gives containers by default can exceed
# a CI runner's hard limits, and raising them needs CAP_SYS_RESOURCE, which the runner may lack:
# stay under the hard limits. crun refuses some hybrid cgroup layouts (v1 with a v2 mount) that
# CI machines have; runc runs on both.
cap() { if [ "$1" = unlimited ] || [ "$1" -gt "$2" ]; then echo "$2"; else echo "$1"; fi; }
nofile="$(cap "$(ulimit -Hn)" 20000)"
nproc="$(cap "$(ulimit -Hu)" 4096)"
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$work/containers.conf"
if ! podman info >"$work/podman-info" 2>&1; then
  cat "$work/podman-info" >&2
  skip "podman cannot run on this machine (see above)"
fi

# The Dockerfile's defaults name the base images (one home for that fact).
default_arg() { sed -n "s/^ARG $1=//p" Dockerfile | head -n 1; }
build_image="$(default_arg BUILD_IMAGE)"
runtime_image="$(default_arg RUNTIME_IMAGE)"
if [ -z "$build_image" ] || [ -z "$runtime_image" ]; then
  say "the Dockerfile no longer declares ARG BUILD_IMAGE=... and ARG RUNTIME_IMAGE=..."
  exit 1
fi
# Podman resolves short names through registries.conf, which may list no registry: name the one
# Docker would use.
qualify() {
  case "$1" in
    */*) echo "docker.io/$1" ;;
    *) echo "docker.io/library/$1" ;;
  esac
}
# The Debian release both images are based on: debian:bookworm-slim -> bookworm.
suite="${runtime_image#*:}"
suite="${suite%-slim}"

# --- the base images -------------------------------------------------------------------------

from_registry() {
  local img
  for img in "$build_image" "$runtime_image"; do
    # A closed network refuses at once; a black-holed one would hang: bound the wait.
    timeout 600 podman pull -q "$(qualify "$img")" >/dev/null 2>"$work/pull.log" || return 1
  done
}

# The machine's Debian mirror for $suite and its security mirror, as apt knows them.
debian_mirror() {
  # shellcheck disable=SC2016 # apt's own placeholders, not the shell's
  apt-get indextargets --format '$(SITE) $(RELEASE)' 2>/dev/null | awk -v s="$1" '$2 == s { print $1; exit }'
}

# Removes the other versions of a local base image, so storage holds one of each.
drop_older() {
  podman images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$1" \
    | grep -vxF "$2" | xargs -r podman rmi -f >/dev/null 2>&1 || true
}

# Sets runtime_base.
local_runtime_base() {
  local mirror security key tag rootfs
  mirror="${VOICEGATE_DEBIAN_MIRROR:-$(debian_mirror "$suite")}"
  mirror="${mirror:-http://deb.debian.org/debian}"
  security="$(debian_mirror "$suite-security")"
  key="$( (
    echo "$suite $mirror $security $(dpkg --print-architecture)"
    declare -f local_runtime_base slim_rootfs
  ) | sha256sum | cut -c1-16)"
  tag="localhost/voicegate-local/debian:$suite-slim-$key"
  if ! podman image exists "$tag"; then
    command -v debootstrap >/dev/null 2>&1 || {
      say "debootstrap is missing: run scripts/setup.sh --test first"
      exit 1
    }
    say "making $tag with debootstrap from $mirror"
    rootfs="$work/rootfs"
    debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
      tail -n 20 "$work/debootstrap.log" >&2
      skip "debootstrap could not fetch Debian $suite from $mirror (no registry and no Debian mirror)"
    }
    slim_rootfs "$rootfs" "$mirror" "$security"
    tar --numeric-owner -C "$rootfs" -c . | podman import -q - "$tag" >/dev/null
    rm -rf "$rootfs"
    drop_older "localhost/voicegate-local/debian" "$tag"
  fi
  runtime_base="$tag"
}

# What debian:*-slim does to a Debian root: apt sources with updates and security, no docs, man
# pages or translations from later installs, no package cache.
slim_rootfs() {
  local rootfs="$1" mirror="$2" security="$3"
  {
    echo "Types: deb"
    echo "URIs: $mirror"
    echo "Suites: $suite $suite-updates"
    echo "Components: main"
    echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    if [ -n "$security" ]; then
      echo
      echo "Types: deb"
      echo "URIs: $security"
      echo "Suites: $suite-security"
      echo "Components: main"
      echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    fi
  } >"$rootfs/etc/apt/sources.list.d/debian.sources"
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
  # As the official image's docker-clean: apt's caches never stay in a layer.
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'APT::Install-Recommends "false";' >"$rootfs/etc/apt/apt.conf.d/no-recommends"
  # What debootstrap already installed, trimmed the same way.
  find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/lintian/*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
}

# Sets build_base.
local_build_image() {
  local base="$runtime_base" sysroot cargo_home key tag ctx
  if ! command -v rustc >/dev/null 2>&1 || ! command -v cargo >/dev/null 2>&1; then
    say "no Rust toolchain (rustc, cargo) to make the local build image from"
    exit 1
  fi
  sysroot="$(rustc --print sysroot)"
  cargo_home="${CARGO_HOME:-$HOME/.cargo}"
  # Every crate Cargo.lock names must be in the registry cache the image gets (from crates.io
  # when it answers; already there otherwise).
  cargo fetch --locked -q 2>/dev/null || cargo fetch --locked --offline -q || {
    say "the crates in Cargo.lock are neither in the cargo cache nor reachable"
    exit 1
  }
  key="$( (
    echo "$base"
    rustc -vV
    cargo -V
    ls "$cargo_home/registry/cache"/*/
    cat scripts/container/build-image.Containerfile
    declare -f local_build_image
  ) | sha256sum | cut -c1-16)"
  local rust_version
  rust_version="$(rustc -V | awk '{print $2}')"
  tag="localhost/voicegate-local/rust:$rust_version-$suite-$key"
  if ! podman image exists "$tag"; then
    say "making $tag from $base, the Rust toolchain at $sysroot and the cargo cache"
    # The build context: the toolchain (compiler and standard library, not its docs) and the
    # registry's index and downloaded crates (cargo unpacks them itself).
    ctx="$work/build-image"
    mkdir -p "$ctx/rust" "$ctx/registry"
    cp -al "$sysroot/bin" "$sysroot/lib" "$ctx/rust/" 2>/dev/null || cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/rust/"
    cp -al "$cargo_home/registry/index" "$cargo_home/registry/cache" "$ctx/registry/" 2>/dev/null \
      || cp -a "$cargo_home/registry/index" "$cargo_home/registry/cache" "$ctx/registry/"
    podman build -q --network=host --build-arg BASE="$base" -t "$tag" \
      -f scripts/container/build-image.Containerfile "$ctx" >"$work/build-image.log" 2>&1 || {
      tail -n 40 "$work/build-image.log" >&2
      say "the local Rust build image did not build"
      exit 1
    }
    rm -rf "$ctx"
    drop_older "localhost/voicegate-local/rust" "$tag"
  fi
  build_base="$tag"
}

mode="${VOICEGATE_BASE_IMAGES:-auto}"
build_args=()
case "$mode" in
  auto | registry)
    if from_registry; then
      say "base images from the registry: $build_image, $runtime_image"
      build_args=(--build-arg "BUILD_IMAGE=$(qualify "$build_image")" --build-arg "RUNTIME_IMAGE=$(qualify "$runtime_image")")
    elif [ "$mode" = registry ]; then
      cat "$work/pull.log" >&2
      say "VOICEGATE_BASE_IMAGES=registry, but the registry did not serve the base images"
      exit 1
    else
      say "no container registry answers ($(tail -n 1 "$work/pull.log")); making the base images locally"
      mode=local
    fi
    ;;
  local) ;;
  *)
    say "VOICEGATE_BASE_IMAGES must be auto, registry or local"
    exit 1
    ;;
esac
if [ "$mode" = local ]; then
  local_runtime_base
  local_build_image
  build_args=(--build-arg "BUILD_IMAGE=$build_base" --build-arg "RUNTIME_IMAGE=$runtime_base")
fi
phase "base images ready"

# --- the image -----------------------------------------------------------------------------

# Docker's image format, which keeps the HEALTHCHECK (the OCI format has no field for it).
if ! podman build --format docker --network=host "${build_args[@]}" -t "$image" . >"$work/build.log" 2>&1; then
  tail -n 60 "$work/build.log" >&2
  say "the image did not build"
  exit 1
fi
size="$(podman image inspect --format '{{.Size}}' "$image")"
phase "image built: $image, $((size / 1000000)) MB"

# --- the test ------------------------------------------------------------------------------

# A network namespace where only loopback exists: the container shares it (--network=host), so
# every candidate is 127.0.0.1 and nothing leaves the machine.
mkdir -p web-tests/artifacts
export VOICEGATE_IMAGE="$image"
if ! unshare -n sh -c "ip link set lo up && cd web-tests && node --test --test-reporter=spec --test-concurrency=1 image.container.mjs"; then
  say "FAILED (the image is $image; VOICEGATE_KEEP_IMAGE=1 keeps it)"
  exit 1
fi
phase "image tested"
say "passed in $((SECONDS - started)) s"
exit
}
