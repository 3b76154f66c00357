#!/usr/bin/env python3
"""Real MQTT clients against the hub's MQTT server, one scenario per run.

Usage: mqtt_peers.py SCENARIO HOST TCP_PORT [TLS_PORT WS_PORT CA_FILE]
Exits 0 when the scenario saw what the specification requires, 1 with the reason otherwise.
paho-mqtt (3.1.1 and 5.0) and aiomqtt are the clients; `Raw` speaks the protocol byte by byte where a
test needs to do what a library will not (drop a connection mid-flow, send malformed packets).
"""
import asyncio
import socket
import ssl
import struct
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST, TCP = sys.argv[2], int(sys.argv[3])
TLS = int(sys.argv[4]) if len(sys.argv) > 4 else 0
WS = int(sys.argv[5]) if len(sys.argv) > 5 else 0
CA = sys.argv[6] if len(sys.argv) > 6 else None


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def uid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Client:
    """A paho client that records what it receives."""

    def __init__(self, version=5, client_id=None, clean=True, transport="tcp", port=None, session_expiry=None,
                 will=None, tls=False, keepalive=30, props=None, username=None, password=None):
        v = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        self.id = client_id or uid("c")
        kwargs = dict(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.id, protocol=v, transport=transport)
        if version != 5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(**kwargs)
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        if tls:
            self.c.tls_set(ca_certs=CA)
        if username:
            self.c.username_pw_set(username, password)
        self.messages = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack = None
        self.disconnect_reason = None
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        if will:
            self.c.will_set(*will[:4], properties=will[4] if len(will) > 4 else None)
        connect_props = props
        if version == 5 and session_expiry is not None:
            connect_props = connect_props or Properties(PacketTypes.CONNECT)
            connect_props.SessionExpiryInterval = session_expiry
        self.version = version
        self.c.connect(HOST, port or TCP, keepalive=keepalive, clean_start=clean if version == 5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                       properties=connect_props)
        self.c.loop_start()
        check(self.connected.wait(10), f"{self.id}: no CONNACK")

    def _on_connect(self, c, userdata, flags, reason, props):
        self.connack = (flags, reason, props)
        self.connected.set()

    def _on_disconnect(self, c, userdata, flags, reason, props):
        self.disconnect_reason = reason
        self.disconnected.set()

    def _on_message(self, c, userdata, msg):
        with self.lock:
            self.messages.append(msg)

    def subscribe(self, topic, qos=1, **kw):
        done = threading.Event()
        result = {}

        def on_sub(c, userdata, mid, codes, props):
            result["codes"] = codes
            done.set()
        self.c.on_subscribe = on_sub
        if self.version == 5:
            options = SubscribeOptions(qos=qos, noLocal=kw.get("no_local", False), retainAsPublished=kw.get("rap", False),
                                       retainHandling=kw.get("retain_handling", 0))
            props = None
            if "sub_id" in kw:
                props = Properties(PacketTypes.SUBSCRIBE)
                props.SubscriptionIdentifier = kw["sub_id"]
            self.c.subscribe(topic, options=options, properties=props)
        else:
            self.c.subscribe(topic, qos)
        check(done.wait(10), f"{self.id}: no SUBACK for {topic}")
        return result["codes"]

    def publish(self, topic, payload, qos=0, retain=False, props=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(10)
        check(info.is_published(), f"{self.id}: publish to {topic} not acknowledged")
        return info

    def wait(self, n, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.01)
        with self.lock:
            return list(self.messages)

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


# ---- a byte-level client ----

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def props(*items):
    body = b"".join(items)
    return varint(len(body)) + body


class Raw:
    def __init__(self, port=None):
        self.s = socket.create_connection((HOST, port or TCP), timeout=10)
        self.buf = b""

    def send(self, first, body):
        self.s.sendall(bytes([first]) + varint(len(body)) + body)

    def connect(self, cid, version=5, clean=True, keepalive=60, connect_props=b"", will=None):
        flags = 0x02 if clean else 0
        payload = mstr(cid)
        if will:
            flags |= 0x04 | (will.get("qos", 0) << 3)
            if version == 5:
                payload += props(*will.get("props", []))
            payload += mstr(will["topic"]) + mstr(will["payload"])
        body = mstr("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
        if version == 5:
            body += props(connect_props) if connect_props else b"\x00"
        self.send(0x10, body + payload)
        return self.read()

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def read(self):
        self._fill(2)
        length, mult, i = 0, 1, 1
        while True:
            self._fill(i + 1)
            b = self.buf[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        self._fill(i + length)
        first, body = self.buf[0], self.buf[i:i + length]
        self.buf = self.buf[i + length:]
        return first, body

    def closed_within(self, seconds):
        """True when the server closes the connection within `seconds` (reading what it sends first)."""
        self.s.settimeout(seconds)
        try:
            while True:
                data = self.s.recv(65536)
                if not data:
                    return True
                self.buf += data
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.s.close()


# ---- scenarios ----

def pubsub(version):
    topic = uid("t")
    sub = Client(version)
    pub = Client(version)
    check(sub.subscribe(f"{topic}/+/x", qos=2)[0] in (2, mqtt.ReasonCode(PacketTypes.SUBACK, identifier=2)), "SUBACK should grant QoS 2")
    for q in (0, 1, 2):
        pub.publish(f"{topic}/{q}/x", f"m{q}", qos=q)
    got = sub.wait(3)
    check(sorted((m.payload.decode(), m.qos) for m in got) == [("m0", 0), ("m1", 1), ("m2", 2)], f"received {[(m.topic, m.qos) for m in got]}")
    sub.stop(); pub.stop()


def scenario_pubsub311():
    pubsub(3)


def scenario_pubsub5():
    pubsub(5)


def scenario_properties():
    topic = uid("p")
    sub, pub = Client(5), Client(5)
    sub.subscribe(topic, qos=1)
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("site", "north"), ("line", "7")]
    p.ContentType = "application/json"
    p.ResponseTopic = topic + "/reply"
    p.CorrelationData = b"\x01\x02"
    p.PayloadFormatIndicator = 1
    p.MessageExpiryInterval = 60
    pub.publish(topic, '{"t":1}', qos=1, props=p)
    got = sub.wait(1)
    check(len(got) == 1, "no message")
    r = got[0].properties
    check(r.UserProperty == [("site", "north"), ("line", "7")], f"user properties {r.UserProperty}")
    check(r.ContentType == "application/json" and r.ResponseTopic == topic + "/reply", "content type / response topic")
    check(r.CorrelationData == b"\x01\x02" and r.PayloadFormatIndicator == 1, "correlation data / format")
    check(0 < r.MessageExpiryInterval <= 60, "message expiry")
    sub.stop(); pub.stop()


def scenario_retained():
    topic = uid("r")
    pub = Client(3)
    pub.publish(topic + "/a", "kept", qos=1, retain=True)
    sub = Client(5)
    sub.subscribe(topic + "/#", qos=1)
    got = sub.wait(1)
    check(len(got) == 1 and got[0].retain and got[0].payload == b"kept", "retained message not delivered with RETAIN")
    # Retain handling 2: nothing at subscribe.
    late = Client(5)
    late.subscribe(topic + "/+", qos=1, retain_handling=2)
    check(late.wait(1, timeout=0.5) == [], "retain handling 2 still sent the retained message")
    pub.publish(topic + "/a", "", qos=1, retain=True)
    gone = Client(3)
    gone.subscribe(topic + "/#")
    check(gone.wait(1, timeout=0.5) == [], "an empty retained payload did not delete")
    for c in (pub, sub, late, gone):
        c.stop()


def scenario_options():
    topic = uid("o")
    me, other = Client(5), Client(5)
    me.subscribe(topic, qos=1, no_local=True, sub_id=11)
    other.subscribe(topic, qos=1, rap=True, sub_id=22)
    other.subscribe(topic + "/#", qos=0, sub_id=33)
    me.publish(topic, "x", qos=1, retain=True)
    check(me.wait(1, timeout=0.5) == [], "no-local: own message came back")
    got = other.wait(1)
    check(len(got) == 1, f"overlapping subscriptions delivered {len(got)} copies")
    check(got[0].retain, "retain-as-published lost the RETAIN flag")
    check(got[0].qos == 1, "not the highest granted QoS")
    check(sorted(got[0].properties.SubscriptionIdentifier) == [22, 33], f"subscription ids {got[0].properties.SubscriptionIdentifier}")
    me.stop(); other.stop()


def scenario_shared():
    topic = uid("s")
    a, b, pub = Client(5), Client(5), Client(5)
    a.subscribe(f"$share/g/{topic}/#", qos=1)
    b.subscribe(f"$share/g/{topic}/#", qos=1)
    for i in range(20):
        pub.publish(f"{topic}/{i}", str(i), qos=1)
    time.sleep(0.5)
    na, nb = len(a.messages), len(b.messages)
    check(na + nb == 20 and na > 0 and nb > 0, f"shared group split {na}/{nb}")
    for c in (a, b, pub):
        c.stop()


def scenario_will():
    topic = uid("w")
    watcher = Client(5)
    watcher.subscribe(topic + "/#", qos=1)
    # 3.1.1 will on a dropped connection.
    r = Raw()
    first, body = r.connect(uid("will"), version=4, will={"topic": topic + "/gone", "payload": "bye", "qos": 1})
    check(first == 0x20 and body[1] == 0, "CONNACK refused")
    r.close()
    got = watcher.wait(1)
    check([m.topic for m in got] == [topic + "/gone"], "will not published on a dropped connection")
    # A normal DISCONNECT discards the will.
    polite = Client(3, will=(topic + "/polite", "x", 1, False))
    polite.stop()
    time.sleep(0.3)
    check(len(watcher.messages) == 1, "will published after a normal DISCONNECT")
    # MQTT 5 will delay: not before the delay, then published.
    r = Raw()
    delay = b"\x18" + struct.pack("!I", 2)
    r.connect(uid("delayed"), will={"topic": topic + "/late", "payload": "x", "props": [delay]},
              connect_props=b"\x11" + struct.pack("!I", 60))
    r.close()
    time.sleep(1.0)
    check(len(watcher.messages) == 1, "delayed will came early")
    got = watcher.wait(2, timeout=5)
    check([m.topic for m in got][-1] == topic + "/late", "delayed will never came")
    watcher.stop()


def scenario_sessions311():
    topic = uid("q")
    cid = uid("persist")
    sub = Client(3, client_id=cid, clean=False)
    sub.subscribe(topic, qos=1)
    sub.stop()
    pub = Client(3)
    for i in range(3):
        pub.publish(topic, f"offline-{i}", qos=1)
    back = Client(3, client_id=cid, clean=False)
    check(back.connack[0].session_present, "session not present on reconnect")
    got = back.wait(3)
    check([m.payload.decode() for m in got] == ["offline-0", "offline-1", "offline-2"], f"queued messages {[m.payload for m in got]}")
    back.stop(); pub.stop()


def scenario_sessions5():
    topic = uid("q5")
    cid = uid("persist5")
    sub = Client(5, client_id=cid, clean=False, session_expiry=60)
    sub.subscribe(topic, qos=2)
    sub.stop()
    pub = Client(5)
    pub.publish(topic, "while-away", qos=2)
    back = Client(5, client_id=cid, clean=False, session_expiry=60)
    check(back.connack[0].session_present, "session not present")
    got = back.wait(1)
    check(len(got) == 1 and got[0].payload == b"while-away" and got[0].qos == 2, "queued QoS 2 message")
    back.stop()
    # Expiry 0 at reconnect with clean start: no session.
    fresh = Client(5, client_id=cid, clean=True)
    check(not fresh.connack[0].session_present, "clean start kept the session")
    fresh.stop(); pub.stop()


def scenario_qos2_reconnect():
    """QoS 2 exactly once when the publisher loses the connection after PUBREC and sends again."""
    topic = uid("x")
    sub = Client(5)
    sub.subscribe(topic, qos=2)
    cid = uid("q2")
    expiry = b"\x11" + struct.pack("!I", 60)
    r = Raw()
    r.connect(cid, clean=True, connect_props=expiry)
    publish = mstr(topic) + struct.pack("!H", 7) + b"\x00" + b"once"
    r.send(0x34, publish)
    first, body = r.read()
    check(first == 0x50 and body[:2] == b"\x00\x07", "no PUBREC")
    r.close()
    r = Raw()
    first, body = r.connect(cid, clean=False, connect_props=expiry)
    check(body[0] & 1 == 1, "session not present")
    r.send(0x3C, publish)  # DUP
    first, body = r.read()
    check(first == 0x50, "no PUBREC for the duplicate")
    r.send(0x62, struct.pack("!H", 7))
    first, body = r.read()
    check(first == 0x70 and body[:2] == b"\x00\x07", "no PUBCOMP")
    time.sleep(0.5)
    check(len(sub.messages) == 1, f"delivered {len(sub.messages)} times")
    # Subscriber side: a QoS 2 message in flight to a client that drops before PUBREL completes
    # is resumed with PUBREL on reconnect.
    scid = uid("q2sub")
    s = Raw()
    s.connect(scid, clean=True, connect_props=expiry)
    s.send(0x82, struct.pack("!H", 1) + b"\x00" + mstr(topic) + b"\x02")
    check(s.read()[0] == 0x90, "no SUBACK")
    sub.publish(topic, "two", qos=2)
    first, body = s.read()
    check(first & 0xF0 == 0x30 and (first >> 1) & 3 == 2, "no QoS 2 PUBLISH")
    tlen = struct.unpack("!H", body[:2])[0]
    pid = body[2 + tlen:4 + tlen]
    s.send(0x50, pid)  # PUBREC
    check(s.read()[0] == 0x62, "no PUBREL")
    s.close()
    s = Raw()
    first, body = s.connect(scid, clean=False, connect_props=expiry)
    first, body = s.read()
    check(first == 0x62 and body[:2] == pid, "PUBREL not resent after reconnect")
    s.send(0x70, pid)
    s.close()
    sub.stop()


def scenario_topic_alias():
    topic = uid("alias") + "/a/rather/long/topic/name"
    sub = Raw()
    sub.connect(uid("aliasub"), connect_props=b"\x22" + struct.pack("!H", 5))
    sub.send(0x82, struct.pack("!H", 1) + b"\x00" + mstr(topic) + b"\x00")
    check(sub.read()[0] == 0x90, "no SUBACK")
    pub = Client(5)
    alias = Properties(PacketTypes.PUBLISH)
    alias.TopicAlias = 3
    pub.publish(topic, "one", props=alias)
    pub.publish("", "two", props=alias)  # the alias alone
    bodies = [sub.read()[1] for _ in range(2)]
    t1 = bodies[0][2:2 + struct.unpack("!H", bodies[0][:2])[0]].decode()
    t2len = struct.unpack("!H", bodies[1][:2])[0]
    check(t1 == topic, "first delivery should carry the topic")
    check(t2len == 0 and b"\x23\x00\x01" in bodies[1], "second delivery should carry only the server's alias")
    check(bodies[1].endswith(b"two"), "payload")
    sub.close(); pub.stop()


def scenario_keepalive():
    r = Raw()
    r.connect(uid("ka"), version=4, keepalive=1)
    start = time.time()
    check(r.closed_within(4), "silent client not closed by keep-alive")
    check(time.time() - start >= 1.0, "closed before 1.5 x keep-alive")
    # No CONNECT at all: closed by the connect time-out (1 s in the test config).
    idle = Raw()
    check(idle.closed_within(4), "connection without CONNECT stayed open")
    # Slow-loris: a CONNECT trickled a byte at a time is still cut off by the connect time-out.
    slow = Raw()
    connect = b"\x10" + varint(12 + 20) + mstr("MQTT") + bytes([4, 2, 0, 60]) + mstr("x" * 20)
    start = time.time()
    closed = False
    for b in connect:
        try:
            slow.s.sendall(bytes([b]))
        except OSError:
            closed = True
            break
        time.sleep(0.2)
        if time.time() - start > 4:
            break
    check(closed or slow.closed_within(1), "a trickled CONNECT kept the connection open")
    check(time.time() - start < 4, "the trickled CONNECT was not cut off within the connect time-out")
    # Keep-alive counts whole packets: a PUBLISH trickled slower than 1.5 x keep-alive is cut off.
    r = Raw()
    r.connect(uid("ka2"), version=4, keepalive=1)
    start = time.time()
    closed = False
    for b in b"\x30\x0C" + mstr("t") + b"0123456789"[:9]:
        try:
            r.s.sendall(bytes([b]))
        except OSError:
            closed = True
            break
        if r.closed_within(0.3):
            closed = True
            break
    check(closed, "partial packets kept a silent client alive")


def scenario_malformed():
    ok = Client(5)
    topic = uid("m")
    ok.subscribe(topic)
    cases = {
        "wildcard in topic": (0x30, mstr("a/+") + b"\x00"),
        "qos 3": (0x36, mstr("a") + b"\x00\x01\x00"),
        "reserved flags": (0x82 ^ 0x02, struct.pack("!H", 1) + b"\x00" + mstr("a") + b"\x00"),
        "bad utf-8": (0x30, struct.pack("!H", 2) + b"\xC3\x28\x00"),
        "duplicate property": (0x30, mstr("a") + props(b"\x01\x01\x01\x01")),
        "unknown property": (0x30, mstr("a") + props(b"\x7F\x00")),
        # Subscription identifiers go from server to client only; a response topic is a topic name.
        "subscription identifier from a client": (0x30, mstr("a") + props(b"\x0B\x01")),
        "wildcard in the response topic": (0x30, mstr("a") + props(b"\x08" + mstr("r/#"))),
        "second connect": None,
    }
    for name, packet in cases.items():
        r = Raw()
        r.connect(uid("bad"))
        if packet is None:
            r.send(0x10, mstr("MQTT") + bytes([5, 2]) + struct.pack("!H", 60) + b"\x00" + mstr("again"))
        else:
            r.send(*packet)
        check(r.closed_within(3), f"{name}: connection stayed open")
        check(r.buf[:1] == b"\xE0" and r.buf[2] >= 0x80, f"{name}: no DISCONNECT with a reason code, got {r.buf[:4].hex()}")
    # A wrong remaining length and a packet over the maximum size.
    r = Raw()
    r.connect(uid("big"))
    r.send(0x30, mstr("a") + b"\x00" + b"x" * 5000)
    check(r.closed_within(3), "packet over the maximum stayed open")
    check(r.buf[:1] == b"\xE0" and r.buf[2] == 0x95, f"oversize: reason {r.buf[:4].hex()}")
    r = Raw()
    r.connect(uid("len"))
    r.s.sendall(b"\x30\xFF\xFF\xFF\xFF\x01")
    check(r.closed_within(3), "five-byte remaining length stayed open")
    # Unsupported protocol level: CONNACK 0x01 (3.1.1 form), then closed.
    r = Raw()
    r.send(0x10, mstr("MQTT") + bytes([6, 2]) + struct.pack("!H", 60) + mstr("x"))
    check(r.closed_within(3) and r.buf[:4] == b"\x20\x02\x00\x01", f"protocol level 6: {r.buf.hex()}")
    # A CONNECT that breaks a rule (Receive Maximum 0): an MQTT 5 client is told why in a CONNACK
    # with reason code 0x82 and a reason string; MQTT 3.1.1 has no code for it, so it is just closed.
    r = Raw()
    r.send(0x10, mstr("MQTT") + bytes([5, 2]) + struct.pack("!H", 60) + props(b"\x21\x00\x00") + mstr("x"))
    check(r.closed_within(3) and r.buf[:1] == b"\x20" and r.buf[3] == 0x82 and b"must not be 0" in r.buf, f"receive maximum 0: {r.buf.hex()}")
    r = Raw()
    r.send(0x10, mstr("MQTT") + bytes([4, 0x01]) + struct.pack("!H", 60) + mstr("x"))
    check(r.closed_within(3) and r.buf == b"", f"3.1.1 CONNECT with its reserved flag: {r.buf.hex()}")
    # PUBLISH before CONNECT: closed.
    r = Raw()
    r.send(0x30, mstr("a") + b"x")
    check(r.closed_within(3), "PUBLISH before CONNECT stayed open")
    # The well-behaved client was not disturbed.
    ok.publish(topic, "still here", qos=1)
    check(len(ok.wait(1)) == 1, "other client disturbed")
    ok.stop()


def scenario_sys():
    c = Client(5)
    c.subscribe("$SYS/broker/clients/connected", qos=0)
    deadline = time.time() + 5
    while time.time() < deadline and not any(int(m.payload) >= 1 for m in c.messages):
        time.sleep(0.05)
    check(any(int(m.payload) >= 1 for m in c.messages), f"no $SYS statistics counting this client: {[m.payload for m in c.messages]}")
    # Wildcards from the root do not match $ topics.
    w = Client(5)
    w.subscribe("#", qos=0)
    time.sleep(1.5)
    check(not any(m.topic.startswith("$") for m in w.messages), "# matched a $SYS topic")
    w.stop()
    c.stop()


def scenario_websocket():
    topic = uid("ws")
    ws = Client(5, transport="websockets", port=WS)
    tcp = Client(3)
    ws.subscribe(topic)
    tcp.publish(topic, "over websocket", qos=1)
    got = ws.wait(1)
    check(got and got[0].payload == b"over websocket", "websocket client got nothing")
    ws.publish(topic + "/back", "from ws", qos=1)
    ws.stop(); tcp.stop()
    # Requests that do not become an MQTT WebSocket get an HTTP answer and a closed connection: no
    # `mqtt` subprotocol offered (400), another path (404), no upgrade at all (426).
    for path, extra, status in [("/mqtt", "Sec-WebSocket-Protocol: mqttv3.1\r\n", b"400"), ("/other", "Sec-WebSocket-Protocol: mqtt\r\n", b"404"),
                                ("/mqtt", None, b"426")]:
        s = socket.create_connection((HOST, WS), timeout=5)
        upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + extra if extra else ""
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n".encode())
        answer = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        check(answer.startswith(b"HTTP/1.1 " + status), f"{path} {extra!r}: {answer[:80]!r}")
        s.close()


def scenario_tls():
    topic = uid("tls")
    t = Client(5, tls=True, port=TLS)
    plain = Client(3)
    t.subscribe(topic)
    plain.publish(topic, "secure", qos=1)
    got = t.wait(1)
    check(got and got[0].payload == b"secure", "TLS client got nothing")
    t.stop(); plain.stop()


def scenario_tls_client_cert():
    """The TLS listener requires a client certificate signed by the test CA (MQTT_CLIENT_CERT/KEY)."""
    import os
    topic = uid("mtls")
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=uid("mtls"), protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=CA, certfile=os.environ["MQTT_CLIENT_CERT"], keyfile=os.environ["MQTT_CLIENT_KEY"])
    got = threading.Event()
    c.on_message = lambda *a: got.set()
    c.connect(HOST, TLS)
    c.loop_start()
    c.subscribe(topic, qos=1)
    time.sleep(0.3)
    c.publish(topic, "with a certificate", qos=1)
    check(got.wait(5), "a client with a certificate got nothing")
    c.disconnect(); c.loop_stop()
    # Without a certificate the TLS handshake is refused.
    bare = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=uid("bare"), protocol=mqtt.MQTTv5)
    bare.tls_set(ca_certs=CA)
    try:
        bare.connect(HOST, TLS)
        bare.loop_start()
        time.sleep(1)
        check(not bare.is_connected(), "a client without a certificate was let in")
        bare.loop_stop()
    except (ssl.SSLError, OSError):
        pass


