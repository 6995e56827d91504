"""A reverse proxy that buffers: it reads each upstream answer to its end before it sends the
client anything (status and headers included), as a proxy with response buffering on does. A
live stream never ends, so its client waits for ever; a JSON answer arrives whole, late by
nothing. ``buffering = False`` passes the bytes on as they come (the proxy fixed); it applies
to the requests that start after it is set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from tests.support import serve_on_loopback

# Per connection, or set by aiohttp for the body it writes: never passed on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)


@dataclass
class BufferingProxy:
    upstream: str
    buffering: bool = True
    url: str = ""
    requests: list[str] = field(default_factory=list)  # the paths asked for, in order
    _session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.requests.append(request.path)
        buffering = self.buffering
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Forwarded-For"] = request.remote or "unknown"
        async with self._session.request(
            request.method,
            self.upstream + str(request.rel_url),
            headers=headers,
            data=await request.read() if request.can_read_body else None,
            allow_redirects=False,
            auto_decompress=False,
        ) as upstream:
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            if buffering:
                body = await upstream.read()  # to the end: a stream's never comes
                return web.Response(status=upstream.status, headers=kept, body=body)
            response = web.StreamResponse(status=upstream.status, headers=kept)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


@asynccontextmanager
async def buffering_proxy(upstream: str) -> AsyncIterator[BufferingProxy]:
    """The proxy on a loopback port. A client that hangs up cancels its request's handler, so
    the upstream request ends with it, as nginx ends it (``proxy_ignore_client_abort off``)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        proxy = BufferingProxy(upstream, _session=session)
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", proxy.handle)
        async with serve_on_loopback(app, handler_cancellation=True, shutdown_timeout=0.5) as port:
            proxy.url = f"http://127.0.0.1:{port}"
            yield proxy
