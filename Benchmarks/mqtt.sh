#!/usr/bin/env bash
# MQTT benchmark: the hub's MQTT server beside mosquitto, in the same run, driven by the project's load
# generator (Benchmarks/mqtt-load, one event-loop thread) with 64-byte payloads. Prints, for each:
#   - 100 publishers to 1 wildcard subscriber at QoS 0 and at QoS 1 (deliveries/s, loss);
#   - 1 publisher to 100 subscribers at QoS 0 (deliveries/s);
#   - 1,000 publishers at 10 messages/s each, QoS 1 (latency p50 and p99);
#   - server memory per idle connection at 10,000 connections;
#   - the hub alone: QoS 1 publishes through a durable pipeline (decode JSON, map, filter, write-ahead
#     log, file sink), acknowledged per second.
# Usage: Benchmarks/mqtt.sh [BIN_DIR] (default .build/release). Loopback only.
set -euo pipefail
BIN=${1:-.build/release}
DURATION=${DURATION:-8}
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/common.sh"
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }

swift build -c release --package-path "$HERE/mqtt-load" --scratch-path "$HERE/../.build-mqtt-load" >/dev/null
LOAD="$HERE/../.build-mqtt-load/release/MQTTLoad"

MOSQ_PORT=$(port); HUB_PORT=$(port); PIPE_PORT=$(port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n' "$MOSQ_PORT" > "$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" >/dev/null 2>&1 &
MOSQ=$!

cat > "$WORK/broker.yaml" <<YAML
sources:
  devices:
    plugin: mqtt
    listen: "127.0.0.1:$HUB_PORT"
    authentication: static
    anonymous: { publish: [ "#" ], subscribe: [ "#" ] }
    sys_interval: 0
  ingest:
    plugin: mqtt
    listen: "127.0.0.1:$PIPE_PORT"
    authentication: static
    anonymous: { publish: [ "#" ], subscribe: [ "#" ] }
    sys_interval: 0
sinks:
  archive: { plugin: file, path: "$WORK/archive.jsonl", max_size: 1GiB, max_files: 1 }
pipelines:
  telemetry:
    from: [ "ingest:load/#" ]
    durable: true
    steps:
      - decode: json
      - map: { temperature_c: "round((temperature_f - 32) / 1.8, 1)", humidity: "humidity", seq: "seq" }
      - filter: "humidity >= 0"
    to: [ archive ]
YAML
"$BIN/iotc" serve "$WORK/broker.yaml" --data "$WORK/data" --api "127.0.0.1:$(port)" --plugins "$BIN" --log-level warning > "$WORK/hub.log" 2>&1 &
HUB=$!
wait_port "$MOSQ_PORT"; wait_port "$HUB_PORT"; wait_port "$PIPE_PORT"

run() {  # label, load arguments...
  local label=$1; shift
  local m h
  m=$("$LOAD" --port "$MOSQ_PORT" --duration "$DURATION" --warmup 2 "$@" | tail -1)
  h=$("$LOAD" --port "$HUB_PORT" --duration "$DURATION" --warmup 2 "$@" | tail -1)
  python3 - "$label" "$m" "$h" <<'PY'
import json, sys
label, m, h = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
if "rate" in label:
    print(f"{label:<44} mosquitto p50 {m['p50_us']:7.0f} us  p99 {m['p99_us']:7.0f} us | hub p50 {h['p50_us']:7.0f} us  p99 {h['p99_us']:7.0f} us  (lost {m['lost']}/{h['lost']})")
else:
    ratio = h['recv_rate'] / m['recv_rate'] if m['recv_rate'] else float('inf')
    print(f"{label:<44} mosquitto {m['recv_rate']:>10,.0f}/s | hub {h['recv_rate']:>10,.0f}/s | x{ratio:4.1f}  (lost {m['lost']}/{h['lost']}, dup {m['dup']}/{h['dup']})")
PY
}

echo "MQTT, 64-byte payloads, ${DURATION} s windows, $(nproc) cores; mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}')"
# Memory first, while both servers are fresh.
for who in mosquitto hub; do
  if [ $who = mosquitto ]; then p=$MOSQ_PORT; pid=$MOSQ; else p=$HUB_PORT; pid=$HUB; fi
  b=$("$LOAD" --port "$p" --idle 10000 --server-pid "$pid" --prefix "idle-$who" | tail -1 | field bytes_per_connection)
  echo "idle connections (10,000): $who $b bytes per connection"
done

run "1000 publishers x 10 msg/s (rate), QoS 1" --pubs 1000 --subs 1 --qos 1 --rate 10
run "100 publishers -> 1 wildcard subscriber, QoS 0" --pubs 100 --subs 1 --qos 0 --filter 'load/#'
run "100 publishers -> 1 wildcard subscriber, QoS 1" --pubs 100 --subs 1 --qos 1 --filter 'load/#'
run "1 publisher -> 100 subscribers, QoS 0" --pubs 1 --subs 100 --qos 0

r=$("$LOAD" --port "$PIPE_PORT" --pubs 50 --subs 0 --qos 1 --json --size 0 --inflight 64 --duration "$DURATION" --warmup 2 | tail -1)
echo "hub, QoS 1 through a durable pipeline (decode, map, filter, WAL, file): $(echo "$r" | field ack_rate | python3 -c 'import sys; print(f"{float(sys.stdin.read()):,.0f}")') acknowledged/s"
