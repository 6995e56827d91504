"""The stream routes: the live stream and each feed. A stream's life in HTTP is here: a feed's
query is read, the request admitted (the shared limit, ``http.max_clients``), the headers,
``retry:`` and the greeting sent in one write, and the socket handed over to the fan-out
(``relay/fanout/sse.py``: ``Fanout.join``), which holds it as ``relay/fanout/takeover.py``
says. The per-address slot the middleware counted (``relay/http/access.py``:
``StreamSlot``) goes with the stream and is released when it ends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from relay.config import ClientFilter
from relay.fanout import shape, takeover
from relay.fanout.feeds import Feed
from relay.fanout.sse import Fanout, Hub
from relay.fanout.subscription import Subscription
from relay.http.access import GRANT, STREAM_SLOT

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


def live(hub: Hub) -> Handler:
    """``GET /api/system-status/live``: the stream, from the current state on."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await open_stream(hub, request)

    return handle


def feed(stream: Feed) -> Handler:
    """A feed's path: its filter read from the query, then the stream."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            sub = subscription(stream.config.filter, request.query)
        except shape.BadFilter as failure:
            return bad_filter(stream, failure)
        return await open_stream(stream, request, sub)

    return handle


def subscription(rule: ClientFilter | None, query: MultiMapping[str]) -> Subscription:
    """A feed client's subscription from its query; :class:`shape.BadFilter` for filter
    values that cannot be read."""
    if rule is None:
        return Subscription([], None)
    raw = query.getall(rule.param, [])
    if not raw and rule.values == "text":
        values: list[Any] = []
        keys: frozenset[str] = frozenset()
    else:
        values, keys = shape.parse_values(raw, rule)
    scope = rule.scope
    if scope is None:
        return Subscription(values, keys or None)
    only = query.get(scope.param) == scope.ids_only
    name = scope.ids_only if only else scope.default
    if not keys:
        return Subscription(values, None, scope=name, silent=only)
    return Subscription(values, keys, scope=name, inserts=not only)


async def open_stream(fanout: Fanout, request: web.Request, keys: Any = None) -> web.StreamResponse:
    """Admit a client (the shared limit), send the headers, ``retry:`` and the greeting in one
    write, then hand the socket over to ``fanout`` and hold it."""
    refusal = fanout.refusal()
    if refusal == "closing":
        raise web.HTTPServiceUnavailable(headers={"Retry-After": "1"})
    if refusal == "full":
        raise web.HTTPTooManyRequests(headers={"Retry-After": "5"}, text="too many live clients\n")
    with fanout.admitting():
        response = _EventStream(headers=HEADERS)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        # The headers leave with the first bytes: one write for both.
        last_event_id = request.headers.get("Last-Event-ID")
        mark, first = fanout.mark(), fanout.opening(last_event_id, keys)
        try:
            await response.write(first)
        except ConnectionError:
            return response  # the client left during the handshake
    transport = request.transport
    if transport is None or transport.is_closing() or fanout.closed:
        return response
    chunked = response.headers.get("Transfer-Encoding") == "chunked"
    slot = request.get(STREAM_SLOT)
    on_end = slot.take() if slot is not None else None
    # No await from the check above to joining: no later event is missed.
    client = fanout.join(transport, chunked, on_end, keys, request.get(GRANT), mark)
    await takeover.hold(request, transport, client, fast=fanout.takes_over)
    return response


def bad_filter(stream: Feed, failure: shape.BadFilter) -> web.Response:
    """400 for a filter that cannot be read. Not ``api.error``: a feed answers as the route it
    replaces did (its configured ``invalid_body``, else ``{"error": ...}``; its JSON as
    JavaScript writes it, no charset parameter, no ``Cache-Control``)."""
    rule = stream.config.filter
    body = (rule.invalid_body if rule is not None else None) or {"error": str(failure)}
    return web.Response(
        status=400, body=shape.encode(body).encode(), content_type="application/json"
    )


class _EventStream(web.StreamResponse):
    """A stream whose headers go out with its first bytes rather than on their own.

    One ``send()`` per connection saved. The switch is a private class attribute of aiohttp's
    (its ``Response`` sets it the same way), pinned by ``tests/http/test_aiohttp_canary.py``; if
    it ever goes, headers are simply sent alone.
    """

    _send_headers_immediately = False