def scenario_aiomqtt():
    import aiomqtt

    async def main():
        topic = uid("aio")
        async with aiomqtt.Client(HOST, TCP, protocol=aiomqtt.ProtocolVersion.V5) as sub:
            await sub.subscribe(topic + "/#", qos=1)
            async with aiomqtt.Client(HOST, TCP, protocol=aiomqtt.ProtocolVersion.V311) as pub:
                for i in range(5):
                    await pub.publish(f"{topic}/{i}", f"n{i}", qos=1)
            got = []
            async with asyncio.timeout(10):
                async for m in sub.messages:
                    got.append(m.payload.decode())
                    if len(got) == 5:
                        break
            check(got == [f"n{i}" for i in range(5)], f"aiomqtt received {got}")
    asyncio.run(main())


def scenario_auth():
    # The test config has a static user 'alice' (password 'secret') allowed only under alice/#.
    for version in (3, 5):
        bad = Client(version, username="alice", password="wrong")
        check(bad.connack[1].is_failure, f"MQTT {version}: a wrong password was accepted")
        check(bad.connack[1].value in (4, 0x86), f"MQTT {version}: refused with {bad.connack[1]}")
        bad.c.loop_stop()
    a = Client(5, username="alice", password="secret")
    check(not a.connack[1].is_failure, "alice refused")
    codes = a.subscribe("bob/#", qos=1)
    check(codes[0].value == 0x87, f"subscription outside the ACL: {codes}")
    check(a.subscribe("alice/#", qos=1)[0].value == 1, "own subscription refused")
    info = a.c.publish("bob/x", "no", qos=1)
    info.wait_for_publish(5)
    a.stop()


