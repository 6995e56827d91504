"""How an open event stream is held: taken over from aiohttp (the fast path), or kept in its
handler (the public path). ``relay/http/streams.py`` opens the stream and calls :func:`hold`
once the fan-out (``relay/fanout/sse.py``) has the client; this module only holds the socket.

The fast path makes a :class:`~relay.fanout.sse.Client` the socket's protocol and tells
aiohttp's protocol the connection is gone, with its ``transport`` cleared first so that it
neither writes to nor closes the socket. That frees the request, the response, its writer,
the parser, the keep-alive timer and both tasks: an open stream then costs about 2 KB instead
of 12 KB. It relies on three behaviours of aiohttp that no documentation promises, pinned by
``tests/http/test_aiohttp_canary.py``:

1. ``RequestHandler.transport`` is a plain attribute that its writers read at write time;
2. ``connection_lost(None)`` with it cleared ends the handler quietly (``handler_cancellation``)
   and touches the socket no more;
3. ``StreamResponse._send_headers_immediately`` holds the headers back for the first write.

The relay takes the fast path only on the aiohttp versions the canary has passed on
(:data:`TESTED_AIOHTTP`). Elsewhere, or with ``RELAY_SSE_TAKEOVER=off``, the public path keeps
the handler running until the stream ends and writes to ``request.transport`` (documented),
at aiohttp's cost per stream. Which path runs is logged (``sse_path``) and exported
(``relay_sse_takeover``).

``RELAY_SSE_TAKEOVER`` is not a key of the config file: :func:`fast_path_refusal` reads it from
the process environment itself (unless given another mapping), once, when the relay is built.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import aiohttp
from aiohttp import web

from relay.http.sockets import hand_over

# The minor series of aiohttp the canary passed on.
TESTED_AIOHTTP = ((3, 14),)


def fast_path_refusal(
    version: str = aiohttp.__version__, environ: Mapping[str, str] = os.environ
) -> str | None:
    """Why the fast path is not taken here, or ``None`` when it is."""
    if environ.get("RELAY_SSE_TAKEOVER", "").lower() in ("off", "0", "no", "false"):
        return "RELAY_SSE_TAKEOVER=off"
    try:
        series = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return f"aiohttp {version}: version not understood"
    if series not in TESTED_AIOHTTP:
        tested = ", ".join(f"{major}.{minor}" for major, minor in TESTED_AIOHTTP)
        return f"aiohttp {version} is not one the canary has passed on ({tested})"
    if not hasattr(web.StreamResponse, "_send_headers_immediately"):
        return "aiohttp's StreamResponse no longer has _send_headers_immediately"
    return None


async def hold(
    request: web.Request, transport: asyncio.Transport, client: asyncio.Protocol, *, fast: bool
) -> None:
    """Hold an open stream: the fast path when ``fast`` (returns at once), else the public path
    (returns when the stream ends)."""
    if fast:
        detach(request, transport, client)
    else:
        await hold_open(client)


def detach(request: web.Request, transport: asyncio.Transport, client: asyncio.Protocol) -> None:
    """The fast path: from now on ``client`` (an SSE client) is the socket's protocol."""
    protocol = request.protocol
    hand_over(transport, client)  # relay/http/sockets.py: the connection stays counted
    protocol.transport = None
    protocol.connection_lost(None)


async def hold_open(client: asyncio.Protocol) -> None:
    """The public path: the handler stays until the stream ends. aiohttp cancels it when the
    connection is lost (``handler_cancellation=True``), which is also how the relay's own
    close and a slow client's abort end it."""
    try:
        await asyncio.get_running_loop().create_future()  # never set: only cancelled
    finally:
        client.connection_lost(None)
