"""Who may reach what: CORS, authentication, per-address stream limits, security headers.

Each is one aiohttp middleware, applied in the order ``build_app`` lists them.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from collections.abc import Awaitable, Callable, Collection

from aiohttp import web
from aiohttp.typedefs import Middleware

from relay.config import CorsConfig, HttpConfig
from relay.fanout.sse import Grant
from relay.http import api
from relay.http.auth import Authenticator, Denial, unauthorized
from relay.http.proxies import Address, TrustedProxies
from relay.metrics import Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PREFLIGHT_MAX_AGE = "600"
CORS_ORIGIN = web.RequestKey[str]("relay.cors_origin")
ALLOWED_HEADERS = "Authorization, Last-Event-ID, Cache-Control"
# Set by the authentication middleware: what let the request in. An open stream keeps it
# (``relay/http/streams.py`` passes it to the fan-out) and ends when it stops being valid.
GRANT = web.RequestKey[Grant]("relay.grant")


class StreamSlot:
    """One stream's or long poll's place in its address's count (:class:`AddressLimit`),
    released once. The middleware releases it when the handler returns, unless the stream
    took it (:meth:`take`: ``relay/http/streams.py``, when the stream stays open past its
    handler); then the stream's end releases it."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def take(self) -> Callable[[], None] | None:
        """The release, now the taker's to call (None: already taken or released)."""
        release, self._release = self._release, None
        return release

    def release(self) -> None:
        """Release the slot, unless it was taken."""
        release = self.take()
        if release is not None:
            release()


# Set by the per-address limit on the requests it counts.
STREAM_SLOT = web.RequestKey[StreamSlot]("relay.stream_slot")


def security_headers() -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as error:
            error.headers.setdefault("X-Content-Type-Options", "nosniff")
            raise
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return middleware


def cors(settings: CorsConfig, api_paths: Collection[str]) -> Middleware:
    """Only listed origins, with credentials; preflight answered for the API routes."""
    allowed = frozenset(settings.allow_origins)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        listed = origin is not None and origin in allowed
        if request.method == "OPTIONS" and request.path in api_paths:
            if not listed:
                return web.Response(status=403, text="origin not allowed\n")
            assert origin is not None
            return web.Response(
                status=204,
                headers={
                    **_cors_headers(origin),
                    "Access-Control-Allow-Methods": "GET, HEAD",
                    "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                    "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
                },
            )
        if origin is not None and listed and request.path in api_paths:
            # Headers are added when the response is prepared (see `add_cors_headers`):
            # the live stream prepares its own response before the handler returns.
            request[CORS_ORIGIN] = origin
        return await handler(request)

    return middleware


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: CORS headers for a request the middleware accepted."""
    origin = request.get(CORS_ORIGIN)
    if origin is not None:
        response.headers.update(_cors_headers(origin))


def _cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


def authenticate(
    authenticator: Authenticator, protected: Collection[str], badges: Collection[str] = ()
) -> Middleware:
    """401/403/400 on the ``protected`` paths (and ``/metrics``); a request that passes carries
    its credential (:data:`GRANT`): a stream ends when that stops being valid. The ``badges``
    are protected the same way unless ``auth.public_badge`` is on."""

    guarded = frozenset(protected) | frozenset(badges)
    public = frozenset(badges)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS":
            path = request.path
            if path in guarded and not (path in public and authenticator.public_badge):
                verdict = authenticator.check(request)
                if isinstance(verdict, Denial):
                    return unauthorized(verdict)
                request[GRANT] = verdict
            elif path == "/metrics":
                denial = authenticator.check_metrics(request)
                if denial is not None:
                    return unauthorized(denial)
        return await handler(request)

    return middleware


class AddressLimit:
    """At most ``limit`` concurrent streams and long polls per client address (off when
    ``limit`` is None).

    Behind a proxy listed in ``trusted_proxies`` the client is the right-most address of
    ``X-Forwarded-For`` that is not itself a trusted proxy; otherwise the socket's peer. Every
    ``X-Forwarded-For`` line counts, in order, as one comma-joined list (RFC 9110 5.3): a
    proxy that adds a line of its own instead of appending to the client's is read right.
    Policy when full: 429 (JSON) with ``Retry-After``. Every connection of a peer that is not
    a trusted proxy is also counted against the same limit, at the socket level, before HTTP
    (``relay/http/gate.py``): there, idle and half-sent sockets count too.
    """

    def __init__(self, settings: HttpConfig, metrics: Metrics) -> None:
        self._limit = settings.max_clients_per_address
        self._trusted = TrustedProxies(settings.trusted_proxies)
        self._metrics = metrics
        self._open: Counter[str] = Counter()

    def client_address(self, request: web.Request) -> str:
        peer = _parse(request.remote)
        if peer is None or peer not in self._trusted:
            return str(peer or request.remote or "unknown")
        lines = request.headers.getall("X-Forwarded-For", ())
        hops = [h.strip() for line in lines for h in line.split(",")]
        for hop in reversed([h for h in hops if h]):
            address = _parse(hop)
            if address is None:
                return hop  # a garbled hop: count it as its own client, never trust past it
            if address not in self._trusted:
                return str(address)
        return str(peer)

    def middleware(self, streams: Collection[str], waits: Collection[str] = ()) -> Middleware:
        """Counts the streams of ``streams`` (the live stream and every feed) and the long
        polls of ``waits`` per address. A long poll also learns its client's address
        (:data:`relay.http.api.CLIENT_ADDRESS`: ``wait.max_waiters_per_address``)."""
        stream_paths = frozenset(streams)
        wait_paths = frozenset(waits)

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            path = request.path
            stream = path in stream_paths and request.method == "GET"
            if path in wait_paths:
                request[api.CLIENT_ADDRESS] = self.client_address(request)
            elif not stream:
                return await handler(request)
            if self._limit is None:
                return await handler(request)
            address = request[api.CLIENT_ADDRESS] if not stream else self.client_address(request)
            if self._open[address] >= self._limit:
                if stream:
                    self._metrics.sse_refused.inc()
                return api.error(
                    429, "too many streams and long polls from one address", {"Retry-After": "10"}
                )
            self._open[address] += 1
            # A stream kept open past its handler takes its slot; a long poll's is released
            # when its handler returns.
            slot = StreamSlot(functools.partial(self._release, address))
            request[STREAM_SLOT] = slot
            try:
                return await handler(request)
            finally:
                slot.release()

        return middleware

    def _release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]


def _parse(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
