"""An LwM2M 1.1 client on aiocoap for the hub's lwm2m source: it registers, serves the Device object
(3), a Temperature object (3303, observable, TLV and text) and answers reads, writes, executes,
discovers, write-attributes, creates and deletes. Prints one line per event; reads commands from stdin:
`update`, `send`, `send-cbor`, `deregister`, `quit`. With `bootstrap`, it first asks the server at SERVER_PORT to
bootstrap it (POST /bs), takes the Bootstrap-Delete, the two Bootstrap-Writes and the Bootstrap-Finish,
and then registers with the server it was given; `bootstrap-senml` does the same but asks for SenML CBOR
(pct=112) and refuses Bootstrap-Writes in TLV. With `large`, its object list and its Device object
are longer than a block, so that the registration goes block-wise (Block1) and so do reads of /3/0 (Block2),
and it lists the formats it reads without TLV.

    lwm2m_client.py SERVER_PORT ENDPOINT [queue|bootstrap|bootstrap-senml|large]
"""
import asyncio
import json
import struct
import sys

import aiocoap
import cbor2
import aiocoap.resource as resource
from aiocoap import Code, Message

TLV, TEXT, LINK, CBOR, LWM2M_CBOR = 11542, 0, 40, 60, 11544
LARGE = len(sys.argv) > 3 and sys.argv[3] == "large"
# The Content-Format asked for Bootstrap-Writes (pct); TLV when not asked.
BOOTSTRAP_FORMAT = 112 if len(sys.argv) > 3 and sys.argv[3] == "bootstrap-senml" else TLV
MODEL = b"Lightweight M2M Client" + (b" with a long model number" * 120 if LARGE else b"")


def say(*parts):
    print(*parts, flush=True)


def tlv(kind, ident, value):
    """One TLV entry (kind: 0 instance, 1 resource instance, 2 multiple resource, 3 resource)."""
    t = kind << 6
    idb = bytes([ident]) if ident <= 0xFF else struct.pack(">H", ident)
    if ident > 0xFF:
        t |= 0x20
    n = len(value)
    if n < 8:
        t |= n
        lb = b""
    elif n <= 0xFF:
        t |= 0x08
        lb = bytes([n])
    else:
        t |= 0x10
        lb = struct.pack(">H", n)
    return bytes([t]) + idb + lb + value


def parse_tlv(data):
    out, i = [], 0
    while i < len(data):
        t = data[i]; i += 1
        idlen = 2 if t & 0x20 else 1
        ident = int.from_bytes(data[i:i + idlen], "big"); i += idlen
        lt = (t >> 3) & 3
        n = t & 7 if lt == 0 else int.from_bytes(data[i:i + lt], "big")
        i += lt
        out.append((t >> 6, ident, data[i:i + n])); i += n
    return out


class Device(resource.Resource):
    def __init__(self):
        super().__init__()
        self.utc_offset = "+01"

    def tlv(self):
        return (tlv(3, 0, b"Open Mobile Alliance") + tlv(3, 1, MODEL)
                + tlv(2, 6, tlv(1, 0, b"\x01") + tlv(1, 1, b"\x05")) + tlv(3, 9, b"\x57")
                + tlv(3, 14, self.utc_offset.encode()))

    async def render_get(self, request):
        if request.opt.accept == LWM2M_CBOR:
            # Encoded by cbor2: a path key as an array (the tuple), then nested maps.
            body = {(3, 0): {0: "Open Mobile Alliance", 1: MODEL.decode(), 6: {0: 1, 1: 5}, 9: 87, 14: self.utc_offset}}
            return Message(payload=cbor2.dumps(body), content_format=LWM2M_CBOR)
        return Message(payload=self.tlv(), content_format=TLV)

    async def render_post(self, request):
        # Partial update of the instance.
        for kind, ident, value in parse_tlv(request.payload):
            if ident == 14:
                self.utc_offset = value.decode()
                say("write /3/0/14", self.utc_offset)
        return Message(code=Code.CHANGED)


