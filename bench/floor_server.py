"""THE FLOOR, NOT THE RELAY: the least a server can do per NOTIFY, for the fan-out benchmark.

One LISTEN connection; on each notification it writes one pre-encoded event to every open
transport (the state alternating, as the benchmark's flips do), with no read of the state, no
HTTP framework, no limits and no heartbeats. What this machine allows; the relay is measured
against it. ``python -m bench.floor_server --dsn DSN``: prints ``{"port": N}``; stops when
stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

import psycopg

from bench.common import emit, raise_nofile, stdin_lines

HEADERS = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Connection: keep-alive\r\n\r\nretry: 3000\n\n"
)


def frame(seq: int, stable: bool) -> bytes:
    state = "stable" if stable else "processing"
    body = {"stable": stable, "state": state, "since": "2026-01-01T00:00:00Z", "seq": seq}
    return f"id: {seq}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


class Floor:
    def __init__(self) -> None:
        self.transports: set[asyncio.Transport] = set()
        self.seq = int(time.time() * 1000)
        self.stable = True
        self.current = frame(self.seq, self.stable)

    def flip(self) -> None:
        self.seq += 1
        self.stable = not self.stable
        self.current = frame(self.seq, self.stable)
        for transport in self.transports:  # the whole fan-out: one write per client
            transport.write(self.current)


class Stream(asyncio.Protocol):
    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.transport: asyncio.Transport | None = None
        self.request = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport in self.floor.transports:
            return
        self.request += data
        if b"\r\n\r\n" in self.request:
            self.transport.write(HEADERS + self.floor.current)
            self.floor.transports.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.floor.transports.discard(self.transport)


async def listen(dsn: str, floor: Floor, ready: asyncio.Event) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("LISTEN system_stability")
        ready.set()
        async for _note in conn.notifies():
            floor.flip()


async def main(args: argparse.Namespace) -> None:
    floor = Floor()
    ready = asyncio.Event()
    listener = asyncio.create_task(listen(args.dsn, floor, ready), name="floor-listener")
    await ready.wait()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Stream(floor), "127.0.0.1", args.port, backlog=4096)
    emit({"port": server.sockets[0].getsockname()[1]})
    reader = await stdin_lines()
    commands: dict[str, Any] = {"clients": lambda: {"clients": len(floor.transports)}}
    try:
        while line := await reader.readline():
            request = json.loads(line)
            handler = commands.get(request["cmd"])
            emit(handler() if handler else {"error": "unknown command"})
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
            await listener
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, default=0)
    arguments = parser.parse_args()
    raise_nofile()
    asyncio.run(main(arguments))
