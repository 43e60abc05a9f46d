#!/usr/bin/env bash
# Compatibility of Petrel's wasm runtime with `wasmtime serve`: serves each built example
# component with both, sends the same requests to both, and compares status and body.
#
#   bench/wasm-compat.sh            (installs wasmtime-cli 48.0.8 from crates.io when missing)
#
# Components are the examples' hello.wasm files; build them first (docs/wasm.md). Exits 1 if
# any answer differs.
set -euo pipefail
cd "$(dirname "$0")/.."

WASMTIME=${WASMTIME:-$HOME/.cargo/bin/wasmtime}
if [ ! -x "$WASMTIME" ]; then
  echo "compat: installing wasmtime-cli 48.0.8 (about 14 minutes on 2 cores)"
  cargo install wasmtime-cli --version 48.0.8 --locked
fi
PETREL=${PETREL:-target/release/petrel}
[ -x "$PETREL" ] || cargo build --release

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$PETREL" serve --listen 127.0.0.1:0 --data-dir "$work/data" > "$work/petrel.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/petrel.out" ] && break; sleep 0.1; done
url=$(head -n1 "$work/petrel.out" | awk '{print $4}')
export PETREL_SERVER=$url

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ask() { # method url [body] -> "status body"
  if [ $# -eq 3 ]; then curl -s -o "$work/body" -w '%{http_code}' -X "$1" -H 'content-type: application/json' --data "$3" "$2"
  else curl -s -o "$work/body" -w '%{http_code}' -X "$1" "$2"; fi
  printf ' '; cat "$work/body"
}

same=0; differ=0
for ex in examples/hello-wasm examples/hello-js-wasm examples/hello-python-wasm; do
  name=$(basename "$ex")
  if [ ! -f "$ex/hello.wasm" ]; then echo "skip $name: hello.wasm not built"; continue; fi
  "$PETREL" deploy "$ex" > /dev/null
  port=$(free_port)
  "$WASMTIME" serve -S cli=y --env GREETING=Hello --addr "127.0.0.1:$port" "$ex/hello.wasm" 2> "$work/wasmtime.err" &
  pids+=($!)
  for _ in $(seq 1 600); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  for req in "GET /?name=compat" "GET /some/path?name=x" "POST /|{\"name\": \"Ada\"}"; do
    method=${req%% *}; rest=${req#* }; path=${rest%%|*}; body=""
    [ "$rest" != "$path" ] && body=${rest#*|}
    if [ -n "$body" ]; then
      a=$(ask "$method" "http://127.0.0.1:$port$path" "$body"); b=$(ask "$method" "$url/fn/$name$path" "$body")
    else
      a=$(ask "$method" "http://127.0.0.1:$port$path"); b=$(ask "$method" "$url/fn/$name$path")
    fi
    if [ "$a" = "$b" ]; then
      same=$((same + 1)); echo "same    $name $method $path -> $a"
    else
      differ=$((differ + 1)); echo "DIFFER  $name $method $path: wasmtime serve: $a | petrel: $b"
    fi
  done
  kill "${pids[-1]}" 2>/dev/null || true
done
echo "$same same, $differ differ"
[ "$differ" -eq 0 ]
