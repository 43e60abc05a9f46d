#!/usr/bin/env bash
# Before/after on the warm path: two Petrel binaries side by side, the same functions deployed on
# both, wrk alternating between them so that drift in a shared machine hits both alike.
#
#   bench/ab.sh BEFORE_BINARY AFTER_BINARY
#
# Measures hello-wasm, hello-wasm-reuse, hello-http, hello-chunked, hello-python and hello-node (or FNS) at 1 and 64
# connections (or CONNS), REPS times (default 5) DURATION seconds (default 5) each. Both servers run on
# CPU $SERVER_CPU (one at a time is loaded), wrk on $LOAD_CPU. Prints a markdown table of medians
# and after÷before ratios, and writes it to bench/results/<time>-ab.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: bench/ab.sh BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
before=$(realpath "$1"); after=$(realpath "$2")
DURATION=${DURATION:-5}
REPS=${REPS:-5}
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
command -v wrk > /dev/null || { echo "ab: wrk is missing (apt-get install wrk)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
kill_tree() { local c; for c in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$c"; done; kill "$1" 2>/dev/null || true; }
trap 'for p in "${pids[@]}"; do kill_tree "$p"; done; wait 2>/dev/null; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ok() { for _ in $(seq 1 300); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done; echo "ab: no answer from $1" >&2; return 1; }

if [ ! -f examples/hello-wasm/hello.wasm ]; then
  CARGO_TARGET_DIR=target/wasm-guests cargo build -q --release --target wasm32-wasip2 --manifest-path examples/hello-wasm/Cargo.toml
  cp target/wasm-guests/wasm32-wasip2/release/hello-wasm.wasm examples/hello-wasm/hello.wasm
fi
cp examples/hello-wasm/hello.wasm bench/hello-wasm-reuse/hello.wasm

declare -A url
for side in before after; do
  bin=${!side}
  port=$(free_port)
  taskset -c "$SERVER_CPU" "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/$side" > "$work/$side.log" 2>&1 &
  pids+=($!)
  wait_ok "http://127.0.0.1:$port/healthz"
  for ex in examples/hello-wasm bench/hello-wasm-reuse examples/hello-http examples/hello-python examples/hello-node bench/chunked; do
    # A build with authentication wrote its owner key; one without ignores the token.
    PETREL_TOKEN=$(cat "$work/$side/bootstrap-token" 2>/dev/null || true) \
      PETREL_SERVER=http://127.0.0.1:$port "$bin" deploy "$ex" > /dev/null
  done
  url[$side]=http://127.0.0.1:$port
done

read -r -a fns <<< "${FNS:-hello-wasm hello-http hello-chunked hello-python hello-node}"
read -r -a conns <<< "${CONNS:-1 64}"
for side in before after; do for fn in "${fns[@]}"; do wait_ok "${url[$side]}/fn/$fn/"; done; done

raw=$work/raw.tsv
: > "$raw"
for fn in "${fns[@]}"; do
  for c in "${conns[@]}"; do
    for rep in $(seq 1 "$REPS"); do
      # Alternate which side goes first, so that neither always runs on a machine warmed by the other.
      order=(before after); [ $((rep % 2)) = 0 ] && order=(after before)
      for side in "${order[@]}"; do
        taskset -c "$LOAD_CPU" wrk -t1 -c"$c" -d"${DURATION}s" --latency "${url[$side]}/fn/$fn/" > "$work/wrk.out" 2>&1 || true
        awk -v s="$side" -v f="$fn" -v c="$c" \
          '/Requests\/sec/ {r=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {printf "%s\t%s\t%s\t%s\t%s\t%s\n", f, c, s, r, p50, p99}' \
          "$work/wrk.out" >> "$raw"
      done
    done
  done
done

report=bench/results/$(date -u +%Y%m%dT%H%M%SZ)-ab.md
python3 - "$raw" "$before" "$after" "$REPS" "$DURATION" "$(cut -d' ' -f1-3 /proc/loadavg)" > "$report" <<'EOF'
import statistics, sys
raw, before, after, reps, duration, load = sys.argv[1:]

def seconds(s):
    for unit, f in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * f
    return float("nan")

def show(t):
    return f"{t * 1e6:.0f} µs" if t < 1e-3 else f"{t * 1e3:.2f} ms"

rows = {}
for line in open(raw):
    fn, c, side, r, p50, p99 = line.rstrip("\n").split("\t")
    d = rows.setdefault((fn, int(c)), {}).setdefault(side, {"r": [], "p50": [], "p99": []})
    d["r"].append(float(r or "nan")); d["p50"].append(seconds(p50)); d["p99"].append(seconds(p99))

print("# Petrel before/after, warm path\n")
print(f"Before: `{before}`; after: `{after}`. wrk alternating between the two servers, {reps} runs of")
print(f"{duration}s each per row; medians. Load average at the end: {load}.\n")
print("Requests/s are medians with [min–max] over the runs; the ratio is of the medians, with the")
print("median of the ratios of runs made back to back after it.\n")
print("| function | connections | before req/s | after req/s | after ÷ before (paired) | before p50 | after p50 | before p99 | after p99 |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for (fn, c), d in rows.items():
    m = {s: {k: statistics.median(v) for k, v in d[s].items()} for s in d}
    b, a = m["before"], m["after"]
    spread = {s: f"{min(d[s]['r']):,.0f}–{max(d[s]['r']):,.0f}" for s in d}
    paired = statistics.median(x / y for x, y in zip(d["after"]["r"], d["before"]["r"]))
    print(f"| {fn} | {c} | {b['r']:,.0f} [{spread['before']}] | {a['r']:,.0f} [{spread['after']}] | {a['r'] / b['r']:.2f} ({paired:.2f}) "
          f"| {show(b['p50'])} | {show(a['p50'])} | {show(b['p99'])} | {show(a['p99'])} |")
EOF
cat "$report"
