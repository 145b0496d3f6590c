#!/bin/bash
# The image's HEALTHCHECK: GET /health on the address voicegate listens on, read from
# VOICEGATE__HTTP__BIND (the image sets it; `docker run -e VOICEGATE__HTTP__BIND=...` changes it),
# so the check follows the configured port. Plain bash (/dev/tcp), because the image carries no
# HTTP client. If http.bind comes from a --config file instead, set the variable to the same value.
set -eu
bind="${VOICEGATE__HTTP__BIND:-0.0.0.0:8080}"
port="${bind##*:}"
host="${bind%:*}"
host="${host#[}"
host="${host%]}"
# A wildcard bind answers on loopback.
case "$host" in
  "" | 0.0.0.0) host=127.0.0.1 ;;
  ::) host=::1 ;;
esac
exec 3<>"/dev/tcp/$host/$port"
printf 'GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
IFS= read -r status <&3
case "$status" in
  "HTTP/1."?" 200 "*) exit 0 ;;
  *) echo "voicegate-healthcheck: $host:$port answered ${status:-nothing}" >&2; exit 1 ;;
esac
