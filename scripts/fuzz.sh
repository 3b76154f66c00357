#!/usr/bin/env bash
# Builds the libFuzzer targets in Tests/Fuzz with swiftc (-sanitize=fuzzer,address) and runs each for
# SECONDS (default 60), then the MQTT and HTTP servers' mutation fuzzers (Tests/Fuzz/servers). Crashing
# inputs are kept in .build-fuzz/crashes/. Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
OUT=.build-fuzz
mkdir -p "$OUT/crashes" "$OUT/modules"
FLAGS=(-sanitize=fuzzer,address -parse-as-library -O -g)

# The C header as a module for the plugin kit.
cat > "$OUT/modules/module.modulemap" <<MAP
module CIoTCPluginABI { header "$PWD/Core/PluginABI/include/iotc_plugin.h" export * }
MAP

# The plugin kit (values, JSON, CBOR, messages) as a static library.
swiftc "${FLAGS[@]}" -module-name IoTCPluginKit -emit-module -emit-module-path "$OUT/modules/IoTCPluginKit.swiftmodule" \
  -emit-library -static -o "$OUT/libIoTCPluginKit.a" -I "$OUT/modules" Core/PluginKit/*.swift 2>&1 | grep -v "Cannot export local symbol" || true

build() {  # name, sources...
  local name=$1; shift
  swiftc "${FLAGS[@]}" -I "$OUT/modules" -L "$OUT" -lIoTCPluginKit -o "$OUT/$name" "$@" 2>&1 | grep -v "Cannot export local symbol" || true
}
build fuzz-payload-codecs Tests/Fuzz/FuzzPayloadCodecs.swift
build fuzz-expressions Tests/Fuzz/FuzzExpressions.swift \
  Core/Kernel/Expressions/Expression.swift Core/Kernel/Expressions/ExpressionParser.swift Core/Kernel/Expressions/ExpressionFunction.swift
build fuzz-lwm2m-tlv Tests/Fuzz/FuzzLwM2MTLV.swift Plugins/LwM2M/Sources/LwM2MCodec/TLV.swift
build fuzz-lwm2m-cbor Tests/Fuzz/FuzzLwM2MCBOR.swift Plugins/LwM2M/Sources/LwM2MCodec/LwM2MCBOR.swift
build fuzz-modbus-map Tests/Fuzz/FuzzModbusMap.swift Plugins/Modbus/Sources/ModbusMap/*.swift
build fuzz-link-format Tests/Fuzz/FuzzLinkFormat.swift Plugins/LwM2M/Sources/LwM2MCodec/LinkFormat.swift
build fuzz-object-xml Tests/Fuzz/FuzzObjectXML.swift Plugins/LwM2M/Sources/LwM2MCodec/XMLReader.swift \
  Plugins/LwM2M/Sources/LwM2MCodec/ObjectXML.swift Plugins/LwM2M/Sources/LwM2MCodec/ObjectModel.swift

status=0
for f in fuzz-payload-codecs fuzz-expressions fuzz-lwm2m-tlv fuzz-lwm2m-cbor fuzz-link-format fuzz-modbus-map fuzz-object-xml; do
  mkdir -p "$OUT/corpus/$f"
  echo "== $f for ${SECONDS_EACH}s"
  # Swift's backtracer would hold a crashed process; libFuzzer must see the crash itself.
  if ! SWIFT_BACKTRACE=enable=no "$OUT/$f" -max_total_time="$SECONDS_EACH" -max_len=4096 -artifact_prefix="$OUT/crashes/$f-" \
       -print_final_stats=1 "$OUT/corpus/$f" 2>&1 | grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY|artifact_prefix|Test unit written)"; then
    :
  fi
  if ls "$OUT/crashes/$f-"* >/dev/null 2>&1; then echo "$f: crashing inputs in $OUT/crashes"; status=1; fi
done
# The network decoders, as sockets feed them (Tests/Fuzz/servers): seeded mutations through the MQTT
# decoder and the whole server logic (MQTT_INPUTS, default a million), and through the HTTP device
# API's request decoder, whole and in random pieces (HTTP_INPUTS, default a million).
swift build -c release --package-path Tests/Fuzz/servers --scratch-path .build-fuzz-servers 2>&1 | grep -E "error|warning: unre" || true
echo "== mqtt (seeded mutation, ${MQTT_INPUTS:-1000000} inputs)"
if ! SWIFT_BACKTRACE=enable=no .build-fuzz-servers/release/MQTTFuzz "${MQTT_INPUTS:-1000000}"; then
  echo "mqtt: the fuzzer failed (see above)"; status=1
fi
echo "== http (seeded mutation, ${HTTP_INPUTS:-1000000} inputs)"
if ! SWIFT_BACKTRACE=enable=no .build-fuzz-servers/release/HTTPFuzz "${HTTP_INPUTS:-1000000}"; then
  echo "http: the fuzzer failed (see above)"; status=1
fi
exit $status
