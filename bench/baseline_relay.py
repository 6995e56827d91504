"""BASELINE, NOT THE RELAY: a naive psycopg + aiohttp relay, for comparison in the benchmarks.

The design most people would write first (and the seed document's, ported to Python): one
LISTEN connection; each notification re-reads ``is_system_stable()`` and, on a change, puts the
event into **one asyncio.Queue per client**; each client's handler awaits its queue and calls
``StreamResponse.write()``. It speaks the relay's wire format (``retry:``, unnamed events with
``id:`` and the same JSON), so the benchmark's clients cannot tell the two apart. It keeps the
current state in memory (it does not query per connection, unlike the seed), so it is a fair
baseline for fan-out, not a straw man. No reconnect, no heartbeats, no limits: do not deploy.

``python -m bench.baseline_relay --dsn DSN``: prints ``{"port": N}``, stops when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

import psycopg
from aiohttp import web

from bench.common import emit, raise_nofile, stdin_lines


class BaselineRelay:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.queues: set[asyncio.Queue[str]] = set()
        self.stable: bool | None = None
        self.seq = int(time.time() * 1000)
        self.since = time.time()

    def event(self) -> str:
        state = {True: "stable", False: "processing", None: "unknown"}[self.stable]
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.since))
        body = {"stable": self.stable, "state": state, "since": since + "Z", "seq": self.seq}
        return f"id: {self.seq}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"

    async def listen(self, ready: asyncio.Event) -> None:
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        async with conn:
            await conn.execute("LISTEN system_stability")
            await self.read(conn)
            ready.set()
            while True:
                async for _note in conn.notifies(stop_after=1):
                    pass
                await self.read(conn)

    async def read(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cursor = await conn.execute("SELECT public.is_system_stable()")
        row = await cursor.fetchone()
        stable = bool(row[0]) if row else None
        if stable != self.stable:
            self.stable, self.seq, self.since = stable, self.seq + 1, time.time()
            text = self.event()
            for queue in self.queues:
                queue.put_nowait(text)

    async def live(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[str] = asyncio.Queue()
        self.queues.add(queue)
        try:
            await response.write(b"retry: 3000\n\n" + self.event().encode())
            while True:
                text = await queue.get()
                await response.write(text.encode())
        finally:
            self.queues.discard(queue)


async def main(args: argparse.Namespace) -> None:
    baseline = BaselineRelay(args.dsn)
    ready = asyncio.Event()
    listener = asyncio.create_task(baseline.listen(ready), name="baseline-listener")
    await ready.wait()
    app = web.Application()
    app.router.add_get("/api/system-status/live", baseline.live)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096)
    await site.start()
    emit({"port": runner.addresses[0][1]})
    reader = await stdin_lines()
    try:
        while line := await reader.readline():
            request = json.loads(line)
            if request["cmd"] == "clients":
                emit({"clients": len(baseline.queues)})
            else:
                emit({"error": "unknown command"})
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
            await listener
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, default=0)
    arguments = parser.parse_args()
    raise_nofile()
    asyncio.run(main(arguments))
