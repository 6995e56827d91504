"""The open event streams and the one place that writes to them: the registry of clients,
publishing, heartbeats, the per-client bound and the end of a stream whose credential is no
longer valid. Nothing here answers HTTP: ``relay/http/streams.py`` admits a request (asking
:meth:`Fanout.refusal`), writes the headers and the first bytes (:meth:`Fanout.opening`), then
hands the socket over (:meth:`Fanout.join`); ``relay/fanout/takeover.py`` says how it is held.
The events' bytes are ``relay/fanout/frames.py``'s.

Hot path, hand-rolled on purpose (``docs/benchmarks.md`` has the figures):

- Frames go straight to each client's transport, with the HTTP chunk framing pre-encoded
  once per event, instead of through ``StreamResponse.write()`` (an awaited call per client
  per event). No task and no queue per client.
- Once its headers and first event are out (in one write), a stream is taken over from
  aiohttp where that is known to work (``relay/fanout/takeover.py``): a :class:`Client`
  becomes the socket's protocol and aiohttp forgets the connection. An open stream then
  costs its transport and one small object, about 2 KB, instead of aiohttp's request,
  response, writer, parser, protocol, timer and two tasks (about 12 KB). Elsewhere the
  handler stays and the same frames go to the same documented transport.

Bound: a client whose unsent bytes exceed ``http.client_buffer`` is disconnected (policy:
drop the slow client; its EventSource reconnects with ``Last-Event-ID`` and resyncs).

A stream lasts only as long as the credential that let it in (its :class:`Grant`, which
``relay/http/streams.py`` passes to :meth:`Fanout.join`): when it expires (one timer per
stream whose credential expires, nothing per event) or a reload's rules no longer accept it
(:meth:`Fanout.recheck`), the client gets a last ``event: unauthorized`` with
``data: {"reason": ...}`` and the stream ends. A browser's EventSource then reconnects and
meets the current rules (a 401 stops it).
"""

from __future__ import annotations

import asyncio
import time
from asyncio import Transport
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, Protocol

from relay.config import HttpConfig
from relay.fanout.frames import (
    END_OF_STREAM,
    PING,
    Frame,
    named_frame,
    stability_frame,
    unauthorized_frame,
)
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.state.stability import Snapshot, Stability
from relay.tasks import cancel_and_wait, spawn

log = get_logger("relay.fanout.sse")

# Why a new stream cannot open: the fan-out is closing, or the shared limit is reached.
Refusal = Literal["closing", "full"]


class Grant(Protocol):
    """What let a stream in (``relay/http/auth.py``'s ``Credential``), as far as a stream
    cares: when it stops being valid (seconds since the epoch; None: not on its own)."""

    @property
    def expires(self) -> float | None: ...


class Capacity:
    """The one limit on open streams (``http.max_clients``), shared by the live stream and
    every feed: they draw on the same file descriptors. Policy when full: 429.

    ``takeover``: whether streams are taken over from aiohttp (``relay/fanout/takeover.py``).
    """

    __slots__ = ("admitting", "limit", "open", "takeover")

    def __init__(self, limit: int, *, takeover: bool = True) -> None:
        self.limit = limit
        self.open = 0
        self.admitting = 0
        self.takeover = takeover

    @property
    def full(self) -> bool:
        return self.open + self.admitting >= self.limit


class Client(asyncio.Protocol):
    """One open stream, after its handshake: the protocol of its socket from then on.

    ``keys``: what a feed's client asked for (its ``Subscription``; None: everything);
    ``grant``: what let it in (None: no authentication middleware ran); ``expiry``: the timer
    that ends it when the grant expires.
    """

    __slots__ = ("chunked", "expiry", "fanout", "grant", "keys", "on_end", "transport")

    def __init__(
        self,
        fanout: Fanout,
        transport: Transport,
        chunked: bool,
        on_end: Callable[[], None] | None,
        keys: Any = None,
        grant: Grant | None = None,
    ) -> None:
        self.fanout = fanout
        self.transport = transport
        self.chunked = chunked
        self.on_end = on_end
        self.keys = keys
        self.grant = grant
        self.expiry: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        """Nothing is expected from a client on an event stream: whatever comes is dropped."""

    def eof_received(self) -> bool:
        return False  # the client has hung up: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.fanout.forget(self)
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end()


