"""A swarm of SSE clients in one process: ``python -m bench.sse_clients``.

The measuring side must cost little, so each client is a bare :class:`asyncio.Protocol` (on
uvloop when it is installed: ``make bench`` installs it) that
splits the stream on blank lines and notes, per event id, the time it arrived
(``time.monotonic()``: CLOCK_MONOTONIC, the same clock in every process on the machine, so the
parent's commit timestamps compare directly). Driven by JSON lines on stdin:

- ``{"cmd": "connect", "port": P, "n": N}``: connect N clients, at most ``concurrency`` at a
  time in the handshake; answers when every one has its first event.
- ``{"cmd": "wait", "flip": K, "timeout": T}``: answers when every connected client has seen
  K changes of state since its first event (or on time-out). Counting changes per client,
  not event ids, lets one swarm span several relays, whose sequence numbers differ.
- ``{"cmd": "report", "flips": [[K, T0], ...]}``: per flip, the share of clients that got
  it and the latency percentiles from T0.
- ``{"cmd": "close"}``: disconnect everyone.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from bench.common import emit, percentile, raise_nofile, stdin_lines

EVENT = re.compile(rb'id: \d+\ndata: \{[^\n]*"state":"(\w+)"')
FEED_READY = b"event: ready\n"
FEED_PAYLOAD = re.compile(rb'data: \{"k":(\d+)')


class EventStream(asyncio.Protocol):
    """One bare SSE stream: sends its request, then hands over its events once the answer is
    a 200 (``ready`` fails if it is not)."""

    __slots__ = ("buffer", "headers_ok", "ready", "request", "transport")

    def __init__(self, request: bytes, ready: asyncio.Future[None]) -> None:
        self.request = request
        self.ready = ready
        self.buffer = b""
        self.headers_ok = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def complete_events(self, data: bytes) -> tuple[bytes, int] | None:
        """The buffer up to its last complete event (and that end), once the answer is a 200;
        None while no event is complete (or the answer was not a 200)."""
        buffer = self.buffer + data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self.buffer = buffer
            return None
        self.buffer = buffer[end + 2 :]
        if not self.headers_ok:
            if not buffer.startswith(b"HTTP/1.1 200"):
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(buffer[:40].decode(errors="replace")))
                return None
            self.headers_ok = True
        return buffer, end + 2


Client = TypeVar("Client", bound=EventStream)


async def connect_clients(
    clients: list[Client],
    make: Callable[[int], Client],
    port: int,
    n: int,
    concurrency: int,
    timeout: float,
) -> dict[str, Any]:
    """Connects ``n`` clients, the k-th made by ``make(k)``, to 127.0.0.1:``port``, at most
    ``concurrency`` at a time in the handshake, for ``timeout`` seconds at most; each one
    appended to ``clients`` once ``ready``."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def one(k: int) -> None:
        async with gate:
            client = make(k)
            try:
                await loop.create_connection(lambda: client, "127.0.0.1", port)
                await client.ready
            except (OSError, ConnectionError, RuntimeError) as error:
                failures.append(type(error).__name__ + ": " + str(error)[:80])
                return
            clients.append(client)

    started = time.monotonic()
    tasks = [asyncio.ensure_future(one(k)) for k in range(n)]
    _done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    seconds = time.monotonic() - started
    return {
        "connected": len(clients),
        "seconds": round(seconds, 3),
        "failed": len(failures) + len(pending),
        "failures": sorted(set(failures))[:5],
    }


