"""Connections at the socket level: a per-address limit on every connection, and a reserve of
file descriptors that keeps the database, /healthz, /readyz and /metrics working at the limit.

The relay accepts its own connections (:class:`GuardedSite`) instead of leaving that to
asyncio's server, whose accept loop, at the open-file limit, reports every failed ``accept()``
(thousands of lines a second, issue 14) and has no say on who gets a socket. The parts:

- ``relay/http/listening.py``: the listening sockets and the accept loop, which pauses when
  ``accept()`` fails for want of descriptors;
- ``relay/http/gate.py``: what becomes of each accepted socket (the per-address limit, the
  reserve's probe and waiting slots) and the count of connections;
- ``relay/http/reserve.py``: what a socket at the limit may ask for;
- ``relay/http/descriptors.py``: how many descriptors are open, and how many may be;
- ``relay/http/refused.py``: what a refused socket is told, and the log of refusals;
- ``relay/http/proxies.py``: the trusted proxies, exempt from the per-address limit;
- here: the site that puts them under aiohttp, the hand-over of a socket to an event stream,
  and the middleware that holds a reserve connection to one request for a reserved path.

The rest of the reserve is for what the relay opens itself: the listener's reconnect, the
election, the read pool, webhook deliveries, static files.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

from aiohttp import web
from aiohttp.typedefs import Middleware

from relay.config import HttpConfig
from relay.http.gate import Connection, Gate
from relay.http.listening import Listening
from relay.http.reserve import RESERVED_PATHS
from relay.logs import get_logger
from relay.metrics import Metrics

log = get_logger("relay.http.sockets")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guard_available() -> bool:
    """Whether aiohttp still keeps a site's server where its runner and ``stop()`` look for it
    (``BaseSite._server``, a slot): all that :class:`GuardedSite` relies on of its internals.
    ``tests/http/test_sockets.py`` fails when it changes."""
    return "_server" in getattr(web.BaseSite, "__slots__", ())


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site, but the relay accepts the connections (see the module docstring).

    Where aiohttp no longer keeps the server in ``BaseSite._server`` (:func:`guard_available`),
    it falls back to a plain ``TCPSite`` (asyncio accepts; its reports are folded by
    ``relay/http/loopguard.py``) and logs ``socket_guard_unavailable``.
    """

    def __init__(
        self, runner: web.BaseRunner, settings: HttpConfig, metrics: Metrics, *, backlog: int
    ) -> None:
        super().__init__(runner, settings.listen.host, settings.listen.port, backlog=backlog)
        self._guarded_runner = runner
        self._guarded_backlog = backlog
        self._settings = settings
        self._metrics = metrics
        self.listening: Listening | None = None

    @property
    def port(self) -> int:
        if self.listening is not None and self.listening.sockets:
            return int(self.listening.sockets[0].getsockname()[1])
        return super().port

    async def start(self) -> None:
        if not guard_available():
            log.warning(
                "socket_guard_unavailable",
                note="this aiohttp keeps its server elsewhere: no per-address connection "
                "limit and no descriptor reserve",
            )
            await super().start()
            return
        loop = asyncio.get_running_loop()
        server = self._guarded_runner.server
        assert server is not None
        listening = Listening(loop, Gate(self._settings, self._metrics, server, loop))
        listen = self._settings.listen
        await listening.bind(listen.host, listen.port, self._guarded_backlog)
        await web.BaseSite.start(self)  # registers the site with its runner
        self._server = listening  # where runner.addresses and BaseSite.stop() look
        self.listening = listening
        gate = listening._gate
        gate.start()
        listening.start()
        log.info(
            "http_descriptors",
            fd_limit=gate.fds.limit,
            fd_reserve=gate.fds.reserve,
            reserve_connections=gate.reserve_slots,
            max_clients_per_address=self._settings.max_clients_per_address,
        )


def hand_over(transport: asyncio.BaseTransport, protocol: asyncio.Protocol) -> None:
    """Make ``protocol`` the socket's protocol from now on (an event stream taking over from
    aiohttp), keeping the :class:`Connection` in between so the connection stays counted."""
    current = transport.get_protocol()
    if isinstance(current, Connection):
        current.inner = protocol
    else:
        transport.set_protocol(protocol)


def reserved_routes(paths: Collection[str] = RESERVED_PATHS) -> Middleware:
    """On a reserve connection: only ``paths``, one request, then the connection closes."""
    allowed = frozenset(paths)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        connection = transport.get_protocol() if transport is not None else None
        if not isinstance(connection, Connection) or not connection.reserve:
            return await handler(request)
        connection.requested = True
        if request.path not in allowed:
            connection.gate.refused("fd_limit")
            refusal = web.json_response(
                {"error": "too many open connections"}, status=503, headers={"Retry-After": "5"}
            )
            refusal.force_close()
            return refusal
        try:
            response = await handler(request)
        except web.HTTPException as error:
            error.force_close()
            raise
        response.force_close()
        return response

    return middleware