def scenario_publish_until_dropped():
    """QoS 1 publishers (two of each version) send numbered JSON messages as fast as the server takes
    them until it goes away; what each was acknowledged is written to IOTC_ACKED_FILE as lines
    `client seq`, for the caller to check that the hub kept all of it."""
    import os
    out = os.environ["IOTC_ACKED_FILE"]
    results = {}

    def publisher(name, version):
        kwargs = dict(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=name, reconnect_on_failure=False,
                      protocol=mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311)
        c = mqtt.Client(**kwargs)
        c.max_inflight_messages_set(100)
        connected = threading.Event()
        c.on_connect = lambda *a: connected.set()
        c.connect(HOST, TCP)
        c.loop_start()
        check(connected.wait(10), f"{name}: no CONNACK")
        sent, seq, deadline = [], 0, time.time() + 60
        while c.is_connected() and time.time() < deadline:
            sent.append((seq, c.publish(f"load/{name}", f'{{"client":"{name}","seq":{seq}}}', qos=1)))
            seq += 1
            # At most 500 unacknowledged (paho would queue without bound).
            while seq > 500 and c.is_connected() and not sent[seq - 500][1].is_published():
                time.sleep(0.001)
        time.sleep(1)
        c.loop_stop()
        results[name] = [s for s, info in sent if info.is_published()]

    clients = [(f"p{i}-v{v}", v) for i, v in enumerate((5, 5, 4, 4))]
    threads = [threading.Thread(target=publisher, args=c) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(out, "w") as f:
        for name, seqs in results.items():
            f.writelines(f"{name} {s}\n" for s in seqs)
    counts = {name: len(results.get(name, [])) for name, _ in clients}
    check(all(counts.values()), f"a publisher was acknowledged nothing: {counts}")


def main():
    name = sys.argv[1]
    fn = globals().get("scenario_" + name)
    if not fn:
        print(f"unknown scenario {name}", file=sys.stderr)
        sys.exit(2)
    try:
        fn()
    except AssertionError as e:
        print(f"{name}: FAILED: {e}")
        sys.exit(1)
    print(f"{name}: ok")


if __name__ == "__main__":
    main()