class Fanout:
    """A set of open streams and the one place that writes to them: the live stream (Hub)
    and each feed (relay/fanout/feeds.py) are one each."""

    def __init__(
        self,
        settings: HttpConfig,
        metrics: Metrics,
        capacity: Capacity,
        *,
        name: str,
        heartbeat: float | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._capacity = capacity
        self._name = name
        self._heartbeat = heartbeat or settings.heartbeat
        self._clients: set[Client] = set()
        self._retry = Frame(b"retry: %d\n\n" % round(settings.retry * 1000))
        self._ping = Frame(PING)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._logged_count = 0

    def __len__(self) -> int:
        return len(self._clients)

    async def start(self) -> None:
        """Start the heartbeats; a second call does nothing (a closed fan-out never restarts)."""
        if self._closed:
            raise RuntimeError(f"a closed {self._name} cannot be started again")
        if self._task is None:
            self._task = spawn(self._heartbeats(), f"relay-{self._name}-beat")

    async def aclose(self, timeout: float | None = None) -> None:
        """Tell every client to come back (a final ``retry:``) and end every stream. Once;
        ``timeout`` bounds the wait for the heartbeat task (TimeoutError past it), and the
        streams end either way."""
        if self._closed:
            return
        self._closed = True
        try:
            await cancel_and_wait(self._task, timeout)
        finally:
            self.broadcast(self._retry)
            count = len(self._clients)
            for client in list(self._clients):
                _cancel_expiry(client)
                transport = client.transport
                if client.chunked and not transport.is_closing():
                    transport.write(END_OF_STREAM)
                transport.close()  # once the unsent bytes are out; then connection_lost
            log.info("sse_closed", stream=self._name, clients=count)

    def forget(self, client: Client) -> None:
        _cancel_expiry(client)
        if client in self._clients:
            self._clients.remove(client)
            self._capacity.open -= 1

    def broadcast(self, frame: Frame, clients: Iterable[Client] | None = None) -> None:
        """Write ``frame`` to every client (or to ``clients``, all of this fan-out's)."""
        limit = self._settings.client_buffer
        chunked, raw = frame.chunked, frame.raw
        behind: list[Client] = []
        # The hot loop: no allocation per client; a transport writes at once when it can.
        for client in self._clients if clients is None else clients:
            transport = client.transport
            if transport.is_closing():
                continue
            transport.write(chunked if client.chunked else raw)
            if transport.get_write_buffer_size() > limit:
                behind.append(client)
        for client in behind:
            # Policy when a client's buffer is full: drop it; it reconnects and resyncs.
            self._metrics.sse_dropped.inc()
            client.transport.abort()
        if behind:
            log.warning(
                "sse_clients_dropped",
                stream=self._name,
                count=len(behind),
                reason="unsent buffer full",
            )

    def recheck(self, judge: Callable[[Grant | None], Grant | str]) -> int:
        """Judge every open stream's grant again (new rules, on a reload): ``judge`` answers
        the grant to keep (its expiry perhaps new) or why the stream ends. How many ended."""
        ended = 0
        for client in list(self._clients):
            verdict = judge(client.grant)
            if isinstance(verdict, str):
                self.end(client, verdict)
                ended += 1
            else:
                client.grant = verdict
                self._schedule_expiry(client)
        return ended

    def end(self, client: Client, reason: str) -> None:
        """End one stream with a last ``event: unauthorized`` saying ``reason``."""
        _cancel_expiry(client)
        transport = client.transport
        if transport.is_closing():
            return
        last = unauthorized_frame(reason).for_client(client)
        transport.write(last + END_OF_STREAM if client.chunked else last)
        if transport.get_write_buffer_size() > self._settings.client_buffer:
            transport.abort()  # a client that does not read gets nothing more, now
        else:
            transport.close()  # once the unsent bytes are out; then connection_lost

    def _schedule_expiry(self, client: Client) -> None:
        _cancel_expiry(client)
        expires = client.grant.expires if client.grant is not None else None
        if expires is not None:
            # One timer per stream whose credential expires: nothing to check per event.
            delay = max(0.0, expires - time.time())
            loop = asyncio.get_running_loop()
            client.expiry = loop.call_later(delay, self.end, client, "token expired")

    def heartbeat_frame(self) -> Frame:
        """What keeps an idle stream open: an SSE comment, unless a feed says otherwise."""
        return self._ping

    def heartbeat(self) -> None:
        """Send the heartbeat (a feed's may differ per client)."""
        self.broadcast(self.heartbeat_frame())

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                self.heartbeat()
            except Exception:  # without pings proxies cut idle streams: never stop sending
                log.exception("sse_heartbeat_failed", stream=self._name)
            if len(self._clients) != self._logged_count:
                self._logged_count = len(self._clients)
                log.info("sse_clients", stream=self._name, count=self._logged_count)

    # -- a new stream, as relay/http/streams.py opens it ----------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def takes_over(self) -> bool:
        """Whether open streams are taken over from aiohttp (``relay/fanout/takeover.py``)."""
        return self._capacity.takeover

    def refusal(self) -> Refusal | None:
        """Why a new stream cannot open now, or None when it can. A refusal for the shared
        limit is counted (``relay_sse_refused_total``)."""
        if self._closed:
            return "closing"
        if self._capacity.full:
            self._metrics.sse_refused.inc()
            return "full"
        return None

    @contextmanager
    def admitting(self) -> Iterator[None]:
        """A place in the shared limit while a new stream's first bytes are written."""
        self._capacity.admitting += 1
        try:
            yield
        finally:
            self._capacity.admitting -= 1

    def greeting(self, last_event_id: str | None) -> Frame | None:
        """What a new client gets after ``retry:``, in the same write."""
        return None

    def opening(self, last_event_id: str | None, keys: Any) -> bytes:
        """A new client's first bytes: ``retry:`` and the greeting (a feed may say otherwise).
        ``last_event_id``: the request's ``Last-Event-ID``, if any."""
        sent = self.greeting(last_event_id)
        return self._retry.raw + sent.raw if sent else self._retry.raw

    def mark(self) -> object:
        """Where the stream stands when a greeting is written (see ``since``)."""
        return None

    def since(self, mark: object, keys: Any = None) -> Frame | None:
        """What changed after ``mark`` while the greeting was written (sent before joining)."""
        return None

    def joined(self, client: Client) -> None:
        """A client is in: a feed indexes it by its filter."""

    def join(
        self,
        transport: Transport,
        chunked: bool,
        on_end: Callable[[], None] | None,
        keys: Any,
        grant: Grant | None,
        mark: object,
    ) -> Client:
        """A stream whose first bytes are out joins the set: from now on every event reaches
        it. ``on_end`` is called once when it ends; ``mark`` is what :meth:`mark` said before
        the first write. Its socket is then held as ``relay/fanout/takeover.py`` says."""
        client = Client(self, transport, chunked, on_end, keys, grant)
        missed = self.since(mark, keys)
        if missed is not None:
            # A change landed while the first write waited (it never does unless the socket
            # was already full): send it, so the client ends up current.
            transport.write(missed.for_client(client))
        # The caller does not await between its check of the transport and this: no later
        # event is missed.
        self._clients.add(client)
        self._capacity.open += 1
        self.joined(client)
        self._schedule_expiry(client)
        return client


class Hub(Fanout):
    """The live stream: stability events (unnamed, with ids) and the relayed channels."""

    def __init__(
        self, stability: Stability, settings: HttpConfig, metrics: Metrics, capacity: Capacity
    ) -> None:
        super().__init__(settings, metrics, capacity, name="live")
        self._stability = stability
        self._current = stability_frame(stability.current)

    def publish_state(self, snapshot: Snapshot) -> None:
        self._current = stability_frame(snapshot)
        self.broadcast(self._current)

    def publish_event(self, event: str, data: str) -> None:
        self.broadcast(named_frame(event, data))

    def greeting(self, last_event_id: str | None) -> Frame | None:
        """The current state, unless ``Last-Event-ID`` says the client has it."""
        if last_event_id == str(self._stability.current.seq):
            return None
        return self._current

    def mark(self) -> object:
        return self._current

    def since(self, mark: object, keys: Any = None) -> Frame | None:
        return None if self._current is mark else self._current


def _cancel_expiry(client: Client) -> None:
    if client.expiry is not None:
        client.expiry.cancel()
        client.expiry = None
