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
# pocketsphinx English model to run.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libopus-dev libespeak-ng-dev libpocketsphinx-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin voicegate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopus0 libespeak-ng1 espeak-ng-data libpocketsphinx3 pocketsphinx-en-us ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home voicegate
COPY --from=build /src/target/release/voicegate /usr/local/bin/voicegate
COPY config/default.toml /etc/voicegate/default.toml
USER voicegate
ENV VOICEGATE__HTTP__BIND=0.0.0.0:8080 \
    VOICEGATE__LOG__FORMAT=json
EXPOSE 8080/tcp 50000/udp
HEALTHCHECK --interval=10s --timeout=2s CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ok <&3"]
ENTRYPOINT ["/usr/local/bin/voicegate"]