class Swarm:
    def __init__(self) -> None:
        self.clients: list[SseClient] = []
        self.arrivals: dict[int, list[float]] = {}  # k-th change of state → arrival times
        self.live = 0  # clients that have had their first event and are still connected

    def on_change(self, k: int, now: float) -> None:
        times = self.arrivals.get(k)
        if times is None:
            times = self.arrivals[k] = []
        times.append(now)

    async def connect(
        self,
        port: int,
        n: int,
        concurrency: int,
        timeout: float,
        path: str = "/api/system-status/live",
        sample: int = 0,
    ) -> dict[str, Any]:
        """``sample``: clients of a feed (``path``), recording the arrival of every payload
        whose ``k`` is a multiple of it."""
        loop = asyncio.get_running_loop()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()

        def make(_k: int) -> SseClient:
            if sample:
                return FeedClient(self, request, loop.create_future(), sample)
            return SseClient(self, request, loop.create_future())

        return await connect_clients(self.clients, make, port, n, concurrency, timeout)

    async def wait(self, flip: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            count = len(self.arrivals.get(flip, ()))
            if count >= self.live or time.monotonic() >= deadline:
                return {"count": count, "live": self.live}
            await asyncio.sleep(0.005)

    def report(self, flips: list[list[float]]) -> dict[str, Any]:
        n = len(self.clients)
        rows = []
        for flip, t0 in flips:
            times = self.arrivals.get(int(flip), [])
            lat = [(t - t0) * 1000 for t in times]
            rows.append(
                {
                    "flip": int(flip),
                    "fraction": len(times) / n if n else 0.0,
                    "p50_ms": percentile(lat, 50) if lat else None,
                    "p99_ms": percentile(lat, 99) if lat else None,
                    "max_ms": max(lat) if lat else None,
                    "latencies_ms": lat,
                }
            )
        return {"flips": rows, "clients": n}

    def feed_report(self, sent: list[list[float]], total: int) -> dict[str, Any]:
        """Per sampled payload ``[k, t0]``: arrival latencies; and how many of ``total``
        payloads each client got."""
        latencies = [(t - t0) * 1000 for k, t0 in sent for t in self.arrivals.get(int(k), [])]
        counts = [c.received for c in self.clients if isinstance(c, FeedClient)]
        delivered = sum(counts) / (total * len(counts)) if counts and total else 0.0
        last = max((int(k) for k, _t0 in sent), default=-1)
        return {
            "clients": len(counts),
            "delivered": delivered,
            "got_last": sum(
                1 for c in self.clients if isinstance(c, FeedClient) and c.last >= last
            ),
            "complete_clients": sum(1 for c in counts if c >= total),
            "p50_ms": percentile(latencies, 50) if latencies else None,
            "p99_ms": percentile(latencies, 99) if latencies else None,
            "max_ms": max(latencies) if latencies else None,
        }

    def close(self) -> dict[str, Any]:
        count = 0
        for client in self.clients:
            client.open = False  # no longer counted in `live`
            if client.transport is not None and not client.transport.is_closing():
                client.transport.close()
                count += 1
        self.clients.clear()
        self.arrivals.clear()
        self.live = 0
        return {"closed": count}


class SseClient(EventStream):
    """One stream. Parses only what the benchmark needs: each event's id and state."""

    __slots__ = ("changes", "open", "state", "swarm")

    def __init__(self, swarm: Swarm, request: bytes, ready: asyncio.Future[None]) -> None:
        super().__init__(request, ready)
        self.swarm = swarm
        self.open = False
        self.state = b""
        self.changes = 0

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        complete = self.complete_events(data)
        if complete is None:
            return
        buffer, end = complete
        for match in EVENT.finditer(buffer, 0, end):
            state = match.group(1)
            if self.open and state != self.state:
                self.changes += 1
                self.swarm.on_change(self.changes, now)
            self.state = state
            if not self.open:
                self.open = True
                self.swarm.live += 1
                if not self.ready.done():
                    self.ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open:
            self.open = False
            self.swarm.live -= 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before the first event"))


class FeedClient(SseClient):
    """One stream of a feed: counts its payloads, times every ``sample``-th."""

    __slots__ = ("last", "received", "sample")

    def __init__(
        self, swarm: Swarm, request: bytes, ready: asyncio.Future[None], sample: int
    ) -> None:
        super().__init__(swarm, request, ready)
        self.sample = sample
        self.received = 0
        self.last = -1

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        complete = self.complete_events(data)
        if complete is None:
            return
        buffer, end = complete
        if not self.open and FEED_READY in buffer:
            self.open = True
            self.swarm.live += 1
            if not self.ready.done():
                self.ready.set_result(None)
        for match in FEED_PAYLOAD.finditer(buffer, 0, end):
            self.received += 1
            k = self.last = int(match.group(1))
            if k % self.sample == 0:
                self.swarm.on_change(k, now)


async def main() -> None:
    swarm = Swarm()
    reader = await stdin_lines()
    while line := await reader.readline():
        request = json.loads(line)
        cmd = request["cmd"]
        if cmd == "connect":
            emit(
                await swarm.connect(
                    request["port"],
                    request["n"],
                    request.get("concurrency", 500),
                    request.get("timeout", 120.0),
                    request.get("path", "/api/system-status/live"),
                    request.get("sample", 0),
                )
            )
        elif cmd == "wait":
            emit(await swarm.wait(request["flip"], request["timeout"]))
        elif cmd == "report":
            emit(swarm.report(request["flips"]))
        elif cmd == "feed_report":
            emit(swarm.feed_report(request["sent"], request["total"]))
        elif cmd == "close":
            emit(swarm.close())
        else:
            emit({"error": f"unknown command {cmd}"})
    swarm.close()


if __name__ == "__main__":
    raise_nofile()
    try:  # the measuring side should cost little: libuv's loop where it is installed
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
