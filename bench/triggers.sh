#!/usr/bin/env bash
# The event triggers' benchmark: records per second from Kafka, JetStream, Redis Streams, RabbitMQ
# and MQTT through a
# no-op wasm function (examples/hello-wasm answers every POST), against the same client
# libraries draining the same backlog bare (bench/trigger-bare: read and commit per batch,
# invoke nothing), in the same run; how long the backlog takes to drain; and, at low load, the
# time from produce to the function's invocation (p50, p99), and from a COMMIT in PostgreSQL or
# MariaDB to the change's invocation.
#
#   bench/triggers.sh            N (backlog records, default 100000), MQTT_N (default 20000: MQTT
#                                is measured live, publishing while consuming), BATCH (default 100),
#                                REPS (default 3), PETREL=/path/to/petrel (default: build)
#
# Brokers and databases come from scripts/services.sh. Writes bench/results/<UTC>-triggers.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
N=${N:-100000}
BATCH=${BATCH:-100}
REPS=${REPS:-3}
LOW=${LOW:-200}
MQTT_N=${MQTT_N:-20000}
say() { echo "bench: $*" >&2; }
. scripts/services.sh >&2
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; cp "$work/petrel.out" bench/results/last-triggers-server.log 2>/dev/null; rm -rf "$work"' EXIT

say "building Petrel, the bare clients and the hello component (release)"
if [ -z "${PETREL:-}" ]; then cargo build -q --release; fi
PETREL=${PETREL:-$root/target/release/petrel}
CARGO_TARGET_DIR=$root/target cargo build -q --release --manifest-path bench/trigger-bare/Cargo.toml
BARE=$root/target/release/trigger-bare
CARGO_TARGET_DIR=$root/target/wasm-guests cargo build -q --release --target wasm32-wasip2 --manifest-path examples/hello-wasm/Cargo.toml
cp target/wasm-guests/wasm32-wasip2/release/hello-wasm.wasm examples/hello-wasm/hello.wasm

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$port
"$PETREL" serve --listen "127.0.0.1:$port" --data-dir "$work/data" > "$work/petrel.out" 2>&1 &
pid=$!
for _ in $(seq 1 300); do curl -fs -o /dev/null "$URL/healthz" && break; sleep 0.05; done

# A no-op wasm function with one trigger ($1: the trigger's TOML body).
deploy() {
  local name=$1 trigger=$2 dir=$work/$1
  mkdir -p "$dir"
  cp examples/hello-wasm/hello.wasm "$dir/"
  printf 'name = "%s"\nruntime = "wasm"\nhandler = "hello.wasm"\nmemory_mb = 64\n\n[[trigger]]\nname = "t"\n%s\n' "$name" "$trigger" > "$dir/petrel.toml"
  PETREL_SERVER=$URL "$PETREL" deploy "$dir" > /dev/null
}

# Waits until function $1's trigger has delivered $2 records; prints "records/s drain_s":
# the rate over the span of its batches' invocation records (from the first one's start to the
# last one's end: exact, where the stored counts move once a second), and the time from the
# deploy until the counts said all were delivered.
drain() {
  python3 - "$URL" "$1" "$2" "$3" <<'PY'
import json, sys, time, urllib.request
url, fn, n, t0 = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
while True:
    t = json.load(urllib.request.urlopen(f"{url}/v1/functions/{fn}/triggers"))["triggers"][0]
    now = time.time()
    d = t["delivered"]
    if d >= n:
        time.sleep(1.5)  # the record writer is asynchronous
        recs = json.load(urllib.request.urlopen(f"{url}/v1/functions/{fn}/invocations?limit=100000"))["invocations"]
        recs = [r for r in recs if ":" in r["trigger"]]
        span = (max(r["started_at"] + r["duration_ms"] for r in recs) - min(r["started_at"] for r in recs)) / 1000
        print(f"{n / max(span, 1e-3):.0f} {now - t0:.2f}")
        break
    if now - t0 > 600:
        print("nan nan"); break
    time.sleep(0.05)
PY
}

median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:] if x not in ("nan", "")]; print(f"{statistics.median(v):.0f}" if v else "n/a")' "$@"; }

