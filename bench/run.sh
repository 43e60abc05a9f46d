#!/usr/bin/env bash
# Side-by-side benchmarks: Petrel next to its peers and the physical limit, on this machine, with
# the same load generator, in one run. Writes a markdown report to bench/results/.
#
#   bench/run.sh [warm-http] [gateway-overhead] [lambda-rie] [cold-start] [many-functions] [async]
#   (default: all)
#
# Installs what it needs when missing: wrk (Debian), wasmtime-cli 48.0.8 (crates.io), workerd
# 1.20261117.1 (npm), and for lambda-rie the newest aws-lambda-rie (Go module proxy), awslambdaric
# (PyPI) and aws-lambda-ric (npm), all but wrk and wasmtime under bench/.tools. Servers run on CPU $SERVER_CPU, wrk on $LOAD_CPU.
# DURATION (seconds per measurement, default 5), REPS (repetitions of each load measurement,
# default 3), N (functions, default 1000) and PROFILE=0 (skip the perf profile) tune it;
# PETREL=/path/to/petrel measures that binary instead of building this tree's (a before/after
# comparison runs the script twice, back to back).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
DURATION=${DURATION:-5}
REPS=${REPS:-3}
PROFILE=${PROFILE:-1}
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
N=${N:-1000}
scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(warm-http gateway-overhead lambda-rie cold-start many-functions async)

