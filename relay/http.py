"""HTTP routes: the live stream, the JSON snapshot, health, readiness and metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

if TYPE_CHECKING:
    from relay.app import Relay

LIVE = "/api/system-status/live"
SNAPSHOT = "/api/system-status"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(relay: Relay) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app.router.add_get(LIVE, relay.hub.handle)
    app.router.add_get(SNAPSHOT, _snapshot(relay))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz(relay))
    app.router.add_get("/metrics", make_aiohttp_handler(relay.metrics.registry))
    return app


def _snapshot(relay: Relay) -> Handler:
    async def snapshot(_request: web.Request) -> web.Response:
        current = relay.stability.current
        body = current.as_json()
        body["database_connected"] = relay.listener.connected.is_set()
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    return snapshot


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _readyz(relay: Relay) -> Handler:
    async def readyz(_request: web.Request) -> web.Response:
        known = relay.stability.current.stable is not None
        ready = known and relay.listener.connected.is_set()
        return web.json_response(
            {"ready": ready, "database_connected": relay.listener.connected.is_set()},
            status=200 if ready else 503,
        )

    return readyz