class DeviceResource(resource.Resource):
    def __init__(self, device, ident):
        super().__init__()
        self.device, self.ident = device, ident

    async def render_get(self, request):
        say("read", "/3/0/%d" % self.ident)
        if self.ident == 9:
            if request.opt.accept == TEXT:
                return Message(payload=b"87", content_format=TEXT)
            if request.opt.accept == CBOR:
                return Message(payload=cbor2.dumps(87), content_format=CBOR)
            return Message(payload=tlv(3, 9, b"\x57"), content_format=TLV)
        return Message(code=Code.NOT_FOUND)

    async def render_put(self, request):
        if self.ident != 14:
            return Message(code=Code.METHOD_NOT_ALLOWED)
        if request.opt.content_format == TLV and LARGE:
            return Message(code=Code.UNSUPPORTED_CONTENT_FORMAT)  # it said it reads no TLV
        if request.opt.content_format == TLV:
            value = parse_tlv(request.payload)[0][2].decode()
        elif request.opt.content_format == 110:
            value = json.loads(request.payload)[0]["vs"]
        elif request.opt.content_format == 112:
            record = cbor2.loads(request.payload)[0]  # RFC 8428 labels: 0 name, 3 string value
            if record[0] != "/3/0/14":
                return Message(code=Code.BAD_REQUEST)
            value = record[3] + " (senml-cbor)"
        elif request.opt.content_format == TEXT:
            value = request.payload.decode() + " (text)"
        else:
            return Message(code=Code.UNSUPPORTED_CONTENT_FORMAT)
        self.device.utc_offset = value.split(" ")[0]
        say("write /3/0/14", value)
        return Message(code=Code.CHANGED)

    async def render_post(self, request):
        if self.ident == 4:
            say("execute /3/0/4", request.payload.decode() or "-")
            return Message(code=Code.CHANGED)
        return Message(code=Code.METHOD_NOT_ALLOWED)


class Temperature(resource.ObservableResource):
    def __init__(self):
        super().__init__()
        self.value = 21.5
        self.attributes = ""
        self.ticker = None

    def update_observation_count(self, count):
        say("observers", count)
        if count and self.ticker is None:
            self.ticker = asyncio.get_event_loop().call_later(0.3, self.tick)

    def tick(self):
        self.value += 0.5
        self.updated_state()
        self.ticker = asyncio.get_event_loop().call_later(0.3, self.tick)

    async def render_get(self, request):
        if request.opt.accept == TEXT:
            return Message(payload=str(self.value).encode(), content_format=TEXT)
        return Message(payload=tlv(3, 5700, struct.pack(">d", self.value)), content_format=TLV)

    async def render_put(self, request):
        # Write-Attributes: the query only, no payload.
        self.attributes = "&".join(request.opt.uri_query)
        say("attributes /3303/0/5700", self.attributes)
        return Message(code=Code.CHANGED)


class TemperatureInstance(resource.Resource):
    async def render_get(self, request):
        if request.opt.accept == LINK:
            return Message(payload=b"</3303/0>,</3303/0/5700>;pmin=1,</3303/0/5701>", content_format=LINK)
        return Message(code=Code.NOT_ACCEPTABLE)


class TemperatureObject(resource.Resource):
    def __init__(self, site):
        super().__init__()
        self.site = site

    async def render_post(self, request):
        if request.opt.content_format in (110, 112):
            # SenML names each resource by its full path: the instance is in the names.
            records = json.loads(request.payload) if request.opt.content_format == 110 else \
                [{"n": r.get(0), "v": r.get(2)} for r in cbor2.loads(request.payload)]
            parts = records[0]["n"].strip("/").split("/")
            if len(parts) != 3 or parts[0] != "3303":
                return Message(code=Code.BAD_REQUEST)
            instance = int(parts[1])
            say("create /3303/%d (%s) %s=%s" % (instance, "senml-json" if request.opt.content_format == 110 else "senml-cbor",
                                                parts[2], records[0]["v"]))
            self.site.add_resource(["3303", str(instance)], Removable("/3303/%d" % instance))
            return Message(code=Code.CREATED, location_path=["3303", str(instance)])
        entries = parse_tlv(request.payload)
        instance = entries[0][1] if entries and entries[0][0] == 0 else 1
        say("create /3303/%d" % instance)
        self.site.add_resource(["3303", str(instance)], Removable("/3303/%d" % instance))
        return Message(code=Code.CREATED, location_path=["3303", str(instance)])


class Removable(resource.Resource):
    def __init__(self, path):
        super().__init__()
        self.path = path

    async def render_delete(self, request):
        say("delete", self.path)
        return Message(code=Code.DELETED)


