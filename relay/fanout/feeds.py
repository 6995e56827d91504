"""Feeds: NOTIFY channels relayed on SSE routes of their own (``feeds:`` in the config).

Data path: NOTIFY → listener → ``ChannelRelay`` (payload checked: a JSON object under
8000 bytes) → :meth:`Feeds.publish` → each feed on that channel: coalesced (if set), framed
once, written to its clients (those whose filter matches). One LISTEN connection serves
every feed; auth, CORS, the per-address limit, ``http.max_clients``, the per-client buffer and
the slow-client policy are the live stream's (``relay/fanout/sse.py``).

A client never silently misses a change: after every reconnect of the relay to the database
(notifications sent meanwhile are gone) each feed tells its clients, with its connect event
again when it has one (statbus's client then re-reads), else with ``event: resync``.

Bounds, per feed: events wait in an outbox at most ``BATCH_INTERVAL`` (50 ms) under a flood
(at most what arrives meanwhile: PostgreSQL's notification rate is the bound), then go out
together, one write per client; each client may fall ``http.client_buffer`` behind (then it
is dropped and reconnects); at most ``coalesce.max_pending`` payloads wait for a coalescing
window (each under 8000 bytes; when full they are sent at once); a client filter holds at
most ``filter.max_values`` values. So N clients and a flood of payloads cost at most
N x (client_buffer + ~2 KiB) + max_pending x 8 KB.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiohttp import web

from relay.config import FeedConfig, HttpConfig
from relay.fanout.sse import Capacity, Client, Fanout, Frame, named_frame
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.state.stability import Stability, iso_timestamp

log = get_logger("relay.fanout.feeds")

# A feed writes to its clients at most this often under a flood (the first event after a quiet
# spell goes at once); events in between are written together, one write per client.
BATCH_INTERVAL = 0.05
RESYNC_EVENT = "resync"
RESYNC_DATA = '{"reason":"reconnected"}'

Pending = tuple[str, str, Mapping[str, Any]]  # channel, data, parsed payload


class Feed(Fanout):
    """One feed: its clients, its framing, its coalescing window and its client filter."""

    def __init__(
        self,
        feed: FeedConfig,
        stability: Stability,
        settings: HttpConfig,
        metrics: Metrics,
        capacity: Capacity,
    ) -> None:
        super().__init__(
            settings, metrics, capacity, name=f"feed {feed.path}", heartbeat=feed.heartbeat_interval
        )
        self.config = feed
        self._stability = stability
        self._label = feed.path
        self._unfiltered: set[Client] = set()
        self._by_key: dict[str, set[Client]] = {}
        self._pending: OrderedDict[tuple[str, str], Pending] = OrderedDict()
        self._flush: asyncio.TimerHandle | None = None
        # Events for every client, written together at the end of this turn of the loop.
        self._outbox: list[bytes] = []
        self._drain: asyncio.TimerHandle | None = None
        self._drained_at = 0.0
        if feed.on_connect == "event":
            self._connect: Frame | None = named_frame(feed.connect_event, feed.connect_data)
            self._resync = self._connect
        else:
            self._connect = None
            self._resync = named_frame(RESYNC_EVENT, RESYNC_DATA)
        metrics.feed_clients.labels(feed.path).set_function(lambda: float(len(self)))

    # -- the stream ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        keys = self._requested_keys(request)
        return await self.open_stream(request, keys)

    def greeting(self, request: web.Request) -> Frame | None:
        if self.config.on_connect == "snapshot":
            data = json.dumps(self._stability.current.as_json(), separators=(",", ":"))
            return named_frame("stability", data)
        return self._connect

    def joined(self, client: Client) -> None:
        if client.keys is None:
            self._unfiltered.add(client)
            return
        for key in client.keys:
            self._by_key.setdefault(key, set()).add(client)

    def forget(self, client: Client) -> None:
        super().forget(client)
        if client.keys is None:
            self._unfiltered.discard(client)
            return
        for key in client.keys:
            clients = self._by_key.get(key)
            if clients is not None:
                clients.discard(client)
                if not clients:
                    del self._by_key[key]

    def heartbeat_frame(self) -> Frame:
        if self.config.heartbeat == "comment":
            return super().heartbeat_frame()
        body = {"type": "heartbeat", "timestamp": iso_timestamp(time.time())}
        return named_frame(self.config.heartbeat_event, json.dumps(body, separators=(",", ":")))

    def _requested_keys(self, request: web.Request) -> frozenset[str] | None:
        rule = self.config.filter
        if rule is None or rule.param not in request.query:
            return None
        raw = request.query.getall(rule.param)
        values = [v.strip() for text in raw for v in text.split(",")]
        if not values or any(not v or len(v) > 200 for v in values):
            raise _bad_request(f"{rule.param}: expected a comma-separated list of values")
        if len(values) > rule.max_values:
            raise _bad_request(f"{rule.param}: at most {rule.max_values} values")
        return frozenset(values)

    # -- payloads -----------------------------------------------------------------------------

    def publish(self, channel: str, data: str, payload: Mapping[str, Any]) -> None:
        """A checked payload of one of this feed's channels."""
        rule = self.config.coalesce
        if rule is None:
            self._send(channel, data, payload)
            return
        value = payload.get(rule.key) if rule.key is not None else None
        key = (channel, "" if value is None else str(value))
        if key in self._pending:
            self._metrics.feed_coalesced.labels(self._label).inc()
            self._pending.move_to_end(key)  # never reorder: it now goes out after the others
        elif len(self._pending) >= rule.max_pending:
            self.flush()  # policy when full: send what waits at once
        self._pending[key] = (channel, data, payload)
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(rule.window, self.flush)

    def flush(self) -> None:
        """Send every payload waiting for its coalescing window, in order."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        pending, self._pending = self._pending, OrderedDict()
        for channel, data, payload in pending.values():
            self._send(channel, data, payload)

    def _send(self, channel: str, data: str, payload: Mapping[str, Any]) -> None:
        if self.config.events == "unnamed":
            raw = f"data: {data}\n\n".encode()
        else:
            raw = f"event: {channel}\ndata: {data}\n\n".encode()
        self._metrics.feed_events.labels(self._label).inc()
        if self.config.filter is not None:
            self._drain_outbox()
            self.broadcast(Frame(raw), self._recipients(payload))
            return
        # Hand-rolled batching, for floods: at most one write per client per BATCH_INTERVAL
        # (one frame, one chunk, in order) instead of one write per event; a lone event goes
        # out at once.
        self._outbox.append(raw)
        if self._drain is None:
            loop = asyncio.get_running_loop()
            wait = max(0.0, self._drained_at + BATCH_INTERVAL - loop.time())
            self._drain = loop.call_later(wait, self._drain_outbox)

    def _drain_outbox(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        if self._outbox:
            events, self._outbox = self._outbox, []
            self._drained_at = asyncio.get_running_loop().time()
            self.broadcast(Frame(b"".join(events)))

    def _recipients(self, payload: Mapping[str, Any]) -> Iterable[Client]:
        rule = self.config.filter
        if rule is None or not self._by_key:
            return self._unfiltered if rule is not None else self._clients
        value = payload.get(rule.field)
        matching = self._by_key.get(str(value)) if value is not None else None
        if not matching:
            return self._unfiltered
        return [*self._unfiltered, *matching]

    def resync(self) -> None:
        """The relay reconnected to the database: what was sent meanwhile is gone."""
        self.flush()
        self._drain_outbox()
        self.broadcast(self._resync)

    async def aclose(self) -> None:
        self.flush()
        self._drain_outbox()
        await super().aclose()


class Feeds:
    """Every feed, routed by channel. ``start()`` then ``aclose()``."""

    def __init__(
        self,
        feeds: Sequence[FeedConfig],
        stability: Stability,
        settings: HttpConfig,
        metrics: Metrics,
        capacity: Capacity,
    ) -> None:
        self.feeds = [Feed(f, stability, settings, metrics, capacity) for f in feeds]
        self._by_channel: dict[str, list[Feed]] = {}
        for feed in self.feeds:
            for channel in feed.config.channels:
                self._by_channel.setdefault(channel, []).append(feed)

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self._by_channel)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(feed.config.path for feed in self.feeds)

    def __len__(self) -> int:
        return sum(len(feed) for feed in self.feeds)

    def publish(self, channel: str, data: str, payload: Mapping[str, Any]) -> None:
        for feed in self._by_channel.get(channel, ()):
            feed.publish(channel, data, payload)

    def resync(self) -> None:
        for feed in self.feeds:
            feed.resync()

    async def start(self) -> None:
        for feed in self.feeds:
            await feed.start()

    async def aclose(self) -> None:
        for feed in self.feeds:
            await feed.aclose()


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")
