#!/usr/bin/env bash
# Installs (when missing) and starts the services Petrel's tests need, idempotently.
# Source it to get the services' addresses exported:  . scripts/services.sh
#   PETREL_TEST_POSTGRES_URL  PostgreSQL (Debian's package)
#   PETREL_TEST_KAFKA         Apache Kafka 4.x in KRaft mode, one node (jars from Maven Central)
#   PETREL_TEST_NATS          nats-server with JetStream (Debian's package)
#   PETREL_TEST_REDIS         redis-server (Debian's package)
#   PETREL_TEST_AMQP          RabbitMQ (Debian's package), its own node, ports and data
#   PETREL_TEST_MQTT          Mosquitto (Debian's package)
#   PETREL_TEST_MYSQL         MariaDB (Debian's package) with a row-based binlog
#   PETREL_TEST_S3            an S3-compatible store: Versity's versitygw (Apache-2.0, Go, from the
#                             Go module proxy) over a local directory; PETREL_TEST_VERSITYGW is its
#                             binary, for tests that start one of their own
#   PETREL_TEST_HELM          helm (built from the Go module proxy), for the chart test
# PostgreSQL's cluster gets wal_level = logical (a restart, once) for the change-stream tests.
# Each is left alone when its variable is already set, and a running one is reused.
# Needs root (or sudo) on a fresh machine to install packages.
set -euo pipefail

_petrel_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
_petrel_as_postgres() { if command -v runuser >/dev/null && [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }

petrel_start_postgres() {
  if [ -n "${PETREL_TEST_POSTGRES_URL:-}" ]; then
    echo "services: using PETREL_TEST_POSTGRES_URL from the environment"
    return 0
  fi
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v pg_ctlcluster >/dev/null; then
    echo "services: installing PostgreSQL from Debian's packages"
    _petrel_sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive _petrel_sudo apt-get install -y -qq postgresql >/dev/null
  fi
  local ver
  ver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$ver main"; then
    _petrel_sudo pg_createcluster "$ver" main >/dev/null
  fi
  if ! pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $4}' | grep -q online; then
    _petrel_sudo pg_ctlcluster "$ver" main start
  fi
  local port
  port=$(pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $3}')
  for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.2
  done
  pg_isready -h 127.0.0.1 -p "$port" >/dev/null
  # A role for the tests that may create (and drop) one database per test.
  # The change-stream tests read logical replication (pgoutput): the cluster needs
  # wal_level = logical, which takes a restart the first time.
  if [ "$(_petrel_as_postgres psql -tAq -p "$port" -c 'SHOW wal_level')" != logical ]; then
    echo "services: setting PostgreSQL's wal_level to logical (restarts the cluster once)"
    _petrel_as_postgres psql -q -p "$port" -c "ALTER SYSTEM SET wal_level = logical" >/dev/null
    _petrel_sudo pg_ctlcluster "$ver" main restart
    for _ in $(seq 1 50); do
      pg_isready -q -h 127.0.0.1 -p "$port" && break
      sleep 0.2
    done
  fi
  _petrel_as_postgres psql -q -p "$port" -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'petrel_test') THEN
    CREATE ROLE petrel_test LOGIN PASSWORD 'petrel_test' CREATEDB;
  END IF;
END $$;
-- A postgres trigger creates its replication slot.
ALTER ROLE petrel_test REPLICATION;
SQL
  export PETREL_TEST_POSTGRES_URL="postgres://petrel_test:petrel_test@127.0.0.1:${port}/postgres"
  echo "services: PostgreSQL $ver on port $port (PETREL_TEST_POSTGRES_URL=$PETREL_TEST_POSTGRES_URL)"
}

