"""aiocoap as a device for the hub's CoAP source: posts telemetry, observes its command resource and
answers the first command it receives. Prints one line per outcome for the test to read.

    coap_peers.py PORT DEVICE
"""
import asyncio
import json
import sys

import aiocoap
from aiocoap import Code, Message
from aiocoap.numbers.contentformat import ContentFormat


async def main(port: int, device: str) -> None:
    base = f"coap://127.0.0.1:{port}"
    ctx = await aiocoap.Context.create_client_context()
    try:
        r = await ctx.request(Message(code=Code.POST, uri=f"{base}/t/{device}", payload=b'{"humidity": 40}',
                                      content_format=ContentFormat.JSON)).response
        print("telemetry", r.code, flush=True)
        # SenML-CBOR: [{bn: "dev/", n: "temp", v: 21.5}] with integer labels.
        senml = bytes.fromhex("81a321646465762f") + bytes.fromhex("00647465") + bytes.fromhex("6d70") + bytes.fromhex("02fb4035800000000000")
        r = await ctx.request(Message(code=Code.PUT, uri=f"{base}/t/{device}", payload=senml, content_format=112)).response
        print("senml", r.code, flush=True)
        observation = ctx.request(Message(code=Code.GET, uri=f"{base}/c/{device}", observe=0))
        first = await observation.response
        print("observing", first.code, "observe" if first.opt.observe is not None else "no-observe", flush=True)
        async for n in observation.observation:
            if not n.payload:
                continue
            command = json.loads(n.payload)
            print("command", command["metadata"]["command"], command["payload"], flush=True)
            r = await ctx.request(Message(code=Code.POST, uri=f"{base}/r/{device}/{command['metadata']['command_id']}",
                                          payload=b'{"ok": true}', content_format=ContentFormat.JSON)).response
            print("result", r.code, flush=True)
            break
        observation.observation.cancel()
    finally:
        await ctx.shutdown()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(int(sys.argv[1]), sys.argv[2]), 30))
