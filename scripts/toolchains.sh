#!/usr/bin/env bash
# Installs the toolchains the examples' [build] tables and the function runtimes use, when they
# are missing, from Debian's packages and rustup: Python 3 and Node.js (the python3 and nodejs
# runtimes, componentize-py and componentize-js), Go (the Go examples; a go.mod asking for a
# newer Go makes the go command fetch it from the Go module proxy), a JDK with Maven (the java
# runtime and its examples), and Rust's wasm32-wasip2 target (the Rust wasm example).
# Idempotent; sourced by scripts/test.sh, or run by hand before `petrel serve --deploy examples/*`.
set -euo pipefail

_petrel_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v python3 >/dev/null || missing+=(python3 python3-pip)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v go >/dev/null || missing+=(golang-go)
{ command -v javac >/dev/null && command -v jar >/dev/null; } || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
if [ ${#missing[@]} -gt 0 ]; then
  echo "toolchains: installing ${missing[*]} from Debian's packages"
  _petrel_sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive _petrel_sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if command -v rustup >/dev/null && ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
