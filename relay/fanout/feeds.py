"""Feeds: NOTIFY channels relayed on SSE routes of their own (``feeds:`` in the config).

Data path: NOTIFY → listener → ``ChannelRelay`` (payload checked: a JSON object under
8000 bytes) → :meth:`Feeds.publish` → each feed on that channel, per channel
(``FeedConfig.rules``): coalesced (a trailing debounce per key, ``relay/fanout/coalesce.py``),
enriched (a SQL function, in batches, ``relay/fanout/enrich.py``), reshaped
(``relay/fanout/shape.py``); then numbered (``id:``), kept for replay
(``relay/fanout/replay.py``), framed once and written to the clients its filter matches
(``relay/fanout/subscription.py``). Several channels merge into one stream in the order their
events are sent. One LISTEN connection serves every feed. The rest is the live stream's: auth,
CORS and the per-address limit (``relay/http/access.py``), ``http.max_clients``
(``relay/http/streams.py`` opens both), the per-client buffer and the slow-client policy
(``relay/fanout/sse.py``).

A client never silently misses an event. One that reconnects with ``Last-Event-ID`` gets what
it missed (as its filter allows) from the feed's ring, or ``event: resync`` when that is gone
(too old, or an id of another run: ids carry a per-run epoch); a client dropped as slow comes
back that way. After every reconnect of the relay to the database (notifications sent
meanwhile are gone) each feed tells its clients, with its connect event again when it has
one (statbus's client then re-reads), else with ``event: resync``; so it does when an enrich
call fails or its line overflows. Each of these is an event of the ring, with its id.

Bounds, per feed: events wait in an outbox at most ``BATCH_INTERVAL`` (50 ms) under a flood
(unfiltered feeds; then one write per client); each client may fall ``http.client_buffer``
behind (then it is dropped, and reconnects with Last-Event-ID); at most
``coalesce.max_pending`` keys wait for their debounce (each payload under 8000 bytes; when
full, the key that has waited longest is sent at once); at most ``enrich.max_pending``
payloads wait for the enrich call (when full they are dropped and clients resync); the ring
keeps ``replay.events`` events and ``replay.bytes`` bytes; a client filter holds at most
``filter.max_values`` values. So N clients and a flood cost at most
N x (client_buffer + ~2 KiB) + max_pending x 8 KB x 2 + replay.bytes.

Hot path: each event is encoded once and the same bytes go to every client it is for. A
heartbeat that names each client (statbus's ``connectionId``) is encoded once per distinct
value of the other per-client fields and tick, and spliced per client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay import __version__
from relay.config import PER_CLIENT_VARIABLES, FeedConfig, HttpConfig
from relay.fanout import shape, subscription
from relay.fanout.coalesce import Coalescer
from relay.fanout.enrich import Call, Enricher
from relay.fanout.frames import Frame, encode_event, named_frame
from relay.fanout.replay import Audience, Ring
from relay.fanout.sse import Capacity, Client, Fanout
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.state.stability import Stability, iso_timestamp

log = get_logger("relay.fanout.feeds")

# A feed writes to its clients at most this often under a flood (the first event after a quiet
# spell goes at once); events in between are written together, one write per client.
BATCH_INTERVAL = 0.05
RESYNC_EVENT = "resync"


def resync_data(reason: str) -> str:
    return json.dumps({"reason": reason}, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Shared:
    """What every feed of a relay is built with: the state, the HTTP settings, the metrics,
    the shared limit on open streams and the database call of the feeds that enrich."""

    stability: Stability
    settings: HttpConfig
    metrics: Metrics
    capacity: Capacity
    call: Call | None = None


class Feed(Fanout):
    """One feed: its clients, its channels' rules, its framing, its ring and its filter."""

    def __init__(self, feed: FeedConfig, shared: Shared) -> None:
        settings, metrics, call = shared.settings, shared.metrics, shared.call
        super().__init__(
            settings,
            metrics,
            shared.capacity,
            name=f"feed {feed.path}",
            heartbeat=feed.heartbeat_interval,
        )
        self.config = feed
        self._stability = shared.stability
        self._label = feed.path
        self._rules = {channel: feed.rules(channel) for channel in feed.channels}
        rule = feed.filter
        self._field = tuple(rule.field.split(".")) if rule else ()
        self._verb = tuple(rule.scope.verb_field.split(".")) if rule and rule.scope else ()
        self._index = subscription.Index()
        self._coalescer = Coalescer(feed.path, self._rules, self._emit, metrics)
        # Events for every client, written together at the end of this turn of the loop.
        self._outbox: list[bytes] = []
        self._outbox_last = 0
        self._outbox_timer: asyncio.TimerHandle | None = None
        self._outbox_written_at = 0.0
        self.ring = Ring(feed.replay.events, feed.replay.bytes)
        self._sent = 0  # the number of the last event written to the clients
        retry = settings.retry if feed.retry_interval is None else feed.retry_interval
        self._retry_bytes = b"retry: %d\n\n" % round(retry * 1000)
        self._comment = Frame(f": {feed.heartbeat_comment}\n\n".encode())
        self._per_client_beat = feed.heartbeat == "event" and shape.uses(
            feed.heartbeat_data, PER_CLIENT_VARIABLES
        )
        self._enricher: Enricher | None = None
        enrich = next((r.enrich for r in self._rules.values() if r.enrich is not None), None)
        if enrich is not None:
            if call is None:
                raise ValueError(f"feed {feed.path} enriches but no database call was given")
            self._enricher = Enricher(
                feed.path,
                call,
                timeout=enrich.timeout,
                max_pending=enrich.max_pending,
                deliver=self._deliver,
                resync=self.resync,
                metrics=metrics,
            )
        metrics.feed_clients.labels(feed.path).set_function(lambda: float(len(self)))

    # -- the stream ---------------------------------------------------------------------------

    def opening(self, last_event_id: str | None, keys: Any) -> bytes:
        """The greeting and ``retry:`` in the feed's order, then what a reconnecting client
        missed (or ``event: resync``)."""
        sub = subscription.of(keys)
        greeting = self._greeting(sub)
        retry = self.config.retry
        parts = [self._retry_bytes] if retry == "first" else []
        parts.append(greeting)
        if retry == "after_greeting":
            parts.append(self._retry_bytes)
        if last_event_id:
            parts.append(self._replay(last_event_id, sub))
        return b"".join(parts)

    def _greeting(self, sub: subscription.Subscription) -> bytes:
        on_connect = self.config.on_connect
        if on_connect == "snapshot":
            data = json.dumps(self._stability.current.as_json(), separators=(",", ":"))
            return named_frame("stability", data).raw
        if on_connect == "event":
            return named_frame(self.config.connect_event, self.config.connect_data).raw
        if on_connect == "message":
            body = shape.fill(self.config.connect_message, sub.variables(_now()))
            return encode_event(shape.encode(body))
        return b""

    def _replay(self, last_event_id: str, sub: subscription.Subscription) -> bytes:
        number = self.ring.position(last_event_id)
        if number is None:
            epoch = last_event_id.partition("-")[0]
            reason = "too_old" if epoch == self.ring.epoch else "other_run"
            self._metrics.feed_resyncs.labels(self._label, reason).inc()
            return named_frame(RESYNC_EVENT, resync_data(reason)).raw
        missed = list(self.ring.after(number, sub.wants, until=self._sent))
        if missed:
            self._metrics.feed_replayed.labels(self._label).inc(len(missed))
        return b"".join(missed)

    def mark(self) -> object:
        self._write_outbox()  # what waits in the outbox is sent now: a replay ends at `_sent`
        return self._sent

    def since(self, mark: object, keys: Any = None) -> Frame | None:
        """Events written while the greeting was (they missed the new client)."""
        assert isinstance(mark, int)
        if mark == self._sent:
            return None
        sub = subscription.of(keys)
        if self.ring.position(f"{self.ring.epoch}-{mark}") is None:
            self._metrics.feed_resyncs.labels(self._label, "too_old").inc()
            return named_frame(RESYNC_EVENT, resync_data("too_old"))
        missed = list(self.ring.after(mark, sub.wants, until=self._sent))
        return Frame(b"".join(missed)) if missed else None

    def joined(self, client: Client) -> None:
        self._index.add(client)

    def forget(self, client: Client) -> None:
        super().forget(client)
        self._index.remove(client)

    def heartbeat_frame(self) -> Frame:
        if self.config.heartbeat == "comment":
            return self._comment
        body = shape.fill(self.config.heartbeat_data, {"$now": _now(), "$version": __version__})
        return named_frame(self.config.heartbeat_event, shape.encode(body))

    def heartbeat(self) -> None:
        if not self._per_client_beat:
            self.broadcast(self.heartbeat_frame())
            return
        # Encoded once per distinct (ids, scope) and tick; each client's id spliced in.
        now = _now()
        # The event's framing, with each client's data to go where the NUL is.
        head, _, tail = encode_event("\0", self.config.heartbeat_event).partition(b"\0")
        encoded: dict[tuple[Any, ...], list[bytes]] = {}
        for client in list(self._clients):
            sub = subscription.of(client.keys)
            group = (len(sub.values), sub.scope, tuple(sub.values))
            pieces = encoded.get(group)
            if pieces is None:
                pieces = shape.pieces(self.config.heartbeat_data, sub.variables(now))
                encoded[group] = pieces
            raw = head + sub.connection_id.encode().join(pieces) + tail
            self.broadcast(Frame(raw), (client,))

    # -- payloads -----------------------------------------------------------------------------

    def publish(self, channel: str, data: str, payload: Mapping[str, Any]) -> None:
        """A checked payload of one of this feed's channels."""
        self._coalescer.submit(channel, data, payload)

    def flush(self) -> None:
        """Send every payload waiting for its debounce now, oldest first."""
        self._coalescer.flush()

    def _emit(self, channel: str, data: str) -> None:
        if self._enricher is None:
            self._deliver(channel, data, None)
            return
        enrich = self._rules[channel].enrich
        self._enricher.submit(channel, data, enrich.function_name if enrich else None)

    def _deliver(self, channel: str, data: str, value: Any) -> None:
        """An event, as the feed sends it: ``value`` is the enriched object (None: the payload)."""
        rules = self._rules[channel]
        needs_object = (
            value is not None
            or rules.reshape is not None
            or self.config.encode == "compact"
            or self.config.filter is not None
        )
        if value is None and needs_object:
            try:
                value = shape.parse(data)
            except ValueError:  # checked already; a number past a double's range, say
                value = json.loads(data)
        if rules.reshape is not None:
            variables = {"$now": _now(), "$version": __version__}
            value = shape.reshape(value, rules.reshape, variables)
        if value is not None and (
            rules.reshape is not None or rules.enrich is not None or self.config.encode == "compact"
        ):
            data = shape.encode(value)
        audience: Audience = None
        if self.config.filter is not None:
            key = shape.key_text(shape.lookup(value, self._field))
            insert = bool(self._verb) and shape.lookup(value, self._verb) == (
                self.config.filter.scope.all_of_verb if self.config.filter.scope else None
            )
            audience = (key, insert)
        name = None if self.config.events == "unnamed" else channel
        self._send(name, data, audience)
        self._metrics.feed_events.labels(self._label).inc()

    def _send(self, event: str | None, data: str, audience: Audience) -> None:
        """Number the event, keep it, and write it to the clients it is for."""
        number, event_id = self.ring.next_id()
        raw = encode_event(data, event, event_id)
        self.ring.keep(number, raw, audience)
        if audience is not None:
            self._write_outbox()
            self._sent = number
            self.broadcast(Frame(raw), self._index.recipients(audience))
            return
        # Hand-rolled batching, for floods: at most one write per client per BATCH_INTERVAL
        # (one frame, one chunk, in order) instead of one write per event; a lone event goes
        # out at once.
        self._outbox.append(raw)
        self._outbox_last = number
        if self._outbox_timer is None:
            loop = asyncio.get_running_loop()
            wait = max(0.0, self._outbox_written_at + BATCH_INTERVAL - loop.time())
            self._outbox_timer = loop.call_later(wait, self._write_outbox)

    def _write_outbox(self) -> None:
        if self._outbox_timer is not None:
            self._outbox_timer.cancel()
            self._outbox_timer = None
        if self._outbox:
            events, self._outbox = self._outbox, []
            self._outbox_written_at = asyncio.get_running_loop().time()
            self._sent = self._outbox_last
            self.broadcast(Frame(b"".join(events)))

    def resync(self, reason: str = "reconnected") -> None:
        """Clients may have missed something (the relay reconnected to the database, an enrich
        call failed): the connect event again, or ``event: resync``; an event of the ring."""
        if reason == "reconnected":
            self.flush()
        self._metrics.feed_resyncs.labels(self._label, reason).inc()
        self._write_outbox()
        if self.config.on_connect == "event":
            self._send(self.config.connect_event, self.config.connect_data, None)
        else:
            self._send(RESYNC_EVENT, resync_data(reason), None)
        self._write_outbox()

    async def start(self) -> None:
        await super().start()
        if self._enricher is not None:
            await self._enricher.start()

    async def aclose(self, timeout: float | None = None) -> None:
        """What is ready goes out, then the streams end, then the enricher: a call still in
        flight (whose cancel waits on the server) can never keep the streams or their
        heartbeats open past the shutdown's deadline. Once; within ``timeout`` when given
        (TimeoutError past it)."""
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        self.flush()
        self._write_outbox()
        try:
            await super().aclose(timeout)
        finally:
            if self._enricher is not None:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                await self._enricher.aclose(left)


class Feeds:
    """Every feed, routed by channel. ``start()`` then ``aclose()``, each idempotent."""

    def __init__(
        self,
        feeds: Sequence[FeedConfig],
        stability: Stability,
        settings: HttpConfig,
        metrics: Metrics,
        capacity: Capacity,
        call: Call | None = None,
    ) -> None:
        shared = Shared(stability, settings, metrics, capacity, call)
        self.feeds = [Feed(f, shared) for f in feeds]
        self._by_channel: dict[str, list[Feed]] = {}
        for feed in self.feeds:
            for channel in feed.config.channels:
                self._by_channel.setdefault(channel, []).append(feed)

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

    async def aclose(self, timeout: float | None = None) -> None:
        """Close every feed, within ``timeout`` when given: one that overruns its share does
        not keep the next from ending its streams (TimeoutError at the end)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        overran = False
        for feed in self.feeds:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                await feed.aclose(left)
            except TimeoutError:
                overran = True
        if overran:
            raise TimeoutError(f"the feeds did not close within {timeout} s")


def _now() -> str:
    return iso_timestamp(time.time())
