#!/usr/bin/env bash
# CoAP benchmark: confirmable requests with 64 in flight (Benchmarks/coap-load, one thread), in the same run
#   - to libcoap's example server (coap-server-openssl -d: no pipeline at all). It answers no POST with
#     success (4.05 everywhere), so both servers get PUT /t/bench-1, which the hub's coap source takes
#     exactly as a POST; the hub's POST figure is printed too;
#   - to the hub's coap source, through a pipeline (decode JSON) into the file sink, without and with
#     the write-ahead log (durable: answered separately once the message is on disk).
# This machine's speed drifts by up to 25 % within a minute, so libcoap and the hub (PUT) are measured in
# ROUNDS alternating rounds (default 5) of DURATION seconds each (default 5), and each hub round is
# compared with the libcoap round just before it; POST and durable POST are measured once each after.
# Prints requests per second for each and the hub's share of libcoap's figure. Then LwM2M: LWM2M_CLIENTS
# (default 10,000) simulated clients, one UDP socket each, register with the hub's lwm2m source and
# hold for LWM2M_HOLD seconds (default 65) sending an Update every 60 s; prints the registrations, the
# updates answered, and the hub's resident memory before and after, per client.
# Usage: Benchmarks/coap.sh [BIN_DIR] (default .build/release).
set -euo pipefail
BIN=${1:-.build/release}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-5}
IN_FLIGHT=${IN_FLIGHT:-64}
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/common.sh"
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }

swift build -c release --package-path "$HERE/coap-load" --scratch-path "$HERE/../.build-coap-load" >/dev/null
LOAD="$HERE/../.build-coap-load/release/CoAPLoad"

HUB_PORT=$(port); API_PORT=$(port)
libcoap_round() {  # one round against libcoap's example server (a fresh one, as the hub is)
  local lib_port lib
  lib_port=$(port)
  coap-server-openssl -A 127.0.0.1 -p "$lib_port" -d 10 >/dev/null 2>&1 &
  lib=$!
  sleep 0.5
  "$LOAD" "$lib_port" t/bench-1 1 "$IN_FLIGHT" put >/dev/null
  "$LOAD" "$lib_port" t/bench-1 "$DURATION" "$IN_FLIGHT" put | field requests_per_s
  kill "$lib"; wait "$lib" 2>/dev/null || true
}

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
  "$LOAD" "$HUB_PORT" t/bench-1 1 "$IN_FLIGHT" "$2" >/dev/null
  "$LOAD" "$HUB_PORT" t/bench-1 "$DURATION" "$IN_FLIGHT" "$2" > "$WORK/result.json"
  kill "$hub"; wait "$hub" 2>/dev/null || true
  field requests_per_s < "$WORK/result.json"
}
printf 'CoAP confirmable requests, %d in flight, %s rounds of %ss, 40-byte JSON body\n' "$IN_FLIGHT" "$ROUNDS" "$DURATION"
LIB_SUM=0; HUB_SUM=0; RATIOS=()
for round in $(seq 1 "$ROUNDS"); do
  LIB=$(libcoap_round)
  HUB=$(run_hub false put)
  LIB_SUM=$((LIB_SUM + LIB)); HUB_SUM=$((HUB_SUM + HUB)); RATIOS+=("$((HUB * 100 / LIB))")
  printf '  round %d: libcoap coap-server-openssl, PUT (no pipeline) %8d req/s; hub, PUT, pipeline to the file sink %8d req/s (%d%%)\n' \
    "$round" "$LIB" "$HUB" $((HUB * 100 / LIB))
done
LIB=$((LIB_SUM / ROUNDS)); HUB=$((HUB_SUM / ROUNDS))
POST=$(run_hub false post)
DURABLE=$(run_hub true post)
printf '  libcoap, PUT, mean of the rounds                 %8d req/s\n' "$LIB"
printf '  hub, PUT, mean of the rounds                     %8d req/s  (%d%% of libcoap; rounds: %s; target 70%%)\n' "$HUB" $((HUB * 100 / LIB)) "$(IFS=,; echo "${RATIOS[*]}" | sed 's/,/, /g')"
printf '  hub, POST, pipeline to the file sink             %8d req/s  (%d%% of libcoap)\n' "$POST" $((POST * 100 / LIB))
printf '  hub, POST, durable pipeline (write-ahead log)    %8d req/s  (%d%% of libcoap)\n' "$DURABLE" $((DURABLE * 100 / LIB))

CLIENTS=${LWM2M_CLIENTS:-10000}
HOLD=${LWM2M_HOLD:-65}
LW_PORT=$(port)
cat > "$WORK/lwm2m.yaml" <<YAML
sources:
  lw: { plugin: lwm2m, listen: "127.0.0.1:$LW_PORT" }
sinks:
  out: { plugin: file, path: "$WORK/lw.jsonl" }
pipelines:
  telemetry: { from: [ "lw:devices/+/telemetry" ], to: [ out ] }
auth: { allow_anonymous: true }
YAML
rm -rf "$WORK/data"
"$BIN/iotc" serve "$WORK/lwm2m.yaml" --data "$WORK/data" --api "127.0.0.1:$API_PORT" >"$WORK/hub.log" 2>&1 &
LW=$!
wait_port "$API_PORT"
sleep 1
rss() { awk '/VmRSS/ {print $2}' "/proc/$LW/status"; }
BEFORE=$(rss)
"$LOAD" lwm2m "$LW_PORT" "$CLIENTS" "$HOLD" > "$WORK/lwm2m.json"
AFTER=$(rss)
kill "$LW"; wait "$LW" 2>/dev/null || true
printf 'LwM2M: %d simulated clients, lifetime 90 s, an Update every 60 s, held %ss\n' "$CLIENTS" "$HOLD"
printf '  registered %d (%d registrations/s), updates sent %d and answered %d, other answers %d\n' \
  "$(field registered < "$WORK/lwm2m.json")" "$(field registrations_per_s < "$WORK/lwm2m.json")" "$(field updates_sent < "$WORK/lwm2m.json")" \
  "$(field updates_answered < "$WORK/lwm2m.json")" "$(field other_answers < "$WORK/lwm2m.json")"
printf '  hub resident memory %d KiB before, %d KiB after: %d bytes per client\n' "$BEFORE" "$AFTER" $(( (AFTER - BEFORE) * 1024 / CLIENTS ))
