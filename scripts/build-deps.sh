#!/usr/bin/env bash
# What building needs besides the Rust toolchain: OpenSSL headers for librdkafka's TLS and
# SASL (installed from Debian's packages when missing; needs root or sudo).
set -euo pipefail
if pkg-config --exists openssl 2>/dev/null; then
  exit 0
fi
echo "installing libssl-dev and pkg-config (OpenSSL for librdkafka)" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends libssl-dev pkg-config >/dev/null
