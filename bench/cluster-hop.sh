#!/usr/bin/env bash
# The cost of cluster mode's forwarding hop: two nodes on one PostgreSQL database, a function
# whose home is one of them, called directly at its home and through the other node, with the
# same load generator in one run. Writes bench/results/cluster-hop-DATE.md.
#
#   PETREL_BENCH_STORE=postgres://... bench/cluster-hop.sh   (default: PETREL_TEST_POSTGRES_URL,
#   as scripts/services.sh exports it; a fresh database is made and dropped)
# DURATION (seconds per measurement, default 5) and REPS (default 3) tune it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
DURATION=${DURATION:-5}
REPS=${REPS:-3}
admin=${PETREL_BENCH_STORE:-${PETREL_TEST_POSTGRES_URL:?set PETREL_BENCH_STORE or source scripts/services.sh}}
_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v wrk >/dev/null || { echo "bench: installing wrk" >&2; _sudo apt-get update -qq; _sudo apt-get install -y -qq wrk >/dev/null; }
[ -n "${PETREL:-}" ] || cargo build -q --release
PETREL=${PETREL:-$root/target/release/petrel}
db=petrel_bench_hop_$$
psql "$admin" -qc "CREATE DATABASE $db"
store="${admin%/*}/$db"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true; rm -rf "$work"; }
trap cleanup EXIT
token=petrel_bench-owner-token-0123456789-abcdefghijkl
for n in a b; do
  PETREL_BOOTSTRAP_TOKEN=$token "$PETREL" serve --data-dir "$work/$n" --listen 127.0.0.1:0 --store "$store" \
    --node-id "node-$n" --advertise http://127.0.0.1:0 > "$work/$n.out" 2> "$work/$n.log" &
  pids+=($!)
done
for n in a b; do
  for _ in $(seq 1 200); do grep -q listening "$work/$n.out" 2>/dev/null && break; sleep 0.05; done
done
A=$(sed 's/.* on //' "$work/a.out"); B=$(sed 's/.* on //' "$work/b.out")
sleep 2.5   # both heartbeats seen by both
PETREL_SERVER=$A PETREL_TOKEN=$token "$PETREL" deploy examples/hello-python > /dev/null
path=/fn/hello-python/?name=bench
home=$(curl -s -D - -o /dev/null "$A$path" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-petrel-node" {print $2}')
if [ "$home" = node-a ]; then direct=$A; via=$B; else direct=$B; via=$A; fi
curl -fs -o /dev/null "$via$path"
load() { wrk -t1 -c"$2" -d"${DURATION}s" --latency "$1" 2>&1 | awk '/Requests\/sec/ {r=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {print r, p50, p99}'; }
out=bench/results/cluster-hop-$(date -u +%Y%m%dT%H%M%SZ).md
{
  echo "# Cluster forwarding hop, $(date -u +%F), $(nproc) cores, hello-python (home: $home)"
  echo
  echo "| connections | path | rep | requests/s | p50 | p99 |"
  echo "| --- | --- | --- | --- | --- | --- |"
  for c in 1 16; do
    for rep in $(seq 1 "$REPS"); do
      read -r r p50 p99 < <(load "$direct$path" "$c"); echo "| $c | direct to the home | $rep | $r | $p50 | $p99 |"
      read -r r p50 p99 < <(load "$via$path" "$c"); echo "| $c | through the other node | $rep | $r | $p50 | $p99 |"
    done
  done
} | tee "$out"
echo "bench: wrote $out" >&2
