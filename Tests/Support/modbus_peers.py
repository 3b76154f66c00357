"""Modbus servers for the hub's tests and benchmark, on pymodbus (real Modbus TCP and RTU stacks).

    modbus_peers.py tcp PORT[,PORT...] [UNITS]   TCP servers on 127.0.0.1, each with units 1..UNITS (2); with
                                                 MODBUS_TRACE=FILE, each request's arrival time goes to FILE
    modbus_peers.py rtu DEVICE [BAUD]            an RTU server (units 1 and 2) on a serial device (a pty)
    modbus_peers.py silent PORT                  takes connections and requests, never answers
    modbus_peers.py garbage PORT                 answers every request with one register, whatever was asked
    modbus_peers.py short PORT                   answers every request with a frame cut short
    modbus_peers.py badcrc DEVICE                an RTU device whose answers all fail their CRC

Every unit holds 300 coils, discrete inputs, holding and input registers at protocol addresses 0-299,
all zero; reading past them is exception 2. Lines on stdin drive it:

    set UNIT TABLE ADDRESS V1 [V2 ...]   TABLE: co, di, hr, ir
    get UNIT TABLE ADDRESS COUNT         prints "values V1 V2 ..."
    stop PORT / start PORT               closes or reopens one TCP server
    quit
"""
import asyncio
import os
import sys
import time

from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

SIZE = 300
CODES = {"co": 1, "di": 2, "hr": 3, "ir": 4}


def context(units):
    def bits():
        return [SimData(0, count=SIZE, values=False, datatype=DataType.BITS)]

    def registers():
        return [SimData(0, count=SIZE, values=0, datatype=DataType.REGISTERS)]
    # Four separate tables (coils, discrete inputs, holding, input), as most devices have.
    return [SimDevice(u, simdata=(bits(), bits(), registers(), registers())) for u in units]


def say(*words):
    print(*words, flush=True)


async def lines():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        yield line.decode().split()


async def drive(servers, start=None):
    async for words in lines():
        if not words:
            continue
        cmd = words[0]
        try:
            if cmd == "set":
                unit, table, address = int(words[1]), words[2], int(words[3])
                for s in servers.values():
                    await s.async_setValues(unit, CODES[table], address, [int(v) for v in words[4:]])
                say("ok")
            elif cmd == "get":
                unit, table, address, count = int(words[1]), words[2], int(words[3]), int(words[4])
                first = next(iter(servers.values()))
                say("values", *[int(v) for v in await first.async_getValues(unit, CODES[table], address, count)])
            elif cmd == "stop":
                port = int(words[1])
                await servers.pop(port).shutdown()
                say("stopped", port)
            elif cmd == "start":
                port = int(words[1])
                servers[port] = await start(port)
                say("started", port)
            elif cmd == "quit":
                break
        except Exception as e:  # a bad line must not end the peer
            say("error", repr(e))


async def tcp(ports, units):
    ctx = context(range(1, units + 1))
    servers = {}

    trace = open(os.environ["MODBUS_TRACE"], "a", buffering=1) if os.environ.get("MODBUS_TRACE") else None

    async def start(port):
        def arrived(sending, packet):
            # The time each request arrives, by port, for the benchmark's own view of the poll grid.
            if not sending:
                trace.write(f"{port} {time.time() * 1000:.1f}\n")
            return packet
        server = ModbusTcpServer(ctx, address=("127.0.0.1", port), trace_packet=arrived if trace else None)
        asyncio.create_task(server.serve_forever())
        for _ in range(100):
            if server.transport is not None:
                break
            await asyncio.sleep(0.02)
        return server

    for p in ports:
        servers[p] = await start(p)
    say("ready", *ports)
    await drive(servers, start)
    for s in servers.values():
        await s.shutdown()


async def rtu(device, baud):
    ctx = context([1, 2])
    server = ModbusSerialServer(ctx, port=device, baudrate=baud)
    asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0.5)
    say("ready", device)
    await drive({0: server})
    await server.shutdown()


async def raw(port, answer):
    async def handle(reader, writer):
        try:
            while True:
                header = await reader.readexactly(6)
                body = await reader.readexactly(int.from_bytes(header[4:6], "big"))
                reply = answer(header, body)
                if reply:
                    writer.write(reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    say("ready", port)
    async for words in lines():
        if words and words[0] == "quit":
            break
    server.close()


def garbage(header, body):
    # A well-framed answer with the right transaction id, unit and function, carrying one register
    # whatever was asked for.
    return header[0:4] + (5).to_bytes(2, "big") + body[0:1] + bytes([body[1], 2, 0, 1])


def short(header, body):
    # The right transaction id and unit, a read-registers answer that claims 20 bytes and carries 2.
    return header[0:4] + (5).to_bytes(2, "big") + body[0:1] + bytes([body[1], 20, 0, 1])


def badcrc(device):
    import serial  # pyserial, which pymodbus's serial server uses too

    line = serial.Serial(device, 19200, timeout=0.05)
    say("ready", device)
    while True:
        request = line.read(8)  # a read request: unit, function, address, count, CRC
        if len(request) == 8:
            line.write(bytes([request[0], request[1], 2, 0, 1, 0xDE, 0xAD]))


def main():
    mode = sys.argv[1]
    if mode == "tcp":
        ports = [int(p) for p in sys.argv[2].split(",")]
        asyncio.run(tcp(ports, int(sys.argv[3]) if len(sys.argv) > 3 else 2))
    elif mode == "rtu":
        asyncio.run(rtu(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 19200))
    elif mode == "silent":
        asyncio.run(raw(int(sys.argv[2]), lambda h, b: None))
    elif mode == "badcrc":
        badcrc(sys.argv[2])
    elif mode == "short":
        asyncio.run(raw(int(sys.argv[2]), short))
    elif mode == "garbage":
        asyncio.run(raw(int(sys.argv[2]), garbage))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
