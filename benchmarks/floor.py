"""The floor under scenario 5: one event-loop turn and one socket write per token, and nothing else.

Over the zero-cost engine every streamed token costs the gateway at least what
this costs: the engine's task resumes once (the zero-cost engine yields to the
loop between tokens) and one SSE frame goes to the connection (one `send()`,
on loopback also the receiving end's TCP input, in the sender's kernel time).
No HTTP, no JSON, no gateway: `streams` tasks on uvloop, as uvicorn runs the
gateway, each writing `tokens` frames to its own connection, read and dropped
by a client in another process. What the gateway spends per token above this
is its own; what a 3x gain over the baseline would leave it is the target
minus this (benchmarks/results/2026-11-30-frontend/NOTES.md).

    python -m benchmarks.floor [--streams N] [--tokens N]   # prints one JSON line
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import uvloop

# The frame of one `/chat_stream` delta, as the gateway spells it (gateway/chat/sse.py).
FRAME = b'event: delta\r\ndata: {"text":"tok "}\r\n\r\n'


def measure(streams: int, tokens: int) -> dict[str, Any]:
    """The floor's figures, measured in a process of its own (the caller's CPU stays out of them)."""
    command = [sys.executable, "-m", "benchmarks.floor", "--streams", str(streams), "--tokens", str(tokens)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


async def _serve(listener: socket.socket, streams: int, tokens: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []
    for _ in range(streams):
        conn, _ = await loop.sock_accept(listener)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvicorn sets it
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, conn)
        transports.append(transport)

    async def stream(transport: asyncio.Transport) -> None:
        for _ in range(tokens):
            await asyncio.sleep(0)  # the zero-cost engine's turn of the loop
            transport.write(FRAME)
        transport.close()

    before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(stream(t) for t in transports))
    after = resource.getrusage(resource.RUSAGE_SELF)
    count = streams * tokens
    user = (after.ru_utime - before.ru_utime) * 1e6 / count
    system = (after.ru_stime - before.ru_stime) * 1e6 / count
    return {
        "streams": streams,
        "tokens": count,
        "us_per_token": user + system,
        "user_us_per_token": user,
        "system_us_per_token": system,
    }


def _read_all(port: int, streams: int) -> None:
    """The client: `streams` connections, each read to its end."""

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while await reader.read(1 << 16):
            pass
        writer.close()

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(streams)))

    uvloop.run(main())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=2048, help="per stream")
    args = parser.parse_args(argv)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(args.streams)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    client = os.fork()  # before any loop runs here: the child starts its own
    if client == 0:
        listener.close()
        _read_all(port, args.streams)
        os._exit(0)
    figures = uvloop.run(_serve(listener, args.streams, args.tokens))
    os.waitpid(client, 0)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
