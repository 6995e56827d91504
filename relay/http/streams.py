"""The stream routes: the live stream and each feed. A feed's query is read here; the fan-out
(``relay/fanout/sse.py``: ``Fanout.open_stream``) admits the client, writes the headers and
the greeting, and holds the stream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.fanout import shape
from relay.fanout.feeds import Feed
from relay.fanout.sse import Hub

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def live(hub: Hub) -> Handler:
    """``GET /api/system-status/live``: the stream, from the current state on."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await hub.open_stream(request)

    return handle


def feed(stream: Feed) -> Handler:
    """A feed's path: its filter read from the query, then the stream."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            sub = stream.subscription(request.query)
        except shape.BadFilter as failure:
            return bad_filter(stream, failure)
        return await stream.open_stream(request, sub)

    return handle


def bad_filter(stream: Feed, failure: shape.BadFilter) -> web.Response:
    """400 for a filter that cannot be read. Not ``api.error``: a feed answers as the route it
    replaces did (its configured ``invalid_body``, else ``{"error": ...}``; its JSON as
    JavaScript writes it, no charset parameter, no ``Cache-Control``)."""
    rule = stream.config.filter
    body = (rule.invalid_body if rule is not None else None) or {"error": str(failure)}
    return web.Response(
        status=400, body=shape.encode(body).encode(), content_type="application/json"
    )
