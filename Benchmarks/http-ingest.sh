#!/usr/bin/env bash
# HTTP ingest benchmark. Prints, from one run on this machine:
#   - requests/s that nginx answers with a bare 204, and that the hub ingests through a pipeline with
#     decode, map and filter into the file sink, both with wrk at 100 keep-alive connections, in
#     ROUNDS alternating rounds of DURATION seconds each (default 5 of 5 s): this machine's speed
#     drifts over minutes, so each hub round is compared with the nginx round just before it;
#   - the hub's start-up time to ready and its resident memory idle with all plugins loaded.
# Usage: Benchmarks/http-ingest.sh [BIN_DIR] (default .build/release). Loopback only.
set -euo pipefail
BIN=${1:-.build/release}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/common.sh"
rss_kib() { awk '/VmRSS/ {print $2}' /proc/$1/status; }

NGINX_PORT=$(port); HUB_PORT=$(port); API_PORT=$(port); BROKER_PORT=$(port); BASELINE_PORT=$(port); MQTT_PORT=$(port)

# A bare SwiftNIO server answering a fixed 202: the ceiling for any SwiftNIO HTTP ingest on this machine.
swift build -c release --package-path "$HERE/nio-baseline" --scratch-path "$HERE/../.build-nio-baseline" >/dev/null
"$HERE/../.build-nio-baseline/release/NIOBaseline" "$BASELINE_PORT" &
wait_port "$BASELINE_PORT"

# nginx answering 204, two workers (one per core).
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 2;
error_log $WORK/nginx/error.log;
pid $WORK/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  server { listen 127.0.0.1:$NGINX_PORT; location / { return 204; } }
}
CONF
nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
wait_port "$NGINX_PORT"

# A broker for the mqtt_publish sink, so that every plugin has a live instance.
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$BROKER_PORT" > "$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" >/dev/null 2>&1 &
wait_port "$BROKER_PORT"

cat > "$WORK/bench.yaml" <<YAML
sources:
  devices: { plugin: http, listen: "127.0.0.1:$HUB_PORT" }
  mqtt-devices: { plugin: mqtt, listen: "127.0.0.1:$MQTT_PORT" }
  upstream: { plugin: mqtt_subscribe, server: "127.0.0.1:$BROKER_PORT", topics: [ "idle/#" ] }
sinks:
  archive: { plugin: file, path: "$WORK/out.jsonl", max_size: 256MiB, max_files: 1 }
  debug: { plugin: log, level: debug }
  hook: { plugin: webhook, url: "http://127.0.0.1:$NGINX_PORT/hook" }
  broker: { plugin: mqtt_publish, server: "127.0.0.1:$BROKER_PORT", qos: 0 }
pipelines:
  ingest:
    from: [ "devices:devices/+/telemetry" ]
    steps:
      - decode: json
      - map: { temperature_c: "round((temperature_f - 32) / 1.8, 1)", humidity: "humidity", meta.site: "site" }
      - filter: "humidity >= 0"
    to: [ archive ]
  idle:
    from: [ "devices:idle/#", "mqtt-devices:idle/#" ]
    to: [ debug, hook, broker ]
  bridged:
    from: [ upstream ]
    to: [ debug ]
auth: { allow_anonymous: true }
YAML

start_ns=$(date +%s%N)
"$BIN/iotc" serve "$WORK/bench.yaml" --data "$WORK/data" --api "127.0.0.1:$API_PORT" --plugins "$BIN" --log-level warning > "$WORK/hub.log" 2>&1 &
HUB=$!
until curl -sf "http://127.0.0.1:$API_PORT/health" >/dev/null 2>&1; do sleep 0.005; done
wait_port "$HUB_PORT"
ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
self_reported=$(grep -o 'ready in [0-9.]* s' "$WORK/hub.log" || true)
sleep 2
idle_rss=$(rss_kib $HUB)

echo "warming up..."
wrk -t2 -c100 -d2s -s "$HERE/post.lua" "http://127.0.0.1:$HUB_PORT/v1/devices/bench/telemetry" >/dev/null
wrk -t2 -c100 -d2s -s "$HERE/post.lua" "http://127.0.0.1:$NGINX_PORT/" >/dev/null

