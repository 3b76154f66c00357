#!/usr/bin/env bash
# Installs what a make target needs and is missing, from Debian's packages. Safe to run again.
#   scripts/install-deps.sh run     what the hub needs to build and run
#   scripts/install-deps.sh test    plus the real peers the tests start (mosquitto, libcoap3-bin, ...)
#   scripts/install-deps.sh bench   plus nginx and wrk for the HTTP benchmark
set -euo pipefail

want=(curl ca-certificates pkg-config libsqlite3-dev libcoap3-dev libmodbus-dev)
case "${1:-run}" in
  run) ;;
  test) want+=(mosquitto mosquitto-clients libcoap3-bin mbpoll socat python3 coreutils binutils gcc openssl postgresql) ;;
  bench) want+=(mosquitto mosquitto-clients libcoap3-bin python3 nginx-light wrk) ;;
  fuzz) ;;  # the Swift toolchain carries libFuzzer
  *) echo "usage: $0 run|test|bench|fuzz" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python test peers (paho-mqtt, aiomqtt, aiocoap, pymodbus) in a virtualenv beside the package, for
# `make test` and the Modbus benchmark's simulated devices.
if [ "${1:-run}" = test ] || [ "${1:-run}" = bench ]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  req="$root/Tests/Support/requirements.txt"
  if [ ! -x "$root/.venv/bin/python" ] || ! cmp -s "$req" "$root/.venv/requirements.txt"; then
    echo "setting up the Python test peers in .venv"
    if ! python3 -m venv "$root/.venv" 2>/dev/null; then
      sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
      python3 -m venv "$root/.venv"
    fi
    "$root/.venv/bin/pip" install -q -r "$req"
    cp "$req" "$root/.venv/requirements.txt"
  fi
fi

if ! command -v swift >/dev/null 2>&1; then
  echo "Swift 6.1 or newer is needed (https://www.swift.org/install/); this machine has none on PATH." >&2
  exit 1
fi