class Root(resource.ObservableResource):
    """LwM2M 1.1 composite operations on the root: Read- and Observe-Composite (FETCH with the paths as
    SenML names) and Write-Composite (iPATCH with SenML records), in SenML-JSON (110) or SenML-CBOR (112)."""

    def __init__(self, device, temperature):
        super().__init__()
        self.device, self.temperature = device, temperature
        self.ticker = None

    def decode(self, request):
        if request.opt.content_format == 110:
            return [{"n": r.get("bn", "") + r.get("n", ""), **{k: r[k] for k in ("v", "vs", "vb") if k in r}}
                    for r in json.loads(request.payload)]
        if request.opt.content_format == 112:
            labels = {-2: "bn", 0: "n", 2: "v", 3: "vs", 4: "vb"}
            records = [{labels.get(k, k): v for k, v in r.items()} for r in cbor2.loads(request.payload)]
            return [{"n": r.get("bn", "") + r.get("n", ""), **{k: r[k] for k in ("v", "vs", "vb") if k in r}} for r in records]
        return None

    def value(self, name):
        return {"/3/0/9": {"v": 87}, "/3/0/14": {"vs": self.device.utc_offset},
                "/3303/0/5700": {"v": self.temperature.value}}.get(name)

    def update_observation_count(self, count):
        say("composite observers", count)
        if count and self.ticker is None:
            self.ticker = asyncio.get_event_loop().call_later(0.3, self.tick)
        elif not count and self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None

    def tick(self):
        self.temperature.value += 0.5
        self.updated_state()
        self.ticker = asyncio.get_event_loop().call_later(0.3, self.tick)

    async def render_fetch(self, request):
        names = self.decode(request)
        if names is None:
            return Message(code=Code.UNSUPPORTED_CONTENT_FORMAT)
        say("read-composite", int(request.opt.content_format), " ".join(r["n"] for r in names))
        records = []
        for r in names:
            v = self.value(r["n"])
            if v is None:
                return Message(code=Code.NOT_FOUND)
            records.append({"n": r["n"], **v})
        accept = request.opt.accept or request.opt.content_format
        if accept == 112:
            keys = {"n": 0, "v": 2, "vs": 3, "vb": 4}
            return Message(payload=cbor2.dumps([{keys[k]: v for k, v in r.items()} for r in records]), content_format=112)
        return Message(payload=json.dumps(records).encode(), content_format=110)

    async def render_get(self, request):
        # Bootstrap-Discover: what is left after a Bootstrap-Delete (the bootstrap account is /0/1 here).
        if request.opt.accept != LINK:
            return Message(code=Code.NOT_ACCEPTABLE)
        say("bootstrap-discover /")
        return Message(payload=b'lwm2m="1.1",</0/1>;uri="coap://bootstrap",</3/0>,</3303/0>', content_format=LINK)

    async def render_delete(self, request):
        say("bootstrap-delete /")
        self.device.accounts.clear()
        return Message(code=Code.DELETED)

    async def render_ipatch(self, request):
        records = self.decode(request)
        if records is None:
            return Message(code=Code.UNSUPPORTED_CONTENT_FORMAT)
        for r in records:
            if r["n"] != "/3/0/14" or "vs" not in r:
                return Message(code=Code.METHOD_NOT_ALLOWED)
            self.device.utc_offset = r["vs"]
            say("write-composite /3/0/14", r["vs"], int(request.opt.content_format))
        return Message(code=Code.CHANGED)


def tlv_values(payload):
    """Resource id -> bytes of a TLV Write of one object instance."""
    return {ident: value for kind, ident, value in parse_tlv(payload) if kind == 3}


def senml_cbor_values(payload, instance):
    """Resource id -> bytes (as TLV would carry them) of a SenML CBOR write of one object instance;
    every record must name a resource of that instance."""
    labels = {-2: "bn", 0: "n", 2: "v", 3: "vs", 4: "vb", 8: "vd"}
    values, base = {}, ""
    for record in cbor2.loads(payload):
        r = {labels.get(k, k): v for k, v in record.items()}
        base = r.get("bn", base)
        name = base + r.get("n", "")
        prefix = instance + "/"
        if not name.startswith(prefix) or not name[len(prefix):].isdigit():
            raise ValueError("record %r is not a resource of %s" % (name, instance))
        if "vs" in r:
            value = r["vs"].encode()
        elif "vd" in r:
            value = bytes(r["vd"])
        elif "vb" in r:
            value = b"\x01" if r["vb"] else b"\x00"
        else:
            value = int(r["v"]).to_bytes(8, "big", signed=True)
        values[int(name[len(prefix):])] = value
    return values


