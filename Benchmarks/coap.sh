#!/usr/bin/env bash
# CoAP benchmark: confirmable requests with 64 in flight (Benchmarks/coap-load, one thread), in the same run
#   - to libcoap's example server (coap-server-openssl -d: no pipeline at all). It answers no POST with
#     success (4.05 everywhere), so both servers get PUT /t/bench-1, which the hub's coap source takes
#     exactly as a POST; the hub's POST figure is printed too;
#   - to the hub's coap source, through a pipeline (decode JSON) into the file sink, without and with
#     the write-ahead log (durable: answered separately once the message is on disk).
# Prints requests per second for each and the hub's share of libcoap's figure. LwM2M is not measured
# here yet (see README). Usage: Benchmarks/coap.sh [BIN_DIR] (default .build/release).
set -euo pipefail
BIN=${1:-.build/release}
DURATION=${DURATION:-8}
IN_FLIGHT=${IN_FLIGHT:-64}
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/common.sh"
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }

swift build -c release --package-path "$HERE/coap-load" --scratch-path "$HERE/../.build-coap-load" >/dev/null
LOAD="$HERE/../.build-coap-load/release/CoAPLoad"

LIB_PORT=$(port); HUB_PORT=$(port); API_PORT=$(port)
coap-server-openssl -A 127.0.0.1 -p "$LIB_PORT" -d 10 >/dev/null 2>&1 &
sleep 0.5
LIB=$("$LOAD" "$LIB_PORT" t/bench-1 "$DURATION" "$IN_FLIGHT" put | field requests_per_s)

run_hub() {  # $1: durable (true/false), $2: post or put
  cat > "$WORK/coap.yaml" <<YAML
sources:
  devices: { plugin: coap, listen: "127.0.0.1:$HUB_PORT" }
sinks:
  out: { plugin: file, path: "$WORK/out.jsonl" }
pipelines:
  telemetry:
    from: [ "devices:devices/+/telemetry" ]
    durable: $1
    steps: [ { decode: auto } ]
    to: [ out ]
auth: { allow_anonymous: true }
YAML
  rm -rf "$WORK/data" "$WORK/out.jsonl"
  "$BIN/iotc" serve "$WORK/coap.yaml" --data "$WORK/data" --api "127.0.0.1:$API_PORT" >"$WORK/hub.log" 2>&1 &
  local hub=$!
  wait_port "$API_PORT"
  "$LOAD" "$HUB_PORT" t/bench-1 "$DURATION" "$IN_FLIGHT" "$2" > "$WORK/result.json"
  kill "$hub"; wait "$hub" 2>/dev/null || true
  field requests_per_s < "$WORK/result.json"
}
HUB=$(run_hub false put)
POST=$(run_hub false post)
DURABLE=$(run_hub true post)

printf 'CoAP confirmable requests, %d in flight, %ss each, 40-byte JSON body\n' "$IN_FLIGHT" "$DURATION"
printf '  libcoap coap-server-openssl, PUT (no pipeline)   %8d req/s\n' "$LIB"
printf '  hub, PUT, pipeline to the file sink              %8d req/s  (%d%% of libcoap; target 70%%)\n' "$HUB" $((HUB * 100 / LIB))
printf '  hub, POST, pipeline to the file sink             %8d req/s  (%d%% of libcoap)\n' "$POST" $((POST * 100 / LIB))
printf '  hub, POST, durable pipeline (write-ahead log)    %8d req/s  (%d%% of libcoap)\n' "$DURABLE" $((DURABLE * 100 / LIB))