# Where downloaded jars and the brokers' data live between runs.
PETREL_SERVICES_DIR="${PETREL_SERVICES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/petrel-services}"
PETREL_KAFKA_VERSION="${PETREL_KAFKA_VERSION:-4.4.0}"
PETREL_KAFKA_PORT="${PETREL_KAFKA_PORT:-19092}"
PETREL_NATS_PORT="${PETREL_NATS_PORT:-14222}"
PETREL_REDIS_PORT="${PETREL_REDIS_PORT:-16379}"
PETREL_AMQP_PORT="${PETREL_AMQP_PORT:-15682}"
PETREL_MQTT_PORT="${PETREL_MQTT_PORT:-11883}"
PETREL_MYSQL_PORT="${PETREL_MYSQL_PORT:-13306}"
PETREL_S3_PORT="${PETREL_S3_PORT:-19000}"
PETREL_VERSITYGW_VERSION="${PETREL_VERSITYGW_VERSION:-v1.8.0}"
PETREL_HELM_VERSION="${PETREL_HELM_VERSION:-v4.3.2}"

_petrel_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# _petrel_wait_port PORT SECONDS NAME LOG: waits for a service to listen, else says where to look.
_petrel_wait_port() {
  local i
  for i in $(seq 1 $(($2 * 10))); do
    _petrel_port_open "$1" && return 0
    sleep 0.1
  done
  echo "services: $3 did not start within $2 s; see $4" >&2
  [ -f "$4" ] && tail -n 20 "$4" >&2
  return 1
}
# _petrel_need CMD PACKAGE: installs the Debian package when the command is missing.
_petrel_need() {
  command -v "$1" >/dev/null && return 0
  echo "services: installing $2 from Debian's packages"
  _petrel_sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive _petrel_sudo apt-get install -y -qq "$2" >/dev/null
}

