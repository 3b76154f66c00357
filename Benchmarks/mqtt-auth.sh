#!/usr/bin/env bash
# Device authentication on MQTT CONNECT: 100,000 devices provisioned in the registry (SQLite), each
# with its own token; clients connect as those devices with their tokens as passwords (64 at a time,
# each CONNECT, CONNACK, DISCONNECT on a new TCP connection) and the connects per second are printed.
# Usage: Benchmarks/mqtt-auth.sh [BIN_DIR] (default .build/release). Loopback only.
set -euo pipefail
BIN=${1:-.build/release}
DEVICES=${DEVICES:-100000}
CONNECTS=${CONNECTS:-50000}
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/common.sh"

swift build -c release --package-path "$HERE/mqtt-load" --scratch-path "$HERE/../.build-mqtt-load" >/dev/null
LOAD="$HERE/../.build-mqtt-load/release/MQTTLoad"

mkdir -p "$WORK/data"
"$BIN/iotc" bench provision --store "sqlite:$WORK/data/iotc.db" --devices "$DEVICES" --out "$WORK/tokens.txt"
MQTT_PORT=$(port)
cat > "$WORK/hub.yaml" <<YAML
sources:
  devices: { plugin: mqtt, listen: "127.0.0.1:$MQTT_PORT", authentication: hub, sys_interval: 0 }
sinks:
  out: { plugin: log }
pipelines:
  t: { from: [ "devices:devices/+/telemetry" ], to: [ out ] }
YAML
"$BIN/iotc" serve "$WORK/hub.yaml" --data "$WORK/data" --api "127.0.0.1:$(port)" --plugins "$BIN" --log-level warning > "$WORK/hub.log" 2>&1 &
HUB=$!
wait_port "$MQTT_PORT"
# A first pass warms up (and checks that every token is accepted); the second is measured.
"$LOAD" --port "$MQTT_PORT" --connects 5000 --tokens "$WORK/tokens.txt" --concurrency 64 >/dev/null
echo "MQTT CONNECT with registry tokens, $DEVICES devices provisioned (target: at least 20,000/s):"
"$LOAD" --port "$MQTT_PORT" --connects "$CONNECTS" --tokens "$WORK/tokens.txt" --concurrency 64 | head -1
echo "hub CPU time: $(ps -o times= -p "$HUB" | tr -d ' ') s"