class Account(resource.Resource):
    """/0/1 (Security) or /1/0 (Server), written by the bootstrap server."""

    def __init__(self, device, path):
        super().__init__()
        self.device, self.path = device, path

    async def render_put(self, request):
        if request.opt.content_format != BOOTSTRAP_FORMAT:
            say("bootstrap-write refused: content format", request.opt.content_format)
            return Message(code=Code.UNSUPPORTED_CONTENT_FORMAT)
        try:
            values = tlv_values(request.payload) if BOOTSTRAP_FORMAT == TLV else senml_cbor_values(request.payload, self.path)
        except (ValueError, KeyError) as e:
            say("bootstrap-write refused:", e)
            return Message(code=Code.BAD_REQUEST)
        self.device.accounts[self.path] = values
        if self.path.startswith("/0/"):
            say("bootstrap-write", self.path, values[0].decode(), "mode", int.from_bytes(values[2], "big", signed=True),
                "ssid", int.from_bytes(values[10], "big", signed=True), "identity", values[3].decode() or "-")
        else:
            say("bootstrap-write /1/0 lifetime", int.from_bytes(values[1], "big", signed=True), "binding", values[7].decode())
        return Message(code=Code.CHANGED)


class Finish(resource.Resource):
    def __init__(self, done):
        super().__init__()
        self.done = done

    async def render_post(self, request):
        say("bootstrap-finish")
        self.done.set()
        return Message(code=Code.CHANGED)


async def main(port, endpoint, mode):
    queue = mode == "queue"
    site = resource.Site()
    device = Device()
    device.accounts = {}
    finished = asyncio.Event()
    site.add_resource(["0", "0"], Account(device, "/0/0"))
    site.add_resource(["0", "1"], Account(device, "/0/1"))
    site.add_resource(["1", "0"], Account(device, "/1/0"))
    site.add_resource(["bs"], Finish(finished))
    site.add_resource(["3", "0"], device)
    for ident in (4, 9, 14):
        site.add_resource(["3", "0", str(ident)], DeviceResource(device, ident))
    temperature = Temperature()
    site.add_resource(["3303", "0", "5700"], temperature)
    site.add_resource([], Root(device, temperature))
    site.add_resource(["3303", "0"], TemperatureInstance())
    site.add_resource(["3303"], TemperatureObject(site))
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", 0))
    server, lifetime = "coap://127.0.0.1:%d" % port, 60
    if mode.startswith("bootstrap"):
        pct = "&pct=%d" % BOOTSTRAP_FORMAT if BOOTSTRAP_FORMAT != TLV else ""
        r = await ctx.request(Message(code=Code.POST, uri="%s/bs?ep=%s%s" % (server, endpoint, pct))).response
        say("bootstrap-request", r.code)
        await asyncio.wait_for(finished.wait(), 10)
        server = next(v for k, v in device.accounts.items() if k.startswith("/0/"))[0].decode()
        lifetime = int.from_bytes(device.accounts["/1/0"][1], "big", signed=True)
    objects = b'</>;rt="oma.lwm2m";ct=11542,</1/0>,</3/0>,</3303/0>;ver=1.1'
    if LARGE:
        # Also says it reads no TLV, so that writes come in SenML.
        objects = objects.replace(b"ct=11542", b'ct="60 110 112 11544"') + b"".join(b",</32769/%d>" % i for i in range(200))
    r = await ctx.request(Message(code=Code.POST, uri="%s/rd?ep=%s&lt=%d&lwm2m=1.1&b=U%s" % (server, endpoint, lifetime, "&Q" if queue else ""),
                                  payload=objects, content_format=LINK)).response
    location = "/" + "/".join(r.opt.location_path)
    say("registered", r.code, location)
    reader = asyncio.StreamReader()
    await asyncio.get_event_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line == "update":
            r = await ctx.request(Message(code=Code.POST, uri=server + location + "?lt=30")).response
            say("updated", r.code)
        elif line == "send":
            r = await ctx.request(Message(code=Code.POST, uri=server + "/dp", content_format=110,
                                          payload=b'[{"bn":"/3303/0/","n":"5700","v":30.5},{"bn":"/3/0/","n":"9","v":55}]')).response
            say("sent", r.code)
        elif line == "send-empty":
            r = await ctx.request(Message(code=Code.POST, uri=server + "/dp", content_format=110, payload=b'[]')).response
            say("sent-empty", r.code)
        elif line == "send-cbor":
            # LwM2M CBOR (1.2): nested maps, and a whole path as one array key.
            body = cbor2.dumps({3303: {0: {5700: 31.5}}, (3, 0, 9): 56})
            r = await ctx.request(Message(code=Code.POST, uri=server + "/dp", content_format=LWM2M_CBOR, payload=body)).response
            say("sent-cbor", r.code)
        elif line == "deregister":
            r = await ctx.request(Message(code=Code.DELETE, uri=server + location)).response
            say("deregistered", r.code)
        elif line in ("quit", ""):
            break
    await ctx.shutdown()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""))