declare -a kb kp kd nb np nd rb rp rd ab ap ad mb mp md
for rep in $(seq 1 "$REPS"); do
  tag=$(date +%s)$rep
  say "rep $rep: Kafka backlog of $N records (2 partitions)"
  "$BARE" produce-kafka "$PETREL_TEST_KAFKA" "bench-bare-$tag" 2 "$N"
  "$BARE" produce-kafka "$PETREL_TEST_KAFKA" "bench-petrel-$tag" 2 "$N"
  kb+=("$("$BARE" drain-kafka "$PETREL_TEST_KAFKA" "bench-bare-$tag" "g-$tag" "$N" "$BATCH")")
  t0=$(python3 -c 'import time; print(time.time())')
  deploy "kafka-$tag" "kind = \"kafka\"
brokers = [\"$PETREL_TEST_KAFKA\"]
topic = \"bench-petrel-$tag\"
starting_position = \"earliest\"
batch_size = $BATCH"
  read -r rate secs < <(drain "kafka-$tag" "$N" "$t0")
  kp+=("$rate"); kd+=("$secs")
  PETREL_SERVER=$URL "$PETREL" rm "kafka-$tag" > /dev/null

  say "rep $rep: JetStream backlog of $N messages"
  "$BARE" produce-nats "$PETREL_TEST_NATS" "BAREB$tag" "bare$tag" "$N"
  "$BARE" produce-nats "$PETREL_TEST_NATS" "PETRELB$tag" "petrel$tag" "$N"
  nb+=("$("$BARE" drain-nats "$PETREL_TEST_NATS" "BAREB$tag" "d$tag" "$N" "$BATCH")")
  t0=$(python3 -c 'import time; print(time.time())')
  deploy "nats-$tag" "kind = \"nats\"
servers = [\"$PETREL_TEST_NATS\"]
stream = \"PETRELB$tag\"
starting_position = \"earliest\"
batch_size = $BATCH"
  read -r rate secs < <(drain "nats-$tag" "$N" "$t0")
  np+=("$rate"); nd+=("$secs")
  PETREL_SERVER=$URL "$PETREL" rm "nats-$tag" > /dev/null

  say "rep $rep: Redis stream backlog of $N entries"
  "$BARE" produce-redis "$PETREL_TEST_REDIS" "bare-$tag" "$N"
  "$BARE" produce-redis "$PETREL_TEST_REDIS" "petrel-$tag" "$N"
  rb+=("$("$BARE" drain-redis "$PETREL_TEST_REDIS" "bare-$tag" "g-$tag" "$N" "$BATCH")")
  t0=$(python3 -c 'import time; print(time.time())')
  deploy "redis-$tag" "kind = \"redis\"
url = \"$PETREL_TEST_REDIS\"
stream = \"petrel-$tag\"
starting_position = \"earliest\"
batch_size = $BATCH"
  read -r rate secs < <(drain "redis-$tag" "$N" "$t0")
  rp+=("$rate"); rd+=("$secs")
  PETREL_SERVER=$URL "$PETREL" rm "redis-$tag" > /dev/null

  say "rep $rep: RabbitMQ backlog of $N messages"
  "$BARE" produce-amqp "$PETREL_TEST_AMQP" "bare-$tag" "$N"
  "$BARE" produce-amqp "$PETREL_TEST_AMQP" "petrel-$tag" "$N"
  ab+=("$("$BARE" drain-amqp "$PETREL_TEST_AMQP" "bare-$tag" "$N" "$BATCH")")
  t0=$(python3 -c 'import time; print(time.time())')
  deploy "amqp-$tag" "kind = \"amqp\"
url = \"$PETREL_TEST_AMQP\"
queue = \"petrel-$tag\"
batch_size = $BATCH"
  read -r rate secs < <(drain "amqp-$tag" "$N" "$t0")
  ap+=("$rate"); ad+=("$secs")
  PETREL_SERVER=$URL "$PETREL" rm "amqp-$tag" > /dev/null

  say "rep $rep: MQTT, $MQTT_N messages published while consumed"
  mb+=("$("$BARE" mqtt-live "$PETREL_TEST_MQTT" "bench/bare/$tag" "$MQTT_N" "$BATCH" bare)")
  deploy "mqtt-$tag" "kind = \"mqtt\"
url = \"$PETREL_TEST_MQTT\"
topic = \"bench/petrel/$tag\"
batch_size = $BATCH"
  for _ in $(seq 1 100); do
    curl -fs "$URL/v1/functions/mqtt-$tag/triggers" | grep -q '"state":"running"' && break
    sleep 0.1
  done
  t0=$(python3 -c 'import time; print(time.time())')
  "$BARE" mqtt-live "$PETREL_TEST_MQTT" "bench/petrel/$tag" "$MQTT_N" "$BATCH"
  read -r rate secs < <(drain "mqtt-$tag" "$MQTT_N" "$t0")
  mp+=("$rate"); md+=("$secs")
  PETREL_SERVER=$URL "$PETREL" rm "mqtt-$tag" > /dev/null
done

# Change streams: $LOW single-row transactions at 10/s; prints "p50 ms p50, p99 ms p99" of the
# time from each COMMIT's return to the start of the invocation that got it.
change_latency() {
  local kind=$1 fn=$2 exec_sql=$3
  sleep 2
  python3 - "$URL" "$fn" "$LOW" "$kind" "$exec_sql" <<'PY'
import json, subprocess, sys, time, urllib.request
url, fn, n, kind, cmd = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
sent = []
for i in range(n):
    subprocess.run(cmd.replace("ID", str(i)), shell=True, check=True, stdout=subprocess.DEVNULL)
    sent.append(time.time() * 1000)
    time.sleep(0.1)
time.sleep(3)
recs = json.load(urllib.request.urlopen(f"{url}/v1/functions/{fn}/invocations?limit=10000"))["invocations"]
starts = sorted(r["started_at"] for r in recs if r["trigger"].startswith(kind + ":"))
if len(starts) != len(sent):
    print(f"n/a ({len(starts)} invocations for {len(sent)} changes)"); sys.exit()
d = sorted(s - p for s, p in zip(starts, sent))
q = lambda p: d[min(len(d) - 1, int(p * len(d)))]
print(f"{q(0.5):.0f} ms p50, {q(0.99):.0f} ms p99 (n={len(d)})")
PY
}

say "change streams: $LOW commits at 10/s into PostgreSQL and MariaDB"
tag=cs$(date +%s)
psql -q "$PETREL_TEST_POSTGRES_URL" -c "CREATE DATABASE bench_$tag" >/dev/null
pg_url="${PETREL_TEST_POSTGRES_URL%/*}/bench_$tag"
psql -q "$pg_url" -c "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t" >/dev/null
deploy "pg-$tag" "kind = \"postgres\"
url = \"$pg_url\"
publication = \"p\""
pg_latency=$(change_latency postgres "pg-$tag" "psql -q '$pg_url' -c 'INSERT INTO t VALUES (ID)'")
PETREL_SERVER=$URL "$PETREL" rm "pg-$tag" > /dev/null
sleep 1
psql -q "$PETREL_TEST_POSTGRES_URL" -c "DROP DATABASE bench_$tag WITH (FORCE)" >/dev/null || true
my=${PETREL_TEST_MYSQL#mysql://}; my_user=${my%%:*}; my_rest=${my#*:}; my_pass=${my_rest%%@*}; my_hp=${my_rest#*@}
mysql_cmd="mariadb -h ${my_hp%:*} -P ${my_hp#*:} -u $my_user -p$my_pass"
$mysql_cmd -e "CREATE DATABASE bench_$tag; CREATE TABLE bench_$tag.t (id INT PRIMARY KEY)"
deploy "my-$tag" "kind = \"mysql\"
url = \"$PETREL_TEST_MYSQL\"
tables = [\"bench_$tag.t\"]"
my_latency=$(change_latency mysql "my-$tag" "$mysql_cmd -e 'INSERT INTO bench_$tag.t VALUES (ID)'")
PETREL_SERVER=$URL "$PETREL" rm "my-$tag" > /dev/null
$mysql_cmd -e "DROP DATABASE bench_$tag" || true

say "low load: $LOW records at 20/s, batch_window = 0"
tag=lat$(date +%s)
"$BARE" produce-kafka "$PETREL_TEST_KAFKA" "bench-lat-$tag" 1 0
deploy "lat-$tag" "kind = \"kafka\"
brokers = [\"$PETREL_TEST_KAFKA\"]
topic = \"bench-lat-$tag\"
starting_position = \"earliest\"
batch_size = $BATCH
batch_window = \"0s\""
sleep 3
"$BARE" paced-kafka "$PETREL_TEST_KAFKA" "bench-lat-$tag" "$LOW" 20 > "$work/sent"
sleep 2
latency=$(python3 - "$URL" "lat-$tag" "$work/sent" <<'PY'
import json, statistics, sys, urllib.request
url, fn, sent = sys.argv[1], sys.argv[2], [int(l) for l in open(sys.argv[3])]
recs = json.load(urllib.request.urlopen(f"{url}/v1/functions/{fn}/invocations?limit=10000"))["invocations"]
starts = sorted(r["started_at"] for r in recs if r["trigger"].startswith("kafka:"))
if len(starts) != len(sent):
    print(f"n/a (batched: {len(starts)} invocations for {len(sent)} records)"); sys.exit()
d = sorted(s - p for s, p in zip(starts, sent))
q = lambda p: d[min(len(d) - 1, int(p * len(d)))]
print(f"{q(0.5)} ms p50, {q(0.99)} ms p99 (n={len(d)})")
PY
)

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/results/$stamp-triggers.md
{
  echo "# Triggers benchmark, $stamp"
  echo
  echo "$(nproc) cores; N=$N records per backlog, batch_size=$BATCH, $REPS runs (median, all runs in brackets)."
  echo "Petrel: a no-op wasm function (examples/hello-wasm). Bare: the same client library reading and committing per $BATCH, invoking nothing."
  echo
  echo "| source | bare records/s | Petrel records/s (over its batches' span) | ratio | Petrel: deploy to drained (s) |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  ratio() { python3 -c "import sys
try: print(f'{float(sys.argv[2])/float(sys.argv[1]):.2f}')
except ValueError: print('n/a')" "$1" "$2"; }
  mkb=$(median "${kb[@]}"); mkp=$(median "${kp[@]}"); mnb=$(median "${nb[@]}"); mnp=$(median "${np[@]}")
  echo "| Kafka (librdkafka, 2 partitions) | $mkb [${kb[*]}] | $mkp [${kp[*]}] | $(ratio "$mkb" "$mkp") | $(median "${kd[@]}") [${kd[*]}] |"
  echo "| NATS JetStream (async-nats) | $mnb [${nb[*]}] | $mnp [${np[*]}] | $(ratio "$mnb" "$mnp") | $(median "${nd[@]}") [${nd[*]}] |"
  mrb=$(median "${rb[@]}"); mrp=$(median "${rp[@]}")
  echo "| Redis Streams (redis-rs) | $mrb [${rb[*]}] | $mrp [${rp[*]}] | $(ratio "$mrb" "$mrp") | $(median "${rd[@]}") [${rd[*]}] |"
  mab=$(median "${ab[@]}"); map=$(median "${ap[@]}"); mmb=$(median "${mb[@]}"); mmp=$(median "${mp[@]}")
  echo "| RabbitMQ (amqprs) | $mab [${ab[*]}] | $map [${ap[*]}] | $(ratio "$mab" "$map") | $(median "${ad[@]}") [${ad[*]}] |"
  echo "| MQTT QoS 1, live, $MQTT_N messages (rumqttc) | $mmb [${mb[*]}] | $mmp [${mp[*]}] | $(ratio "$mmb" "$mmp") | $(median "${md[@]}") [${md[*]}] |"
  echo
  echo "Produce to invocation at low load (Kafka, 20 records/s, batch_window 0): $latency"
  echo
  echo "COMMIT to invocation, one row per transaction at 10/s: PostgreSQL $pg_latency; MariaDB $my_latency"
} > "$out"
cat "$out"