petrel_start_kafka() {
  if [ -n "${PETREL_TEST_KAFKA:-}" ]; then
    echo "services: using PETREL_TEST_KAFKA from the environment"
    return 0
  fi
  local dir="$PETREL_SERVICES_DIR/kafka-$PETREL_KAFKA_VERSION"
  local port="$PETREL_KAFKA_PORT" cport=$((PETREL_KAFKA_PORT + 1))
  if ! _petrel_port_open "$port"; then
    _petrel_need java openjdk-17-jre-headless
    _petrel_need mvn maven
    mkdir -p "$dir"
    if [ ! -f "$dir/libs/.complete" ]; then
      echo "services: fetching Apache Kafka $PETREL_KAFKA_VERSION and its dependencies from Maven Central"
      cat >"$dir/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
  <groupId>dev.petrel</groupId><artifactId>kafka-broker</artifactId><version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$PETREL_KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.25.5</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.17</version></dependency>
  </dependencies>
</project>
POM
      rm -rf "$dir/libs"
      (cd "$dir" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$dir/libs" -DincludeScope=runtime)
      touch "$dir/libs/.complete"
    fi
    cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
    cat >"$dir/log4j2.properties" <<LOG
rootLogger.level=WARN
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=$dir/kafka.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
LOG
    local java=(java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
      "-Dlog4j2.configurationFile=$dir/log4j2.properties" -cp "$dir/libs/*")
    if [ ! -f "$dir/data/meta.properties" ]; then
      "${java[@]}" kafka.tools.StorageTool format -t "$("${java[@]}" kafka.tools.StorageTool random-uuid)" \
        -c "$dir/server.properties" >/dev/null
    fi
    echo "services: starting Apache Kafka $PETREL_KAFKA_VERSION on port $port"
    nohup "${java[@]}" kafka.Kafka "$dir/server.properties" >"$dir/stdout.log" 2>&1 &
    _petrel_wait_port "$port" 30 Kafka "$dir/stdout.log" || return 1
  fi
  export PETREL_TEST_KAFKA="127.0.0.1:$port"
  echo "services: Apache Kafka at $PETREL_TEST_KAFKA"
}

petrel_start_nats() {
  if [ -n "${PETREL_TEST_NATS:-}" ]; then
    echo "services: using PETREL_TEST_NATS from the environment"
    return 0
  fi
  local port="$PETREL_NATS_PORT" dir="$PETREL_SERVICES_DIR/nats"
  if ! _petrel_port_open "$port"; then
    _petrel_need nats-server nats-server
    mkdir -p "$dir"
    echo "services: starting nats-server (JetStream) on port $port"
    nohup nats-server -a 127.0.0.1 -p "$port" -js -sd "$dir/jetstream" >"$dir/nats.log" 2>&1 &
    _petrel_wait_port "$port" 5 nats-server "$dir/nats.log" || return 1
  fi
  export PETREL_TEST_NATS="nats://127.0.0.1:$port"
  echo "services: NATS at $PETREL_TEST_NATS"
}

petrel_start_redis() {
  if [ -n "${PETREL_TEST_REDIS:-}" ]; then
    echo "services: using PETREL_TEST_REDIS from the environment"
    return 0
  fi
  local port="$PETREL_REDIS_PORT" dir="$PETREL_SERVICES_DIR/redis"
  if ! _petrel_port_open "$port"; then
    _petrel_need redis-server redis-server
    mkdir -p "$dir"
    echo "services: starting redis-server on port $port"
    redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$dir" \
      --logfile "$dir/redis.log" --save "" --appendonly no >/dev/null
    _petrel_wait_port "$port" 5 redis-server "$dir/redis.log" || return 1
  fi
  export PETREL_TEST_REDIS="redis://127.0.0.1:$port/0"
  echo "services: Redis at $PETREL_TEST_REDIS"
}

petrel_start_amqp() {
  if [ -n "${PETREL_TEST_AMQP:-}" ]; then
    echo "services: using PETREL_TEST_AMQP from the environment"
    return 0
  fi
  local port="$PETREL_AMQP_PORT" dir="$PETREL_SERVICES_DIR/rabbitmq"
  if ! _petrel_port_open "$port"; then
    if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
      _petrel_sudo apt-get update -qq
      echo "services: installing rabbitmq-server from Debian's packages"
      DEBIAN_FRONTEND=noninteractive _petrel_sudo apt-get install -y -qq rabbitmq-server >/dev/null
    fi
    mkdir -p "$dir"
    echo "[]." >"$dir/enabled_plugins"
    echo "listeners.tcp.default = 127.0.0.1:$port" >"$dir/rabbitmq.conf"
    echo "services: starting RabbitMQ on port $port"
    # A node of its own (name, Erlang ports, cookie, data), apart from any system RabbitMQ.
    (
      export HOME="$dir" RABBITMQ_NODENAME=petrel@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$port" RABBITMQ_DIST_PORT=$((port + 20000)) ERL_EPMD_PORT=$((port - 1313)) \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        RABBITMQ_PID_FILE="$dir/pid"
      nohup /usr/lib/rabbitmq/bin/rabbitmq-server >"$dir/stdout.log" 2>&1 &
    )
    _petrel_wait_port "$port" 60 RabbitMQ "$dir/stdout.log" || return 1
  fi
  export PETREL_TEST_AMQP="amqp://guest:guest@127.0.0.1:$port/%2f"
  echo "services: RabbitMQ at amqp://127.0.0.1:$port"
}

petrel_start_mqtt() {
  if [ -n "${PETREL_TEST_MQTT:-}" ]; then
    echo "services: using PETREL_TEST_MQTT from the environment"
    return 0
  fi
  local port="$PETREL_MQTT_PORT" dir="$PETREL_SERVICES_DIR/mosquitto"
  if ! _petrel_port_open "$port"; then
    _petrel_need mosquitto mosquitto
    mkdir -p "$dir"
    # QoS 1 messages in flight to one client: the default, 20, would cap a batch at 20.
    cat >"$dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $dir/
max_inflight_messages 1000
max_queued_messages 100000
log_dest file $dir/mosquitto.log
CONF
    echo "services: starting Mosquitto on port $port"
    mosquitto -c "$dir/mosquitto.conf" -d
    _petrel_wait_port "$port" 5 Mosquitto "$dir/mosquitto.log" || return 1
  fi
  export PETREL_TEST_MQTT="mqtt://127.0.0.1:$port"
  echo "services: MQTT at $PETREL_TEST_MQTT"
}

petrel_start_mysql() {
  if [ -n "${PETREL_TEST_MYSQL:-}" ]; then
    echo "services: using PETREL_TEST_MYSQL from the environment"
    return 0
  fi
  local port="$PETREL_MYSQL_PORT" dir="$PETREL_SERVICES_DIR/mariadb"
  if ! _petrel_port_open "$port"; then
    _petrel_need mariadbd mariadb-server
    mkdir -p "$dir"
    if [ ! -d "$dir/data/mysql" ]; then
      mariadb-install-db --user="$(id -un)" --datadir="$dir/data" --auth-root-authentication-method=normal \
        >"$dir/install.log" 2>&1
    fi
    echo "services: starting MariaDB on port $port"
    nohup mariadbd --no-defaults --user="$(id -un)" --datadir="$dir/data" --port="$port" \
      --bind-address=127.0.0.1 --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" \
      --log-bin="$dir/data/binlog" --binlog-format=ROW --binlog-row-image=FULL --server-id=1 \
      --log-error="$dir/error.log" >/dev/null 2>&1 &
    _petrel_wait_port "$port" 30 MariaDB "$dir/error.log" || return 1
    # Both hosts: MariaDB takes a connection to 127.0.0.1 as from localhost.
    mariadb --socket="$dir/mysqld.sock" -uroot -e "
      CREATE USER IF NOT EXISTS 'petrel_test'@'%' IDENTIFIED BY 'petrel_test'; GRANT ALL ON *.* TO 'petrel_test'@'%';
      CREATE USER IF NOT EXISTS 'petrel_test'@'localhost' IDENTIFIED BY 'petrel_test'; GRANT ALL ON *.* TO 'petrel_test'@'localhost';"
  fi
  export PETREL_TEST_MYSQL="mysql://petrel_test:petrel_test@127.0.0.1:$port"
  echo "services: MariaDB at $PETREL_TEST_MYSQL"
}

# _petrel_go_tool NAME PACKAGE VERSION: builds a Go command from the module proxy once, into
# $PETREL_SERVICES_DIR/bin/NAME-VERSION, and prints that path.
_petrel_go_tool() {
  local name=$1 pkg=$2 version=$3 bin="$PETREL_SERVICES_DIR/bin/$1-$3"
  if [ ! -x "$bin" ]; then
    _petrel_need go golang-go >&2
    echo "services: building $name $version from the Go module proxy (a few minutes, once)" >&2
    mkdir -p "$PETREL_SERVICES_DIR/bin"
    GOBIN="$PETREL_SERVICES_DIR/bin/tmp" go install "$pkg@$version" >&2
    mv "$PETREL_SERVICES_DIR/bin/tmp/$name" "$bin"
    rmdir "$PETREL_SERVICES_DIR/bin/tmp"
  fi
  echo "$bin"
}

petrel_start_s3() {
  local bin
  bin=$(_petrel_go_tool versitygw github.com/versity/versitygw/cmd/versitygw "$PETREL_VERSITYGW_VERSION") || return 1
  export PETREL_TEST_VERSITYGW="$bin"
  if [ -n "${PETREL_TEST_S3:-}" ]; then
    echo "services: using PETREL_TEST_S3 from the environment"
    return 0
  fi
  local port="$PETREL_S3_PORT" dir="$PETREL_SERVICES_DIR/versitygw"
  if ! _petrel_port_open "$port"; then
    mkdir -p "$dir/data"
    echo "services: starting versitygw on port $port"
    nohup "$bin" --access petrel-test --secret petrel-test-secret --port "127.0.0.1:$port" \
      posix "$dir/data" >"$dir/versitygw.log" 2>&1 &
    _petrel_wait_port "$port" 10 versitygw "$dir/versitygw.log" || return 1
  fi
  export PETREL_TEST_S3="http://petrel-test:petrel-test-secret@127.0.0.1:$port"
  echo "services: S3 (versitygw) at http://127.0.0.1:$port"
}

# Helm, to render the chart in deploy/helm (the chart test validates what it renders).
petrel_install_helm() {
  local bin
  bin=$(_petrel_go_tool helm helm.sh/helm/v4/cmd/helm "$PETREL_HELM_VERSION") || return 1
  export PETREL_TEST_HELM="$bin"
  echo "services: helm at $bin"
}

petrel_start_postgres
petrel_start_kafka
petrel_start_nats
petrel_start_redis
petrel_start_amqp
petrel_start_mqtt
petrel_start_mysql
petrel_start_s3
petrel_install_helm
