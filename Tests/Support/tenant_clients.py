"""MQTT 5 devices of two tenants for the tenant isolation test.

Usage: tenant_clients.py PORT NAME=CLIENT_ID:TOKEN:SUBSCRIPTION...

Each NAME connects with its client id and token, subscribes, and prints one line per event:
  NAME connected RC | NAME disconnected RC | NAME suback CODES | NAME got TOPIC PAYLOAD
Lines on stdin drive it: "NAME publish TOPIC PAYLOAD [retain]" and "NAME subscribe FILTER".
A command for the client's own device (a message on devices/CLIENT_ID/commands/... with a response
topic) is answered at once on that topic with {"ok": true, "by": NAME}.
"""
import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

port = int(sys.argv[1])
clients = {}
said = threading.Lock()


def say(*parts):
    # One line at a time: every client's network thread prints.
    with said:
        sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
        sys.stdout.flush()


def make(name, client_id, token, subscription):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(client_id, token)

    def on_connect(c, u, f, rc, p):
        say(name, "connected", rc.value)
        c.subscribe(subscription, qos=1)

    def on_message(c, u, m):
        say(name, "got", m.topic, m.payload.decode(errors="replace"))
        response = getattr(m.properties, "ResponseTopic", None) if m.properties else None
        if response and m.topic.startswith("devices/%s/commands/" % client_id):
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = m.properties.CorrelationData
            c.publish(response, json.dumps({"ok": True, "by": name}), qos=1, properties=props)

    c.on_connect = on_connect
    c.on_message = on_message
    c.on_disconnect = lambda c, u, f, rc, p: say(name, "disconnected", rc.value)
    c.on_subscribe = lambda c, u, mid, rcs, p: say(name, "suback", ",".join(str(r.value) for r in rcs))
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


for spec in sys.argv[2:]:
    name, rest = spec.split("=", 1)
    client_id, token, subscription = rest.split(":", 2)
    clients[name] = make(name, client_id, token, subscription)

for line in sys.stdin:
    parts = line.split()
    if len(parts) >= 3 and parts[1] == "subscribe":
        clients[parts[0]].subscribe(parts[2], qos=1)
    elif len(parts) >= 4 and parts[1] == "publish":
        info = clients[parts[0]].publish(parts[2], parts[3], qos=1, retain=len(parts) > 4 and parts[4] == "retain")
        info.wait_for_publish(5)
        say(parts[0], "published", parts[2], info.rc)
