"""Server-Sent Events fan-out: every event encoded once, the same bytes written to every client.

Wire format (the seed's ``useSystemStability`` hook reads ``onmessage``): stability events
are *unnamed* (``id: <seq>`` + ``data: {"stable": ..., "state": ..., "since": ..., "seq": ...}``);
relayed channels are named events without an id, so ``Last-Event-ID`` always names the
last stability event a client saw.

Hot path, hand-rolled on purpose: frames go straight to each client's transport, with
the HTTP chunk framing pre-encoded once per event, instead of through
``StreamResponse.write()`` (an awaited call per client per event). No task and no queue
per client: the handler coroutine is the only per-client cost.

Bound: a client whose unsent bytes exceed ``http.client_buffer`` is disconnected (policy:
drop the slow client; its EventSource reconnects with ``Last-Event-ID`` and resyncs).
"""

from __future__ import annotations

import asyncio
import json
from asyncio import Transport

from aiohttp import web

from relay.config import HttpConfig
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.stability import Snapshot, Stability

log = get_logger("relay.sse")

HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
PING = b": ping\n\n"


class Frame:
    """One event, encoded once: the raw bytes and their HTTP/1.1 chunked form."""

    __slots__ = ("chunked", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.chunked = b"%x\r\n%b\r\n" % (len(raw), raw)

    def for_client(self, client: Client) -> bytes:
        return self.chunked if client.chunked else self.raw


def stability_frame(snapshot: Snapshot) -> Frame:
    data = json.dumps(snapshot.as_json(), separators=(",", ":"))
    return Frame(f"id: {snapshot.seq}\ndata: {data}\n\n".encode())


def named_frame(event: str, data: str) -> Frame:
    return Frame(f"event: {event}\ndata: {data}\n\n".encode())


class Client:
    """One connected stream: its transport, its framing, and the future its handler awaits."""

    __slots__ = ("chunked", "done", "transport")

    def __init__(self, transport: Transport, chunked: bool, done: asyncio.Future[None]) -> None:
        self.transport = transport
        self.chunked = chunked
        self.done = done


class Hub:
    """The set of connected clients and the one place that writes to them."""

    def __init__(self, stability: Stability, settings: HttpConfig, metrics: Metrics) -> None:
        self._stability = stability
        self._settings = settings
        self._metrics = metrics
        self._clients: set[Client] = set()
        self._admitting = 0
        self._current = stability_frame(stability.current)
        self._retry = Frame(b"retry: %d\n\n" % round(settings.retry * 1000))
        self._ping = Frame(PING)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._logged_count = 0
        stability.subscribe(self.publish_state)

    def __len__(self) -> int:
        return len(self._clients)

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("a closed hub cannot be started again")
        if self._task is None:
            self._task = asyncio.create_task(self._heartbeats(), name="relay-sse-heartbeat")

    async def aclose(self) -> None:
        """Tell every client to come back (a final ``retry:``) and end every stream."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._broadcast(self._retry)
        for client in self._clients:
            if not client.done.done():
                client.done.set_result(None)
        log.info("sse_closed", clients=len(self._clients))

    def publish_state(self, snapshot: Snapshot) -> None:
        self._current = stability_frame(snapshot)
        self._broadcast(self._current)

    def publish_event(self, event: str, data: str) -> None:
        self._broadcast(named_frame(event, data))

    def _broadcast(self, frame: Frame) -> None:
        limit = self._settings.client_buffer
        behind: list[Client] = []
        for client in self._clients:
            transport = client.transport
            if transport.is_closing():
                continue
            transport.write(frame.chunked if client.chunked else frame.raw)
            if transport.get_write_buffer_size() > limit:
                behind.append(client)
        for client in behind:
            # Policy when a client's buffer is full: drop it; it reconnects and resyncs.
            self._metrics.sse_dropped.inc()
            client.transport.abort()
        if behind:
            log.warning("sse_clients_dropped", count=len(behind), reason="unsent buffer full")

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._settings.heartbeat)
            self._broadcast(self._ping)
            if len(self._clients) != self._logged_count:
                self._logged_count = len(self._clients)
                log.info("sse_clients", count=self._logged_count)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/system-status/live``: the stream, from the current state on."""
        if self._closed:
            raise web.HTTPServiceUnavailable(headers={"Retry-After": "1"})
        if len(self._clients) + self._admitting >= self._settings.max_clients:
            self._metrics.sse_refused.inc()
            raise web.HTTPTooManyRequests(
                headers={"Retry-After": "5"}, text="too many live clients\n"
            )
        self._admitting += 1
        try:
            response = web.StreamResponse(headers=HEADERS)
            await response.prepare(request)
        finally:
            self._admitting -= 1
        transport = request.transport
        if transport is None or transport.is_closing() or self._closed:
            return response
        client = Client(
            transport,
            response.headers.get("Transfer-Encoding") == "chunked",
            asyncio.get_running_loop().create_future(),
        )
        # No await between sending the current state and joining the set: no event is lost.
        transport.write(self._retry.for_client(client))
        if request.headers.get("Last-Event-ID") != str(self._stability.current.seq):
            transport.write(self._current.for_client(client))
        self._clients.add(client)
        try:
            await client.done
        finally:
            self._clients.discard(client)
        return response
