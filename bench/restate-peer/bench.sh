#!/usr/bin/env bash
# Restate 1.7.12 consuming a Kafka topic from Tansu, end to end, in one command:
# start Tansu, restate-server and restate-peer on free loopback ports, register the peer,
# subscribe Bench/run to a 3-partition topic, produce, wait until the peer counted every
# record, print the peer's stats as one JSON line, and clean everything up.
#
#   bench/restate-peer/bench.sh --records 10000                 # backlog: produce first, then subscribe
#   bench/restate-peer/bench.sh --records 20000 --rate 1000     # live: subscribe, then produce at 1000/s
#
# Needs the release build of this crate:
#   (cd bench/restate-peer && CARGO_TARGET_DIR=../../target/restate-peer cargo build --release)
# Env: PEER_BIN_DIR (default target/restate-peer/release), KEEP=1 keeps the work dir and logs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
records=10000
rate=0
partitions=3
restate_partitions=24
while [[ $# -gt 0 ]]; do
  case "$1" in
    --records) records=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --partitions) partitions=$2; shift 2 ;;
    --restate-partitions) restate_partitions=$2; shift 2 ;;
    *) echo "usage: $0 [--records N] [--rate PER_S] [--partitions N] [--restate-partitions N]" >&2; exit 2 ;;
  esac
done

bins=${PEER_BIN_DIR:-$repo/target/restate-peer/release}
[[ -x $bins/restate-peer && -x $bins/restate-peer-produce ]] || { echo "build restate-peer first (see $0)" >&2; exit 1; }
tansu=$("$repo/scripts/provision-tansu")
restate=$("$repo/scripts/provision-restate")

work=$(mktemp -d /tmp/restate-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ ${KEEP:-0} == 1 ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { local deadline=$((SECONDS + 30)); until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do ((SECONDS < deadline)) || { echo "port $1 not up" >&2; exit 1; }; sleep 0.05; done; }
ms() { date +%s%3N; }
count() { curl -sf "http://127.0.0.1:$stats_port/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])'; }

kafka_port=$(free_port); admin_port=$(free_port); ingress_port=$(free_port); node_port=$(free_port)
peer_port=$(free_port); stats_port=$(free_port)
brokers=127.0.0.1:$kafka_port
topic=bench

# 1. Tansu, memory storage, and a topic.
RUST_LOG=warn "$tansu" broker --listener-url "tcp://$brokers" --advertised-listener-url "tcp://$brokers" \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
pids+=($!)
wait_port "$kafka_port"
"$tansu" topic create "$topic" --partitions "$partitions" --broker "tcp://$brokers" >&2

# 2. The peer (Restate service endpoint + stats).
"$bins/restate-peer" --listen "127.0.0.1:$peer_port" --stats "127.0.0.1:$stats_port" >"$work/peer.log" 2>&1 &
pids+=($!)

# 3. restate-server: single node, everything on loopback TCP, data in the work dir.
cat >"$work/restate.toml" <<EOF
node-name = "bench"
cluster-name = "bench"
base-dir = "$work/restate-data"
listen-mode = "tcp"
bind-address = "127.0.0.1:$node_port"
advertised-address = "http://127.0.0.1:$node_port/"
default-num-partitions = $restate_partitions
disable-telemetry = true
# octocrab: restate-server's release check against GitHub, which fails without internet.
log-filter = "warn,restate=info,octocrab=off"
log-disable-ansi-codes = true

[admin]
bind-address = "127.0.0.1:$admin_port"
disable-web-ui = true

[ingress]
bind-address = "127.0.0.1:$ingress_port"

[[ingress.kafka-clusters]]
name = "tansu"
brokers = ["$brokers"]
EOF
started=$(ms)
"$restate" --config-file "$work/restate.toml" --no-logo >"$work/restate.log" 2>&1 &
pids+=($!)
admin=http://127.0.0.1:$admin_port
until curl -sf "$admin/health" >/dev/null; do sleep 0.05; done
echo "restate-server: admin API up after $(( $(ms) - started )) ms" >&2

# 4. Register the peer; retried until the admin API accepts it (schema registry ready).
until curl -sf -X POST "$admin/deployments" -H 'content-type: application/json' \
    -d "{\"uri\":\"http://127.0.0.1:$peer_port\"}" >/dev/null; do sleep 0.1; done
echo "restate-server: deployment registered after $(( $(ms) - started )) ms" >&2

# 5. Subscribe. Options are librdkafka consumer settings:
# - session.timeout.ms: Tansu 0.6 delays a new group's first join by about half of it
#   (librdkafka's default 45 s gives a ~23 s wait; 6 s gives ~3 s).
# - fetch.wait.max.ms: Tansu's fetch loop sleeps about half of it even with data; 10 ms is
#   what the engine's Kafka source uses against Tansu.
options='{"auto.offset.reset":"earliest","session.timeout.ms":"6000","max.poll.interval.ms":"7000","fetch.wait.max.ms":"10"}'
produce() { "$bins/restate-peer-produce" --brokers "$brokers" --topic "$topic" "$@" >&2; }
subscribe() {
  curl -sf -X POST "$admin/subscriptions" -H 'content-type: application/json' \
    -d "{\"source\":\"kafka://tansu/$topic\",\"sink\":\"service://Bench/run\",\"options\":$options}" >&2
  echo >&2
}

if [[ $rate == 0 ]]; then
  produce --count "$records"
  t0=$(ms)
  subscribe
else
  t0=$(ms)
  subscribe
  # One warm-up record: the consumer group is joined once the peer sees it.
  produce --count 1
  until [[ $(count) -ge 1 ]]; do sleep 0.1; done
  echo "consumer live after $(( $(ms) - t0 )) ms" >&2
  curl -sf -X POST "http://127.0.0.1:$stats_port/reset" >/dev/null
  produce --count "$records" --rate "$rate"
fi

# 6. Wait until the peer counted every record.
deadline=$((SECONDS + 600))
until [[ $(count) -ge $records ]]; do
  ((SECONDS < deadline)) || { echo "timeout: peer counted $(count) of $records" >&2; exit 1; }
  sleep 0.1
done
echo "all $records processed $(( $(ms) - t0 )) ms after subscribing" >&2

errors=$(grep -cE '(WARN|ERROR)' "$work/restate.log" || true)
echo "restate-server log: $errors WARN/ERROR lines" >&2
curl -sf "http://127.0.0.1:$stats_port/stats"
echo
