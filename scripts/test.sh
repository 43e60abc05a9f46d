#!/usr/bin/env bash
# Runs Petrel's whole test suite on a fresh machine: installs and starts what the tests need
# (PostgreSQL, the Python and Node.js interpreters the function runtimes use), then the tests.
# Extra arguments go to `cargo test` (for example: scripts/test.sh -p petrel-store).
set -euo pipefail
cd "$(dirname "$0")/.."

_petrel_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v python3 >/dev/null || missing+=(python3)
command -v node >/dev/null || missing+=(nodejs)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test: installing ${missing[*]} from Debian's packages"
  _petrel_sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive _petrel_sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The wasm tests build their guests from source for this target.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi

# shellcheck source=scripts/services.sh
. scripts/services.sh

if [ $# -gt 0 ]; then
  exec cargo test --locked "$@"
fi
exec cargo test --workspace --locked
