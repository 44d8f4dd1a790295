#!/usr/bin/env bash
# Tools the checks need, installed once and then reused: cargo-deny (from crates.io, into
# ~/.cargo/bin, so later runs do not rebuild it). (The Kafka security tests need only
# openssl and the broker's own TLS: tests/suite/kafka_security.rs.)
set -euo pipefail
if ! cargo deny --version >/dev/null 2>&1; then
  echo "installing cargo-deny 0.20.2 (once; about 3 minutes)" >&2
  cargo install cargo-deny --version 0.20.2 --locked >&2
fi
