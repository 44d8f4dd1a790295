#!/usr/bin/env bash
# Tools the security tests need, installed once and then reused: stunnel4 (TLS in front of
# the local broker, from Debian's packages) and cargo-deny (from crates.io, into
# ~/.cargo/bin, so later runs do not rebuild it).
set -euo pipefail
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! command -v stunnel4 >/dev/null 2>&1 && ! command -v stunnel >/dev/null 2>&1; then
  echo "installing stunnel4 (TLS in front of the local broker)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends stunnel4 >/dev/null
fi
if ! cargo deny --version >/dev/null 2>&1; then
  echo "installing cargo-deny 0.20.2 (once; about 3 minutes)" >&2
  cargo install cargo-deny --version 0.20.2 --locked >&2
fi
