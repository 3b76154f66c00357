# IoT Connect Center. `make run` starts the hub; `make test` runs every test. Both install what they need.
SHELL := /bin/bash
CONFIG ?= debug
SWIFT_BUILD_FLAGS ?=
BIN = .build/$(CONFIG)
IOTC = $(BIN)/iotc

.PHONY: run build test test-deps unit-tests pipeline-tests docs docs-check bench fuzz clean

## Build and start the hub with pipelines/default.yaml on the embedded store (data/).
run:
	scripts/install-deps.sh run
	swift build -c $(CONFIG) $(SWIFT_BUILD_FLAGS)
	$(IOTC) serve pipelines/default.yaml --data data

build:
	swift build -c $(CONFIG) $(SWIFT_BUILD_FLAGS)

## Every test: unit and end-to-end tests with real peers, pipeline tests, config checks, stale-docs check.
test: test-deps
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	$(MAKE) unit-tests pipeline-tests docs-check

test-deps:
	scripts/install-deps.sh test

unit-tests:
	swift test --skip-build

pipeline-tests:
	for f in pipelines/*.yaml pipelines/examples/*.yaml; do case $$f in *_test.yaml) ;; *) .build/debug/iotc check --ignore-missing-env $$f || exit 1;; esac; done
	.build/debug/iotc test pipelines

## Regenerate docs/plugins/*.md and docs/pipeline.schema.json from the plugins' config specs.
docs:
	swift build
	.build/debug/iotc docs --out docs

docs-check:
	.build/debug/iotc docs --out docs --check

## Benchmarks (release build): HTTP ingest against nginx, start-up time and idle memory; the MQTT server
## against mosquitto, CoAP against libcoap, Modbus polling jitter, the store. Prints figures.
bench:
	scripts/install-deps.sh bench
	swift build -c release $(SWIFT_BUILD_FLAGS)
	Benchmarks/http-ingest.sh .build/release
	Benchmarks/mqtt.sh .build/release
	Benchmarks/mqtt-auth.sh .build/release
	Benchmarks/coap.sh .build/release
	Benchmarks/modbus.sh .build/release
	.build/release/iotc bench store
	.build/release/iotc bench rules

## Fuzz the decoders (JSON, CBOR, expressions, MQTT) with libFuzzer; FUZZ_SECONDS each (default 60).
fuzz:
	scripts/install-deps.sh fuzz
	scripts/fuzz.sh $${FUZZ_SECONDS:-60}

clean:
	rm -rf .build .build-* data
