#!/usr/bin/env bash
# Runs Petrel's whole test suite on a fresh machine: installs and starts what the tests need
# (PostgreSQL, Apache Kafka, NATS, Redis, RabbitMQ, Mosquitto, MariaDB, an S3 store and helm through scripts/services.sh, the Python and Node.js
# interpreters the function runtimes use, the tools that build the official Node.js Lambda
# runtime client), then the tests.
# Extra arguments go to `cargo test` (for example: scripts/test.sh -p petrel-store).
set -euo pipefail
cd "$(dirname "$0")/.."

_petrel_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v python3 >/dev/null || missing+=(python3)
command -v node >/dev/null || missing+=(nodejs npm)
command -v npm >/dev/null || missing+=(npm)
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

# The wasm tests build their guests from source for this target.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi

# The tree's own rules: no import cycle between modules, no unsafe code outside crates/sandbox.
python3 scripts/check-tree.py

# shellcheck source=scripts/services.sh
. scripts/services.sh

if [ $# -gt 0 ]; then
  exec cargo test --locked "$@"
fi
exec cargo test --workspace --locked
