# voicegate container image: multi-stage build, small non-root runtime.
#
#   docker build -t voicegate .
#   docker run --rm -p 8080:8080 -p 50000:50000/udp \
#     -e VOICEGATE__MEDIA__PUBLIC_IPS=<the host's public IP> voicegate
#
# All calls share one UDP port, so publishing that one port is all the media needs. Inside a
# container the bound address is not the one browsers reach: set media.public_ips (NAT 1:1).
# Debian packages here match scripts/setup.sh: libopus-dev, libespeak-ng-dev and
# libpocketsphinx-dev to build; their runtime libraries, the espeak-ng voices and the
# pocketsphinx English model to run. deploy/README.md says what each part of the image is for.
#
# The two base images are build arguments only so that a machine without a container registry
# can build this file unchanged from local copies (scripts/container-test.sh makes them from
# Debian and the installed Rust toolchain); everyone else keeps the defaults.
ARG BUILD_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libopus-dev libespeak-ng-dev libpocketsphinx-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The release profile keeps line tables (for profiling and readable backtraces on a developer's
# machine). The image ships the binary without them, with its symbols (function names in
# backtraces) and a debug link; the line tables stay in this stage as voicegate.debug, for
# `docker build --target debug-info --output type=local,dest=. .`.
# The cache mount keeps cargo's target directory between builds on one machine (BuildKit and
# podman/buildah), so a rebuild after a source change compiles only what changed; cargo's own
# fingerprints decide what that is. It is not part of any image.
RUN --mount=type=cache,id=voicegate-release-target,target=/src/target \
    cargo build --release --locked --bin voicegate \
 && objcopy --only-keep-debug target/release/voicegate /src/voicegate.debug \
 && objcopy --strip-debug --add-gnu-debuglink=/src/voicegate.debug target/release/voicegate /src/voicegate

FROM scratch AS debug-info
COPY --from=build /src/voicegate.debug /

FROM ${RUNTIME_IMAGE}
# No ca-certificates: voicegate's TLS client (wss:// dialog apps, HTTPS speech engines) carries its
# own root certificates (webpki-roots) and never reads the system's.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopus0 libespeak-ng1 espeak-ng-data libpocketsphinx3 pocketsphinx-en-us \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home voicegate
COPY --from=build /src/voicegate /usr/local/bin/voicegate
COPY config/default.toml /etc/voicegate/default.toml
COPY deploy/healthcheck.sh /usr/local/bin/voicegate-healthcheck
USER voicegate
# espeak-ng's audio library probes for a PulseAudio server at startup although voicegate never
# plays sound locally; libpulse, looking for its settings under a home the user does not have
# (or on a read-only root filesystem), writes a plain-text line to stderr, which breaks log
# pipelines that expect JSON. A server address that fails at once keeps it from looking.
ENV VOICEGATE__HTTP__BIND=0.0.0.0:8080 \
    VOICEGATE__LOG__FORMAT=json \
    PULSE_SERVER=unix:/dev/null
EXPOSE 8080/tcp 50000/udp
# Probes the address in VOICEGATE__HTTP__BIND, so it follows a port changed at `docker run -e`.
HEALTHCHECK --interval=10s --timeout=2s CMD ["/usr/local/bin/voicegate-healthcheck"]
ENTRYPOINT ["/usr/local/bin/voicegate"]