nginx_rounds=(); hub_rounds=()
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round: nginx (204, 2 workers), ${DURATION}s, 100 connections:"
  nginx_rounds+=("$(wrk -t2 -c100 -d${DURATION}s --latency -s "$HERE/post.lua" "http://127.0.0.1:$NGINX_PORT/" | tail -1)")
  echo "  ${nginx_rounds[-1]}"
  echo "round $round: hub (http -> decode, map, filter -> file), ${DURATION}s, 100 connections:"
  hub_rounds+=("$(wrk -t2 -c100 -d${DURATION}s --latency -s "$HERE/post.lua" "http://127.0.0.1:$HUB_PORT/v1/devices/bench/telemetry" | tail -1)")
  echo "  ${hub_rounds[-1]}"
done
load_rss=$(rss_kib $HUB)
echo "bare SwiftNIO server (fixed 202), ${DURATION}s, 100 connections:"
baseline_json=$(wrk -t2 -c100 -d${DURATION}s --latency -s "$HERE/post.lua" "http://127.0.0.1:$BASELINE_PORT/" | tail -1)
echo "  $baseline_json"
echo "hub HTTP layer alone (a topic no pipeline reads: parsed, validated, answered 404), ${DURATION}s:"
edge_json=$(wrk -t2 -c100 -d${DURATION}s --latency -s "$HERE/post.lua" "http://127.0.0.1:$HUB_PORT/v1/devices/bench/events" | tail -1)
echo "  $edge_json"
sleep 1
# Counted by the hub (the file itself rotates at 256 MiB and keeps one earlier file).
lines=$(curl -s "http://127.0.0.1:$API_PORT/metrics" | awk '/^iotc_sink_delivered_total\{sink="archive"\}/ {print $2}')

python3 - "$(printf '%s\n' "${nginx_rounds[@]}")" "$(printf '%s\n' "${hub_rounds[@]}")" "$edge_json" "$baseline_json" <<PY
import json, statistics, sys
ns = [json.loads(l) for l in sys.argv[1].splitlines() if l.strip()]
hs = [json.loads(l) for l in sys.argv[2].splitlines() if l.strip()]
e, b = json.loads(sys.argv[3]), json.loads(sys.argv[4])
# Only accepted (2xx) requests count as ingested: answers 503 under overload are backpressure.
for h in hs: h["accepted_rate"] = h["req_rate"] * (h["requests"] - h["non_2xx"]) / h["requests"]
ratios = [h["accepted_rate"] / n["req_rate"] for n, h in zip(ns, hs)]
n_rate = statistics.mean(n["req_rate"] for n in ns)
h_rate = statistics.mean(h["accepted_rate"] for h in hs)
ratio = h_rate / n_rate
print()
for k, (n, h, r) in enumerate(zip(ns, hs, ratios), 1):
    print(f"round {k}: nginx {n['req_rate']:>8.0f} req/s (p99 {n['p99_us']/1000:.2f} ms), hub {h['accepted_rate']:>8.0f} accepted (p99 {h['p99_us']/1000:.2f} ms, 503 {h['non_2xx']} of {h['requests']}): {r*100:.1f} %")
print(f"nginx 204:           {n_rate:>10.0f} req/s (mean of {len(ns)} rounds)")
print(f"hub ingest -> file:  {h_rate:>10.0f} req/s accepted (mean of {len(hs)} rounds)")
print(f"hub / nginx:         {ratio*100:>10.1f} %   (rounds: {', '.join(f'{r*100:.1f}' for r in ratios)}; target >= 50 %)")
print(f"hub HTTP layer alone:{e['req_rate']:>10.0f} req/s   ({e['req_rate']/n_rate*100:.1f} % of nginx; a topic no pipeline reads, answered 404)")
print(f"bare SwiftNIO 202:   {b['req_rate']:>10.0f} req/s   ({b['req_rate']/n_rate*100:.1f} % of nginx); the hub reaches {h_rate/b['req_rate']*100:.0f} % of it")
print(f"start-up to ready:   {$ready_ms:>10d} ms  (measured from outside; banner: $self_reported) (target < 1000 ms)")
print(f"idle RSS, all plugins loaded: {$idle_rss/1024:.1f} MiB (target < 60 MiB); under load: {$load_rss/1024:.1f} MiB")
print(f"messages written by the file sink (iotc_sink_delivered_total): ${lines:-unknown}")
print(json.dumps({"nginx_req_rate": round(n_rate), "hub_req_rate": round(h_rate), "ratio": round(ratio, 3), "round_ratios": [round(r, 3) for r in ratios],
                  "hub_p99_us": max(h["p99_us"] for h in hs), "hub_non_2xx": sum(h["non_2xx"] for h in hs), "http_layer_req_rate": e["req_rate"],
                  "nio_baseline_req_rate": b["req_rate"], "startup_ms": $ready_ms, "idle_rss_kib": $idle_rss, "load_rss_kib": $load_rss}))
PY
kill -TERM $HUB; wait $HUB 2>/dev/null || true