tools=$root/bench/.tools
mkdir -p "$tools" bench/results
work=$(mktemp -d)
pids=()
# A background job here is a subshell running taskset (or a cd and then taskset): stop the whole
# tree under it, not only the subshell, or the servers outlive the run.
kill_tree() { local c; for c in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$c"; done; kill "$1" 2>/dev/null || true; }
stop_all() { for p in "${pids[@]}"; do kill_tree "$p"; wait "$p" 2>/dev/null || true; done; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT

say() { echo "bench: $*" >&2; }
_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- tools -------------------------------------------------------------------------------------
command -v wrk >/dev/null || { say "installing wrk"; _sudo apt-get update -qq; _sudo apt-get install -y -qq wrk >/dev/null; }
WASMTIME=${WASMTIME:-$HOME/.cargo/bin/wasmtime}
# A peer that cannot be installed or does not answer is not fatal: its rows say why.
[ -x "$WASMTIME" ] || { say "installing wasmtime-cli 48.0.8 (about 14 min)"; cargo install wasmtime-cli --version 48.0.8 --locked || say "wasmtime-cli could not be installed"; }
WORKERD=$tools/node_modules/.bin/workerd
[ -x "$WORKERD" ] || { say "installing workerd"; (cd "$tools" && npm install --silent workerd@1.20261117.1) || say "workerd could not be installed"; }
say "building Petrel, the hyper baseline and the hello component (release)"
if [ -z "${PETREL:-}" ]; then cargo build -q --release; fi
cargo build -q --release --manifest-path bench/hello-hyper/Cargo.toml
HYPER=$root/bench/hello-hyper/target/release/hello-hyper
cargo build -q --release --manifest-path bench/hello-lambda-rs/Cargo.toml
LAMBDA_RS=$root/bench/hello-lambda-rs/target/release/hello-lambda-rs
CARGO_TARGET_DIR=$root/target/wasm-guests cargo build -q --release --target wasm32-wasip2 --manifest-path examples/hello-wasm/Cargo.toml
cp target/wasm-guests/wasm32-wasip2/release/hello-wasm.wasm examples/hello-wasm/hello.wasm
cp examples/hello-wasm/hello.wasm bench/hello-wasm-reuse/hello.wasm
# The java cold start's function, built as its petrel.toml says.
(cd examples/hello-java && mvn -q -B package)
PETREL=${PETREL:-$root/target/release/petrel}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_ok URL [CURL ARGS...]: waits up to 15 s for a 2xx answer.
wait_ok() { local u=$1; shift; for _ in $(seq 1 300); do curl -fs -o /dev/null "$@" "$u" && return 0; sleep 0.05; done; say "no answer from $u"; return 1; }
pinned() { taskset -c "$SERVER_CPU" "$@"; }

# wrk at C connections against URL (with the wrk lua SCRIPT if given); prints "req/s p50 p99
# errors" (latencies as wrk writes them; errors counts non-2xx answers and socket errors).
load() {
  local url=$1 c=$2 script=${3:-}
  taskset -c "$LOAD_CPU" wrk -t1 -c"$c" -d"${DURATION}s" --latency ${script:+-s "$script"} "$url" > "$work/wrk.out" 2>&1 || true
  awk '/Requests\/sec/ {r=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2}
       /Non-2xx/ {e+=$NF} /Socket errors/ {gsub(",", ""); e+=$4+$6+$8+$10}
       END {printf "%s %s %s %d\n", r, p50, p99, e}' "$work/wrk.out"
}

raw=$work/raw.tsv
: > "$raw"
# measure SCENARIO TARGET URL C [SCRIPT]: REPS runs of wrk, each appended to the raw samples.
measure() {
  local rep r p50 p99 e
  for rep in $(seq 1 "$REPS"); do
    read -r r p50 p99 e < <(load "$3" "$4" "${5:-}")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$4" "$rep" "${r:-}" "${p50:-}" "${p99:-}" "${e:-0}" >> "$raw"
  done
}

start_petrel() {
  local port; port=$(free_port)
  pinned "$PETREL" serve --listen "127.0.0.1:$port" --data-dir "$work/petrel-$port" > "$work/petrel.out" 2>/dev/null &
  pids+=($!)
  wait_ok "http://127.0.0.1:$port/healthz"
  PETREL_URL="http://127.0.0.1:$port"
  # Authentication is on: deploys use the owner key the first start wrote; the functions
  # measured are invoke_auth = "public", so requests carry no key (but pass the check).
  PETREL_TOKEN=$(cat "$work/petrel-$port/bootstrap-token")
  export PETREL_TOKEN
}

report=bench/results/$(date -u +%Y%m%dT%H%M%SZ).md
{
  echo "# Petrel benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB,"
  echo "Linux $(uname -r); load average at start $(cut -d' ' -f1-3 /proc/loadavg). Servers on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU,"
  echo "${DURATION}s per measurement, $REPS repetitions. wrk corrects for coordinated omission, so a few stalls raise its p99."
  echo
} > "$report"

warm_http() {
  say "warm-http"
  run_target() { measure warm-http "$1" "$2" 1; measure warm-http "$1" "$2" 64; }
  # peer NAME BINARY URL COMMAND...: measures a peer, or records why it could not be.
  peer() {
    local name=$1 bin=$2 url=$3; shift 3
    if [ ! -x "$bin" ]; then
      printf '%s\t%s\n' "$name" "not installed ($bin is missing)" >> "$work/missing.tsv"; return 0
    fi
    pinned "$@" > /dev/null 2>&1 & pids+=($!)
    if wait_ok "$url"; then
      run_target "$name" "$url"
    else
      printf '%s\t%s\n' "$name" "started but did not answer within 15 s" >> "$work/missing.tsv"
    fi
    stop_all
  }
  local port; port=$(free_port)
  pinned "$HYPER" "127.0.0.1:$port" > /dev/null & pids+=($!); wait_ok "http://127.0.0.1:$port/"
  run_target "hyper (bare, the limit)" "http://127.0.0.1:$port/"; stop_all

  start_petrel
  for ex in examples/hello-wasm bench/hello-wasm-reuse examples/hello-http examples/hello-python examples/hello-node bench/chunked; do PETREL_SERVER=$PETREL_URL "$PETREL" deploy "$ex" > /dev/null; done
  for ex in hello-wasm hello-wasm-reuse hello-http hello-python hello-node hello-chunked; do wait_ok "$PETREL_URL/fn/$ex/"; done
  run_target "Petrel wasm (fresh instance per request)" "$PETREL_URL/fn/hello-wasm/"
  run_target "Petrel wasm (instance_reuse = 1000000)" "$PETREL_URL/fn/hello-wasm-reuse/"
  run_target "Petrel http (Node server)" "$PETREL_URL/fn/hello-http/"
  run_target "Petrel http, chunked answer (Node server)" "$PETREL_URL/fn/hello-chunked/"
  run_target "Petrel python3 handler" "$PETREL_URL/fn/hello-python/"
  run_target "Petrel nodejs handler" "$PETREL_URL/fn/hello-node/"
  if [ "$PROFILE" = 1 ] && command -v perf > /dev/null; then profile_wasm; fi
  stop_all

  port=$(free_port)
  peer "wasmtime serve (fresh instance, default)" "$WASMTIME" "http://127.0.0.1:$port/" \
    "$WASMTIME" serve -S cli=y --addr "127.0.0.1:$port" examples/hello-wasm/hello.wasm
  port=$(free_port)
  peer "wasmtime serve (instances reused)" "$WASMTIME" "http://127.0.0.1:$port/" \
    "$WASMTIME" serve -S cli=y --max-instance-reuse-count 1000000 --addr "127.0.0.1:$port" examples/hello-wasm/hello.wasm

  port=$(free_port)
  sed "s/PORT/$port/" bench/workerd/config.capnp > "$work/config.capnp"; cp bench/workerd/worker.js "$work/"
  peer "workerd (JS hello worker)" "$WORKERD" "http://127.0.0.1:$port/" "$WORKERD" serve "$work/config.capnp"
}

# Where the server's time goes while it serves the wasm hello at one connection: by thread and by
# binary (perf, frame-pointer-free sampling), then the hottest symbols.
profile_wasm() {
  say "profiling Petrel wasm at 1 connection"
  local pid; pid=$(pgrep -f "petrel serve --listen ${PETREL_URL#http://}" | head -1)
  (taskset -c "$LOAD_CPU" wrk -t1 -c1 -d"$((DURATION + 2))s" "$PETREL_URL/fn/hello-wasm/" > /dev/null 2>&1 &)
  sleep 1
  perf record -q -F 2000 -p "$pid" -o "$work/perf.data" -- sleep "$DURATION" > /dev/null 2>&1 || return 0
  sleep 2
  {
    echo "## Profile: Petrel serving the wasm hello at 1 connection (perf, ${DURATION}s)"
    echo
    echo "By thread and by binary (share of samples; the server was pinned to one core):"
    echo
    echo '```'
    perf report -i "$work/perf.data" --no-children -g none --sort comm 2>/dev/null | grep '%' | head -6 || true
    echo
    perf report -i "$work/perf.data" --no-children -g none --sort dso 2>/dev/null | grep '%' | head -6 || true
    echo '```'
    echo
    echo "Hottest symbols:"
    echo
    echo '```'
    perf report -i "$work/perf.data" --no-children -g none --sort sym 2>/dev/null | grep '%' | head -25 || true
    echo '```'
    echo
  } > "$work/profile.md"
}

gateway_overhead() {
  say "gateway-overhead"
  start_petrel
  PETREL_SERVER=$PETREL_URL "$PETREL" deploy examples/hello-http > /dev/null
  PETREL_SERVER=$PETREL_URL "$PETREL" deploy bench/chunked > /dev/null
  wait_ok "$PETREL_URL/fn/hello-http/"
  wait_ok "$PETREL_URL/fn/hello-chunked/"
  local port cport; port=$(free_port); cport=$(free_port)
  (cd examples/hello-http && PORT=$port pinned node server.js > /dev/null) & pids+=($!)
  (cd bench/chunked && PORT=$cport pinned node server.js > /dev/null) & pids+=($!)
  wait_ok "http://127.0.0.1:$port/"
  wait_ok "http://127.0.0.1:$cport/"
  local c rep
  for c in 1 64; do
    for rep in $(seq 1 "$REPS"); do # interleaved, so that drift in the machine hits both alike
      REPS=1 measure gateway-overhead direct "http://127.0.0.1:$port/" "$c"
      REPS=1 measure gateway-overhead petrel "$PETREL_URL/fn/hello-http/" "$c"
      REPS=1 measure gateway-overhead "direct, chunked" "http://127.0.0.1:$cport/" "$c"
      REPS=1 measure gateway-overhead "petrel, chunked" "$PETREL_URL/fn/hello-chunked/" "$c"
    done
  done
  stop_all
}

cold_start() {
  say "cold-start"
  {
    echo "## cold-start: request to response with no instance, median of 20"
    echo
    echo "Each sample deploys a new version (so no instance exists) and times one raw invoke, 0.25 s"
    echo "after the previous one (so standby processes are back). The bare start is the same"
    echo "language's process start, timed the same way in this run. Not pinned: no load runs here."
    echo
    echo "### the default: every process instance in the sandbox, with a cgroup"
    echo
    python3 bench/cold_start.py --petrel "$PETREL" --n 20 \
      --provided "$LAMBDA_RS" --wasm examples/hello-wasm --java examples/hello-java
    echo
    echo "### the sandbox without cgroups (--no-instance-limits)"
    echo
    python3 bench/cold_start.py --petrel "$PETREL" --n 20 --only python3,nodejs,http,provided \
      --provided "$LAMBDA_RS" --serve-arg=--no-instance-limits
    echo
    echo "### baseline: neither (--no-sandbox --no-instance-limits)"
    echo
    python3 bench/cold_start.py --petrel "$PETREL" --n 20 --only python3,nodejs,http,provided \
      --provided "$LAMBDA_RS" --serve-arg=--no-sandbox --serve-arg=--no-instance-limits
    echo
    echo "Peers, from spawning the server to its first answer (median of 20):"
    echo
    python3 bench/start_time.py --n 20 \
      --target "wasmtime serve=$WASMTIME serve -S cli=y --addr 127.0.0.1:{port} examples/hello-wasm/hello.wasm" \
      --target "workerd=$WORKERD serve {config}" --workerd-config bench/workerd/config.capnp
    echo
  } >> "$work/later.md"
}

# Async mode: durable accepts per second (alone and while the queue drains) and completions per
# second, against the synchronous raw invoke in the same run; SQLite, then PostgreSQL.
async_mode() {
  say "async"
  local args=(--petrel "$PETREL" --duration "$DURATION")
  {
    echo "## async"
    echo
    echo "### SQLite, server on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU"
    echo
    python3 bench/async_throughput.py "${args[@]}" --server-cpu "$SERVER_CPU" --load-cpu "$LOAD_CPU"
    echo
    echo "### SQLite, nothing pinned (both cores shared by the server and wrk)"
    echo
    python3 bench/async_throughput.py "${args[@]}"
    echo
    # shellcheck source=/dev/null
    if . scripts/services.sh > /dev/null 2>&1 && [ -n "${PETREL_TEST_POSTGRES_URL:-}" ]; then
      local db="petrel_bench_$$"
      psql -q "$PETREL_TEST_POSTGRES_URL" -c "CREATE DATABASE $db" > /dev/null
      echo "### PostgreSQL (local), nothing pinned"
      echo
      python3 bench/async_throughput.py "${args[@]}" --store "${PETREL_TEST_POSTGRES_URL%/*}/$db"
      psql -q "$PETREL_TEST_POSTGRES_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" > /dev/null
      echo
    else
      echo "PostgreSQL: not measured (scripts/services.sh could not start it)."
      echo
    fi
  } >> "$work/later.md"
}

# The python3 and nodejs hello handlers, warm, in Petrel and in the AWS Lambda Runtime Interface
# Emulator running the same handler under the official runtime client (awslambdaric from PyPI,
# aws-lambda-ric from npm): both called the way the emulator's users call it, a JSON event POSTed
# (Petrel's at /v1/functions/NAME/invoke: its Lambda route wants SigV4, which wrk cannot sign).
# The emulator runs one invocation at a time, and concurrent invocations crash it (a nil pointer
# in rapidcore's Server.Invoke, seen with the 2026-10-30 version), so it is measured at one
# connection; Petrel at both.
RIE=$tools/bin/aws-lambda-rie
lambda_rie() {
  say "lambda-rie"
  [ -x "$RIE" ] || { say "installing aws-lambda-rie (go install)"; GOBIN=$tools/bin go install github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@latest || say "aws-lambda-rie could not be installed"; }
  [ -d "$tools/py/awslambdaric" ] || { say "installing awslambdaric"; python3 -m pip install -q --target "$tools/py" awslambdaric || say "awslambdaric could not be installed"; }
  [ -x "$tools/node_modules/.bin/aws-lambda-ric" ] || { say "installing aws-lambda-ric"; (cd "$tools" && npm install --silent aws-lambda-ric) || say "aws-lambda-ric could not be installed"; }
  local lua=$root/bench/lambda-invoke.lua c port
  start_petrel
  for ex in examples/hello-python examples/hello-node; do PETREL_SERVER=$PETREL_URL "$PETREL" deploy "$ex" > /dev/null; done
  for ex in hello-python hello-node; do wait_ok "$PETREL_URL/fn/$ex/"; done
  for c in 1 64; do
    measure lambda-rie "Petrel python3 handler" "$PETREL_URL/v1/functions/hello-python/invoke" "$c" "$lua"
    measure lambda-rie "Petrel nodejs handler" "$PETREL_URL/v1/functions/hello-node/invoke" "$c" "$lua"
  done
  stop_all
  if [ ! -x "$RIE" ]; then printf '%s\t%s\n' "aws-lambda-rie" "not installed" >> "$work/missing.tsv"; return 0; fi
  rie() { # rie NAME DIR COMMAND...
    local name=$1 dir=$2; shift 2
    port=$(free_port)
    (cd "$dir" && GREETING=Hello PYTHONPATH=$tools/py LOG_LEVEL=error pinned "$RIE" --runtime-interface-emulator-address "127.0.0.1:$port" "$@" > /dev/null 2>&1) & pids+=($!)
    local url="http://127.0.0.1:$port/2015-03-31/functions/function/invocations"
    if wait_ok "$url" -XPOST -d '{}'; then
      measure lambda-rie "$name" "$url" 1 "$lua"
    else
      printf '%s\t%s\n' "$name" "started but did not answer within 15 s" >> "$work/missing.tsv"
    fi
    stop_all
  }
  rie "aws-lambda-rie, python3 (awslambdaric)" examples/hello-python python3 -m awslambdaric app.handler
  rie "aws-lambda-rie, nodejs (aws-lambda-ric)" examples/hello-node "$tools/node_modules/.bin/aws-lambda-ric" index.handler
}

many_functions() {
  say "many-functions ($N)"
  # A failure here must not lose the other scenarios' figures: it is reported instead.
  { echo "## many-functions"; echo; python3 bench/many_wasm.py --petrel "$PETREL" --n "$N" --calls 2000 2>&1 | sed 1d || echo "(bench/many_wasm.py failed)"; echo; } >> "$work/later.md"
}

for s in "${scenarios[@]}"; do
  case "$s" in
    warm-http) warm_http ;;
    gateway-overhead) gateway_overhead ;;
    cold-start) cold_start ;;
    lambda-rie) lambda_rie ;;
    many-functions) many_functions ;;
    async) async_mode ;;
    *) say "unknown scenario $s (warm-http, gateway-overhead, lambda-rie, cold-start, many-functions, async)"; exit 2 ;;
  esac
done
if [ -s "$raw" ]; then python3 bench/report.py "$raw" >> "$report"; fi
if [ -s "$work/missing.tsv" ]; then
  { echo "Peers not measured:"; echo; awk -F'\t' '{printf "- %s: %s\n", $1, $2}' "$work/missing.tsv"; echo; } >> "$report"
fi
if [ -s "$work/profile.md" ]; then cat "$work/profile.md" >> "$report"; fi
if [ -s "$work/later.md" ]; then cat "$work/later.md" >> "$report"; fi
say "report: $report"
cat "$report"
