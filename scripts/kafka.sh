#!/usr/bin/env bash
# Apache Kafka (KRaft) on loopback for the demo, the tests and the bench.
#
#   scripts/kafka.sh [PORT]            one broker+controller on 127.0.0.1:PORT (default 9092;
#                                      env KAFKA_PORT also works), controller on PORT+1000
#   scripts/kafka.sh --cluster [PORT]  three nodes: brokers on PORT, PORT+1, PORT+2 (default
#                                      19092), controllers on PORT+1000.., every node voting
#   scripts/kafka.sh --fetch           only fetch the broker's jars (tests start brokers of
#                                      their own from them: tests/suite/common/broker.rs)
#   scripts/kafka.sh --stop [PORT]     stop what this script started on PORT (by its pids)
#
# The first run fetches the broker's jars through Maven into .tools/kafka/lib (from Maven
# Central: org.apache.kafka:kafka_2.13 and kafka-tools, with log4j2's binding; see
# scripts/kafka/pom.xml) and installs Debian's openjdk-17-jre-headless and maven when
# missing; later runs are offline. Each node's log directory is .tools/kafka/data-<port>,
# formatted once with a fresh cluster id and kept: a restart keeps every topic. Delete the
# directory for an empty broker. Idempotent: a broker already answering on PORT is left as
# it is.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
home="$root/.tools/kafka"
lib="$home/lib"

mode=single
case "${1:-}" in
  --cluster) mode=cluster; shift ;;
  --fetch) mode=fetch; shift ;;
  --stop) mode=stop; shift ;;
esac
if [ "$mode" = cluster ]; then
  port=${1:-19092}
else
  port=${1:-${KAFKA_PORT:-9092}}
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

install_java() {
  local missing=()
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (Debian) for the Kafka broker" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

fetch() {
  install_java
  if [ -f "$lib/.complete" ] && [ "$lib/.complete" -nt "$root/scripts/kafka/pom.xml" ]; then
    return
  fi
  echo "fetching Apache Kafka's broker jars through Maven into .tools/kafka/lib" >&2
  rm -rf "$lib"
  mkdir -p "$lib"
  mvn -q -B -f "$root/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$lib" -DincludeScope=runtime >"$home/maven.log" 2>&1 \
    || { cat "$home/maven.log" >&2; exit 1; }
  touch "$lib/.complete"
}

answers() { python3 "$root/scripts/kafka/metadata.py" "127.0.0.1:$1" 1 2>/dev/null; }

# shellcheck disable=SC2206 # KAFKA_HEAP_OPTS is a list of JVM flags
java_opts=(${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m} -XX:+UseG1GC -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$root/scripts/kafka/log4j2.yaml" -cp "$lib/*")
java_run() { java "${java_opts[@]}" "$@"; }

# node_properties ID BROKER_PORT CONTROLLER_PORT VOTERS REPLICAS
node_properties() {
  local id=$1 bport=$2 cport=$3 voters=$4 replicas=$5
  cat "$root/scripts/kafka/broker.properties"
  cat <<PROPS
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$bport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$bport
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$home/data-$bport
PROPS
  if [ "$replicas" -gt 1 ]; then
    for key in default.replication.factor offsets.topic.replication.factor \
      transaction.state.log.replication.factor share.coordinator.state.topic.replication.factor; do
      echo "$key=$replicas"
    done
    for key in min.insync.replicas transaction.state.log.min.isr share.coordinator.state.topic.min.isr; do
      echo "$key=2"
    done
  fi
}

# start_node ID BROKER_PORT CONTROLLER_PORT VOTERS REPLICAS CLUSTER_ID
start_node() {
  local id=$1 bport=$2 cport=$3 voters=$4 replicas=$5 cluster_id=$6
  local data="$home/data-$bport" props="$home/node-$bport.properties"
  node_properties "$id" "$bport" "$cport" "$voters" "$replicas" >"$props"
  if [ ! -f "$data/meta.properties" ]; then
    mkdir -p "$data"
    java_run kafka.tools.StorageTool format --cluster-id "$cluster_id" --config "$props" \
      >"$home/format-$bport.log" 2>&1 || { cat "$home/format-$bport.log" >&2; exit 1; }
  fi
  nohup java "${java_opts[@]}" kafka.Kafka "$props" >"$home/kafka-$bport.log" 2>&1 &
  echo $! >"$home/kafka-$bport.pid"
}

wait_for() {
  local bport=$1 want=$2
  for _ in $(seq 1 600); do
    local n
    n=$(answers "$bport" || true)
    if [ -n "$n" ] && [ "$n" -ge "$want" ]; then
      return 0
    fi
    if ! kill -0 "$(cat "$home/kafka-$bport.pid")" 2>/dev/null; then
      echo "the broker on $bport exited; its log (.tools/kafka/kafka-$bport.log) ends:" >&2
      tail -20 "$home/kafka-$bport.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "the broker on $bport did not answer within 60 s; see .tools/kafka/kafka-$bport.log" >&2
  exit 1
}

# stop_ports PORT...: TERM to every node at once (a node of a cluster whose voters are gone
# cannot finish a controlled shutdown), up to 30 s for them to exit, then KILL.
stop_ports() {
  local pids=() p pid
  for p in "$@"; do
    [ -f "$home/kafka-$p.pid" ] || continue
    pid=$(cat "$home/kafka-$p.pid")
    kill "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$home/kafka-$p.pid"
  done
  for _ in $(seq 1 300); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}

# Leaves a broker already answering on PORT as it is (exits), else fetches the jars and
# sets cluster_id to a fresh id (used only by a node whose log directory is not formatted).
prepare() {
  if answers "$port" >/dev/null; then
    echo "a Kafka broker already answers on 127.0.0.1:$port" >&2
    exit 0
  fi
  fetch
  cluster_id=$(java_run kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
}

mkdir -p "$home"
case "$mode" in
  fetch)
    fetch
    ;;
  stop)
    stop_ports "$port" $((port + 1)) $((port + 2))
    ;;
  single)
    prepare
    start_node 1 "$port" $((port + 1000)) "1@127.0.0.1:$((port + 1000))" 1 "$cluster_id"
    wait_for "$port" 1
    echo "Apache Kafka on 127.0.0.1:$port (pid $(cat "$home/kafka-$port.pid"), log .tools/kafka/kafka-$port.log, data .tools/kafka/data-$port); stop it with: kill $(cat "$home/kafka-$port.pid")   (or scripts/kafka.sh --stop $port)" >&2
    ;;
  cluster)
    prepare
    voters="1@127.0.0.1:$((port + 1000)),2@127.0.0.1:$((port + 1001)),3@127.0.0.1:$((port + 1002))"
    for i in 0 1 2; do
      start_node $((i + 1)) $((port + i)) $((port + 1000 + i)) "$voters" 3 "$cluster_id"
    done
    for i in 0 1 2; do wait_for $((port + i)) 3; done
    echo "Apache Kafka, three nodes on 127.0.0.1:$port,127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2)) (pids $(cat "$home"/kafka-$port.pid "$home"/kafka-$((port + 1)).pid "$home"/kafka-$((port + 2)).pid | tr '\n' ' '), logs .tools/kafka/kafka-<port>.log); stop them with: scripts/kafka.sh --stop $port" >&2
    ;;
esac
