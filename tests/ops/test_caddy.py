"""deploy/Caddyfile with the real Caddy in front of a real relay: routing, no buffering,
heartbeats against proxy timeouts, Last-Event-ID."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.ops_support import PROCESSING, STABLE, running_caddy
from tests.support import (
    SseClient,
    base_url,
    execute,
    relay_config,
    running_relay,
    serve_on_loopback,
    sse_connect,
)

LIVE = "/api/system-status/live"


@pytest.fixture
async def web_app() -> AsyncIterator[int]:
    """A stand-in for the web app that owns everything else on its host."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"web app: {request.path}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    async with serve_on_loopback(app) as port:
        yield port


async def test_routes_the_relay_and_the_web_app(db_dsn: str, tmp_path: Path, web_app: int) -> None:
    async with (
        running_relay(relay_config(db_dsn)) as relay,
        running_caddy(tmp_path, [relay.port], app_port=web_app) as caddy,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(caddy.app_url + "/") as response:
            assert await response.text() == "web app: /"
        async with session.get(caddy.app_url + "/api/system-status") as response:
            assert (await response.json())["state"] == "stable"
        async with session.get(caddy.status_url + "/") as response:
            assert response.status == 200
            assert "Content-Security-Policy" in response.headers  # the relay's page
        async with session.get(caddy.status_url + "/static/system-status.js") as response:
            assert response.status == 200
        async with session.get(caddy.status_url + "/metrics") as response:
            assert response.status == 404  # scraped directly, never through the edge


async def _arrival(client: SseClient, state: str) -> float:
    await client.wait_for_state(state, timeout=10)
    return time.monotonic()


async def test_events_arrive_through_caddy_as_fast_as_direct(db_dsn: str, tmp_path: Path) -> None:
    async with (
        running_relay(relay_config(db_dsn)) as relay,
        running_caddy(tmp_path, [relay.port]) as caddy,
        sse_connect(base_url(relay) + LIVE) as direct,
        sse_connect(
            caddy.app_url + LIVE, headers={"Accept-Encoding": "gzip, deflate, br, zstd"}
        ) as proxied,
    ):
        assert "Content-Encoding" not in proxied.response.headers
        assert proxied.response.headers["Content-Type"] == "text/event-stream"
        await direct.wait_for_state("stable")
        await proxied.wait_for_state("stable")
        delays = []
        for round_ in range(5):
            sql, state = (PROCESSING, "processing") if round_ % 2 == 0 else (STABLE, "stable")
            arrivals = asyncio.gather(_arrival(direct, state), _arrival(proxied, state))
            await execute(db_dsn, sql)
            at_direct, via_caddy = await arrivals
            delays.append(via_caddy - at_direct)
    print(f"via Caddy minus direct, per event (ms): {[round(d * 1000, 1) for d in delays]}")
    assert max(delays) < 0.1, delays


@pytest.mark.parametrize(
    ("heartbeat", "survives"), [("250ms", True), ("30s", False)], ids=["pings", "no-pings"]
)
async def test_idle_stream_outlives_caddy_timeouts_thanks_to_heartbeats(
    db_dsn: str, tmp_path: Path, heartbeat: str, survives: bool
) -> None:
    """Caddy drops an upstream silent for read_timeout (1 s here); pings keep a stream alive.

    The control case (no pings within the test) shows the timeout really is in force.
    """
    config = relay_config(db_dsn, http={"heartbeat": heartbeat})
    async with (
        running_relay(config) as relay,
        running_caddy(tmp_path, [relay.port], read_timeout="1s", idle="1s") as caddy,
        sse_connect(caddy.app_url + LIVE) as client,
    ):
        await client.wait_for_state("stable")
        started = time.monotonic()
        idle = asyncio.ensure_future(client.next_event(timeout=3.0))
        try:
            await idle
        except TimeoutError:
            ended = None  # idle all along, still open
        except (EOFError, aiohttp.ClientError):
            ended = time.monotonic() - started
        else:
            raise AssertionError("no event was expected while idle")
        if survives:
            assert ended is None, f"stream ended after {ended:.1f}s despite pings"
            assert len(client.comments) >= 8  # ": ping" every 250 ms
            await execute(db_dsn, PROCESSING)
            await client.wait_for_state("processing", timeout=5)
        else:
            assert ended is not None and ended < 2.9, "Caddy's read_timeout did not apply"


async def test_last_event_id_passes_through_caddy(db_dsn: str, tmp_path: Path) -> None:
    config = relay_config(db_dsn, http={"heartbeat": "200ms"})
    async with (
        running_relay(config) as relay,
        running_caddy(tmp_path, [relay.port]) as caddy,
    ):
        url = caddy.app_url + LIVE
        async with sse_connect(url) as first:
            current = await first.wait_for_state("stable")
        # The event the browser already has is not sent again...
        async with sse_connect(url, headers={"Last-Event-ID": str(current.id)}) as resumed:
            with pytest.raises(TimeoutError):
                await resumed.next_event(timeout=1.0)
            assert resumed.comments, "the stream is open (pings arrive)"
            await execute(db_dsn, PROCESSING)
            newer = await resumed.wait_for_state("processing")
        # ...and a browser that missed one gets the current state at once.
        async with sse_connect(url, headers={"Last-Event-ID": str(current.id)}) as behind:
            event = await behind.next_event(timeout=2.0)
            assert event.id == newer.id


async def test_statbus_live_feed_goes_to_the_relay_uncompressed(
    db_dsn: str, tmp_path: Path, web_app: int
) -> None:
    """The app's host routes /api/sse/worker_status to the relay's feed, never to the app."""
    feed = {
        "path": "/api/sse/worker_status",
        "channels": ["worker_status"],
        "events": "unnamed",
        "on_connect": "event",
    }
    async with (
        running_relay(relay_config(db_dsn, feeds=[feed])) as relay,
        running_caddy(tmp_path, [relay.port], app_port=web_app) as caddy,
        sse_connect(
            caddy.app_url + "/api/sse/worker_status",
            headers={"Accept-Encoding": "gzip, deflate, br, zstd"},
        ) as client,
    ):
        assert "Content-Encoding" not in client.response.headers
        first = await client.next_event()
        assert (first.event, first.data) == ("connected", "true")
        await execute(db_dsn, "SELECT pg_notify('worker_status', '{\"type\":\"is_importing\"}')")
        event = await client.next_event()
        assert (event.event, event.data) == (None, '{"type":"is_importing"}')
