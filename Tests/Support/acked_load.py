#!/usr/bin/env python3
"""Devices that send telemetry over MQTT 5 (paho-mqtt, QoS 1), HTTP and CoAP (confirmable) for a while,
each message with its own id, and record the ids the hub acknowledged: a PUBACK without a failure
reason, 202 Accepted, or 2.04 Changed (piggybacked or separate).

Usage: acked_load.py SECONDS MQTT_PORT HTTP_PORT COAP_PORT OUT_FILE
Writes {"mqtt": [ids], "http": [ids], "coap": [ids]} to OUT_FILE and prints the counts. Refusals and
connections the hub closed (a source restarting) are counted, not failures: the test compares the
acknowledged ids with what reached the hub's sinks.
"""
import http.client
import json
import random
import socket
import struct
import sys
import threading
import time

import paho.mqtt.client as mqtt

SECONDS, MQTT_PORT, HTTP_PORT, COAP_PORT, OUT = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
stop = threading.Event()
lock = threading.Lock()
acked = {"mqtt": set(), "http": set(), "coap": set()}
trouble = {"mqtt": 0, "http": 0, "coap": 0}


def note(kind, ids=(), failed=0):
    with lock:
        acked[kind].update(ids)
        trouble[kind] += failed


def mqtt_device(k):
    round_ = 0
    while not stop.is_set():
        round_ += 1
        sent, puback = {}, set()

        def on_publish(client, userdata, mid, reason, properties):
            if not reason.is_failure:
                puback.add(mid)

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"load-m{k}", protocol=mqtt.MQTTv5)
        c.on_publish = on_publish
        try:
            c.connect("127.0.0.1", MQTT_PORT)
            c.loop_start()
            for i in range(100):
                if stop.is_set():
                    break
                ident = f"mqtt-{k}-{round_}-{i}"
                sent[c.publish(f"devices/load-m{k}/telemetry", json.dumps({"id": ident}), qos=1).mid] = ident
                time.sleep(0.004)
            time.sleep(0.3)
            c.disconnect()
            c.loop_stop()
        except OSError:
            note("mqtt", failed=1)
            time.sleep(0.1)
        note("mqtt", [sent[m] for m in puback if m in sent])


def http_device(k):
    i = 0
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", HTTP_PORT, timeout=5)
            for _ in range(50):
                if stop.is_set():
                    break
                ident = f"http-{k}-{i}"
                i += 1
                conn.request("POST", f"/v1/devices/load-h{k}/telemetry", body=json.dumps({"id": ident}),
                             headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                if r.status == 202:
                    note("http", [ident])
                time.sleep(0.004)
            conn.close()
        except (OSError, http.client.HTTPException):
            note("http", failed=1)
            time.sleep(0.1)


def coap_device(k):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    mid, i = random.randint(0, 60000), 0
    name = f"load-c{k}".encode()
    while not stop.is_set():
        ident = f"coap-{k}-{i}"
        i += 1
        mid = (mid + 1) & 0xFFFF
        token = struct.pack(">I", i)
        # CON POST /t/NAME, Content-Format 50 (JSON).
        pdu = bytes([0x44, 0x02]) + struct.pack(">H", mid) + token + bytes([0xB1]) + b"t" + bytes([len(name)]) + name \
            + bytes([0x11, 0x32, 0xFF]) + json.dumps({"id": ident}).encode()
        changed = False
        for _ in range(3):
            s.sendto(pdu, ("127.0.0.1", COAP_PORT))
            try:
                while True:
                    r = s.recv(1500)
                    kind, code, rmid, rtoken = (r[0] >> 4) & 3, r[1], struct.unpack(">H", r[2:4])[0], r[4:4 + (r[0] & 15)]
                    if kind == 2 and rmid == mid and code == 0:
                        continue  # an empty ACK: the answer follows separately
                    if kind == 0 and rtoken == token:
                        s.sendto(bytes([0x60, 0]) + r[2:4], ("127.0.0.1", COAP_PORT))  # ACK the separate response
                        changed = code == 0x44
                        break
                    if kind == 2 and rmid == mid:
                        changed = code == 0x44
                        break
            except socket.timeout:
                continue
            break
        if changed:
            note("coap", [ident])
        else:
            note("coap", failed=1)
        time.sleep(0.008)


threads = [threading.Thread(target=f, args=(k,)) for f in (mqtt_device, http_device, coap_device) for k in range(2)]
for t in threads:
    t.start()
time.sleep(SECONDS)
stop.set()
for t in threads:
    t.join()
with open(OUT, "w") as f:
    json.dump({k: sorted(v) for k, v in acked.items()}, f)
print({k: len(v) for k, v in acked.items()}, "trouble", trouble)
