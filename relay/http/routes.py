"""HTTP routes: the table of paths. The live stream and the feeds (``relay/http/streams.py``),
the JSON routes (``relay/http/api.py``: snapshot, details, indicators, long poll, history,
health, readiness), the badges (``relay/http/badge.py``), metrics, and the page with its static
files."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from relay.config import CorsConfig
from relay.fanout.feeds import Feeds
from relay.fanout.sse import Grant, Hub
from relay.http import api, streams
from relay.http.access import AddressLimit, add_cors_headers, authenticate, cors, security_headers
from relay.http.auth import OPEN, Authenticator, Credential, Denial
from relay.http.badge import BADGE, BADGE_SVG, BADGES, Badges
from relay.http.sockets import reserved_routes
from relay.logs import get_logger
from relay.source.listener import Listener
from relay.state.details import Details
from relay.state.history import History
from relay.state.stability import Stability
from relay.state.waits import Waits

LIVE = "/api/system-status/live"
SNAPSHOT = "/api/system-status"

DETAILS = "/api/system-status/details"
INDICATORS = "/api/system-status/indicators"
WAIT = "/api/system-status/wait"
HISTORY = "/api/system-status/history"
STATIC = Path(__file__).parent / "static"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = get_logger("relay.http.routes")

# The page loads only its own script and style and may not be framed elsewhere. Every file
# served (``/`` and everything under ``/static/``, the page itself included) carries these.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


# The badges are among them (CORS, auth); `auth.public_badge` opens them alone.
API = (LIVE, SNAPSHOT, DETAILS, INDICATORS, WAIT, HISTORY, *BADGES)


@dataclass(frozen=True)
class Served:
    """What the routes serve, handed over by the wiring (``relay/app.py``)."""

    cors: CorsConfig
    authenticator: Authenticator
    address_limit: AddressLimit
    stability: Stability
    listener: Listener
    hub: Hub
    feeds: Feeds
    details: Details
    waits: Waits
    history: History
    registry: CollectorRegistry


def build_app(relay: Served) -> web.Application:
    feeds = relay.feeds.paths
    app = web.Application(
        client_max_size=64 * 1024,
        middlewares=[
            security_headers(),
            reserved_routes(),  # near the open-file limit: health and metrics only
            cors(relay.cors, (*API, *feeds)),
            authenticate(relay.authenticator, (*API, *feeds), badges=BADGES),
            relay.address_limit.middleware((LIVE, *feeds), waits=(WAIT,)),
        ],
    )
    relay.authenticator.follow(_recheck_streams(relay))
    app.router.add_get(LIVE, streams.live(relay.hub))
    for feed in relay.feeds.feeds:
        app.router.add_get(feed.config.path, streams.feed(feed))
    app.router.add_get(SNAPSHOT, api.snapshot(relay.stability, relay.listener, relay.waits))
    badges = Badges(relay.stability)
    app.router.add_get(BADGE, badges.json)
    app.router.add_get(BADGE_SVG, badges.svg)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz(relay.stability, relay.listener))
    app.router.add_get(DETAILS, api.details(relay.details))
    app.router.add_get(INDICATORS, api.indicators(relay.details))
    app.router.add_get(WAIT, api.wait(relay.waits))
    app.router.add_get(HISTORY, api.history(relay.history))
    app.router.add_get("/metrics", make_aiohttp_handler(relay.registry))
    app.router.add_get("/", _page)
    app.router.add_static("/static/", STATIC, append_version=False)
    app.on_response_prepare.append(_static_headers)
    app.on_response_prepare.append(add_cors_headers)
    return app


async def _page(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


async def _static_headers(request: web.Request, response: web.StreamResponse) -> None:
    # By what is served rather than by path: however a file is reached, it has its headers.
    if isinstance(response, web.FileResponse) or request.path.startswith("/static/"):
        response.headers.update(PAGE_HEADERS)
    if request.path.startswith("/static/"):
        # The web component may be embedded by any site: allow cross-origin script loads.
        response.headers["Access-Control-Allow-Origin"] = "*"


def _recheck_streams(relay: Served) -> Callable[[], None]:
    """After a reload: every open stream whose credential the new rules refuse ends (with a
    last ``event: unauthorized``); the others keep going, their expiry as the rules say now.

    A credential several streams share is judged once; a JWT costs one signature check."""
    authenticator = relay.authenticator

    def recheck() -> None:
        verdicts: dict[Credential, Grant | str] = {}

        def judge(grant: Grant | None) -> Grant | str:
            credential = grant if isinstance(grant, Credential) else OPEN
            if credential not in verdicts:
                verdict = authenticator.recheck(credential)
                verdicts[credential] = verdict.reason if isinstance(verdict, Denial) else verdict
            return verdicts[credential]

        ended = sum(fanout.recheck(judge) for fanout in (relay.hub, *relay.feeds.feeds))
        if ended:
            log.info("streams_ended_on_reload", count=ended, reason="credential no longer valid")

    return recheck
