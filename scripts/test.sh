#!/usr/bin/env bash
# Runs Petrel's whole test suite on a fresh machine: installs and starts what the tests need
# (PostgreSQL, Apache Kafka, NATS, Redis, RabbitMQ, Mosquitto, MariaDB, an S3 store and helm through scripts/services.sh, the
# runtimes' and builds' toolchains through scripts/toolchains.sh, the tools that build the official Node.js Lambda
# runtime client), then the tests.
# Extra arguments go to `cargo test` (for example: scripts/test.sh -p petrel-store).
set -euo pipefail
cd "$(dirname "$0")/.."

_petrel_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Python, Node.js, Go, a JDK with Maven, Rust's wasm target: the runtimes and the builds.
# shellcheck source=scripts/toolchains.sh
. scripts/toolchains.sh

missing=()
# The console's tests drive Debian's Chromium (with playwright-core from npm).
command -v chromium >/dev/null || missing+=(chromium)
# The async tests make their own CA and certificates for the https callbacks.
command -v openssl >/dev/null || missing+=(openssl)
# The official Node.js Lambda runtime client (aws-lambda-ric, from npm) builds curl and
# aws-lambda-cpp from source when installed.
for tool in cmake:cmake autoconf:autoconf automake:automake libtoolize:libtool make:make g++:g++; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test: installing ${missing[*]} from Debian's packages"
  _petrel_sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive _petrel_sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The tree's own rules: no import cycle between modules, no unsafe code outside crates/sandbox.
python3 scripts/check-tree.py

# shellcheck source=scripts/services.sh
. scripts/services.sh

if [ $# -gt 0 ]; then
  exec cargo test --locked "$@"
fi
exec cargo test --workspace --locked
