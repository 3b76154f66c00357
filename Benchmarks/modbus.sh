#!/usr/bin/env bash
# Modbus polling benchmark: DEVICES (default 100) simulated devices, each a pymodbus TCP server on its
# own loopback port (Tests/Support/modbus_peers.py, one Python process), each polled by the hub's modbus
# source for REGISTERS (default 50) holding registers every second, into the file sink, for DURATION
# seconds (default 30). Prints register reads per second, the poll-cycle jitter (how late each poll
# started against its device's 1-second grid, from the telemetry's device times: p50, p99, max), the
# cycles missed, and the CPU time and memory of the hub (and of the simulator, for comparison).
# Usage: Benchmarks/modbus.sh [BIN_DIR] (default .build/release).
set -euo pipefail
BIN=${1:-.build/release}
DEVICES=${DEVICES:-100}
REGISTERS=${REGISTERS:-50}
DURATION=${DURATION:-30}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT="$HERE/.."
source "$HERE/common.sh"
PYTHON="$ROOT/.venv/bin/python"
[ -x "$PYTHON" ] || { echo "no .venv with pymodbus: run scripts/install-deps.sh bench" >&2; exit 1; }

PORTS=$(python3 -c "
import socket
socks = [socket.socket() for _ in range($DEVICES)]
for s in socks: s.bind(('127.0.0.1', 0))
print(','.join(str(s.getsockname()[1]) for s in socks))")
mkfifo "$WORK/peer.in"
MODBUS_TRACE="$WORK/arrivals.txt" "$PYTHON" -u "$ROOT/Tests/Support/modbus_peers.py" tcp "$PORTS" 1 < "$WORK/peer.in" > "$WORK/peer.log" 2>/dev/null &
PEER=$!
exec 3>"$WORK/peer.in"  # holds the simulator's stdin open
for _ in $(seq 1 200); do grep -q ready "$WORK/peer.log" && break; sleep 0.1; done

{
  echo "sources:"
  echo "  plant:"
  echo "    plugin: modbus"
  echo "    devices:"
  i=0
  for p in ${PORTS//,/ }; do
    i=$((i + 1))
    echo "      - device: plc-$i"
    echo "        tcp: \"127.0.0.1:$p\""
    echo "        interval: 1s"
    echo "        registers:"
    for r in $(seq 0 $((REGISTERS - 1))); do echo "          - { name: r$r, address: $r }"; done
  done
  echo "sinks:"
  echo "  out: { plugin: file, path: \"$WORK/out.jsonl\" }"
  echo "pipelines:"
  echo "  all: { from: [ plant ], to: [ out ] }"
} > "$WORK/modbus.yaml"
API_PORT=$(port)
"$BIN/iotc" serve "$WORK/modbus.yaml" --data "$WORK/data" --api "127.0.0.1:$API_PORT" > "$WORK/hub.log" 2>&1 &
HUB=$!
wait_port "$API_PORT"
sleep 3  # connections made, first polls done

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # user + system clock ticks
TICKS=$(getconf CLK_TCK)
FROM_MS=$(date +%s%3N); HUB0=$(cpu $HUB); PEER0=$(cpu $PEER)
sleep "$DURATION"
TO_MS=$(date +%s%3N); HUB1=$(cpu $HUB); PEER1=$(cpu $PEER)
RSS=$(awk '/VmRSS/ {print $2}' "/proc/$HUB/status")
kill $HUB; wait $HUB 2>/dev/null || true

python3 - "$WORK/out.jsonl" "$WORK/arrivals.txt" "$FROM_MS" "$TO_MS" "$DEVICES" "$REGISTERS" <<PY
import json, sys, datetime
path, arrivals, start, end, devices, registers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])

def grid(series):
    # Each device's polls are due every 1000 ms from its best-placed one: how late each was, and the
    # cycles with no poll.
    late, missed = [], 0
    for ts in series.values():
        ts.sort()
        ks = [round((t - ts[0]) / 1000) for t in ts]
        origin = min(t - k * 1000 for t, k in zip(ts, ks))
        missed += ks[-1] + 1 - len(set(ks))
        late += [t - origin - k * 1000 for t, k in zip(ts, ks) if start <= t <= end]
    late.sort()
    pct = lambda p: late[min(len(late) - 1, int(p / 100 * len(late)))]
    return late, missed, f"p50 {pct(50):.1f} ms, p99 {pct(99):.1f} ms, max {late[-1]:.1f} ms"

stamped, errors = {}, 0
for line in open(path):
    m = json.loads(line)
    if m["kind"] == "event":
        errors += 1
        continue
    t = datetime.datetime.fromisoformat(m["device_time"].replace("Z", "+00:00")).timestamp() * 1000
    stamped.setdefault(m["device"], []).append(t)
seen = {}
for line in open(arrivals):
    port, t = line.split()
    seen.setdefault(port, []).append(float(t))
late, missed, hub = grid(stamped)
_, missed_seen, server = grid(seen)
window = (end - start) / 1000
print(f"Modbus polling: {devices} devices x {registers} holding registers every 1 s over TCP (pymodbus), {window:.0f} s")
print(f"  polls                    {len(late):8d}  ({len(late) / window:.1f}/s, {devices} expected)")
print(f"  register reads           {len(late) * registers / window:8.0f} /s")
print(f"  poll start vs. its grid  {hub}  (the telemetry's device time; target: p99 within 50 ms)")
print(f"  request arrival vs. grid {server}  (as the simulated devices saw them)")
print(f"  cycles missed            {missed:8d} (devices saw {missed_seen})   status events {errors}")
PY
awk -v h=$((HUB1 - HUB0)) -v p=$((PEER1 - PEER0)) -v t="$TICKS" -v d="$DURATION" -v rss="$RSS" 'BEGIN {
  printf "  hub CPU                  %8.1f %% of one core (%.2f s of CPU over %d s); resident %d MiB\n", h * 100 / t / d, h / t, d, rss / 1024
  printf "  simulator CPU (Python)   %8.1f %% of one core\n", p * 100 / t / d }'
