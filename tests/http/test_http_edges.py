"""Issue 18, HTTP edges, over real HTTP on loopback: every X-Forwarded-For line counts, /readyz
names no connection details, every way to the status page carries its security headers, and
long polls are limited per client address."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import psycopg
import pytest

from relay.app import Relay
from relay.source.listener import STANDBY_FIX
from tests.support import base_url, eventually, relay_config, running_relay, sample

LIVE = "/api/system-status/live"
WAIT = "/api/system-status/wait"
PROXY = {"trusted_proxies": ["127.0.0.1/32"]}


# -- X-Forwarded-For on several header lines ---------------------------------------------------


@asynccontextmanager
async def raw_stream(port: int, *header_lines: str) -> AsyncIterator[bytes]:
    """Open the live stream with exactly these header lines; yields the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = "".join(f"{line}\r\n" for line in ("Host: relay", *header_lines))
        writer.write(f"GET {LIVE} HTTP/1.1\r\n{head}\r\n".encode())
        await writer.drain()
        yield await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_every_x_forwarded_for_line_counts_toward_the_per_address_limit(
    db_dsn: str,
) -> None:
    """A client sends an X-Forwarded-For of its own making (a new one each time); its proxy
    adds a line of its own naming the real client. The real client is the one counted."""
    config = relay_config(db_dsn, http={"max_clients_per_address": 2, **PROXY})
    async with running_relay(config) as relay:

        def spoofed(n: int) -> tuple[str, str]:
            return (f"X-Forwarded-For: 198.51.100.{n}", "X-Forwarded-For: 203.0.113.7")

        async with raw_stream(relay.port, *spoofed(1)) as first:
            async with raw_stream(relay.port, *spoofed(2)) as second:
                assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200")
                async with raw_stream(relay.port, *spoofed(3)) as third:
                    assert third.startswith(b"HTTP/1.1 429"), third
                # The lines are one list, in order: a trusted proxy's hop is skipped as ever.
                trailing = (*spoofed(4), "X-Forwarded-For: 127.0.0.1")
                async with raw_stream(relay.port, *trailing) as fourth:
                    assert fourth.startswith(b"HTTP/1.1 429"), fourth
                async with raw_stream(relay.port, "X-Forwarded-For: 203.0.113.8") as other:
                    assert other.startswith(b"HTTP/1.1 200"), other


# -- /readyz ------------------------------------------------------------------------------------


async def test_readyz_names_the_refusal_and_its_fix_but_no_connection_details(
    db_dsn: str,
) -> None:
    # The only server there is a primary: a DSN that asks for a standby is refused as one.
    dsn = psycopg.conninfo.make_conninfo(db_dsn, target_session_attrs="standby")
    parts = psycopg.conninfo.conninfo_to_dict(db_dsn)
    config = relay_config(dsn)
    async with running_relay(config) as relay, aiohttp.ClientSession() as http:
        await eventually(lambda: relay.listener.refusal_kind == "standby")
        # What the relay logs (and keeps): the server's own words, with where it points.
        assert relay.listener.refusal is not None and str(parts["dbname"]) in relay.listener.refusal
        async with http.get(base_url(relay) + "/readyz") as response:
            assert response.status == 503
            text = await response.text()
            answer = await response.json()
    assert answer["refused"] == "standby"
    assert answer["fix"] == STANDBY_FIX
    assert answer["reason"].endswith(f"; fix: {STANDBY_FIX}")
    assert "standby" in answer["reason"]
    for detail in (parts["dbname"], parts["host"], parts["port"], f"{parts['user']}@"):
        assert str(detail) not in text, detail
    assert not re.search(rf"\b{re.escape(str(parts['user']))}\b", text)
    assert "hot standby mode" not in text  # libpq's words stay in the log


# -- the status page's headers ------------------------------------------------------------------

PAGE_PATHS = ["/", "/static/index.html", "/static/%69ndex.html", "/static/./index.html"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_every_way_to_the_status_page_carries_its_security_headers(
    method: str, db_dsn: str
) -> None:
    async with running_relay(relay_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        base = base_url(relay)
        seen = []
        for path in PAGE_PATHS:
            async with http.request(method, base + path) as response:
                assert response.status == 200, path
                assert response.content_type == "text/html", path
                headers = response.headers
                csp = headers["Content-Security-Policy"]
                assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
                assert headers["Referrer-Policy"] == "no-referrer", path
                assert headers["X-Content-Type-Options"] == "nosniff", path
                seen.append((csp, headers["Referrer-Policy"]))
        assert len(set(seen)) == 1, "the same headers whichever way"
        # The script and style too (same policy; the component may be loaded cross-origin).
        for path in ("/static/system-status.js", "/static/status-page.css"):
            async with http.request(method, base + path) as response:
                assert response.status == 200
                assert response.headers["Content-Security-Policy"] == seen[0][0]
                assert response.headers["Access-Control-Allow-Origin"] == "*"


# -- long polls per address ---------------------------------------------------------------------


async def waiting(relay: Relay) -> float:
    return sample(relay, "relay_waiters")


@asynccontextmanager
async def long_polls(
    relay: Relay, count: int, headers: dict[str, str] | None = None
) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """``count`` long polls that wait for a condition that does not come (the system is
    stable), open until the block ends."""
    url = base_url(relay) + WAIT
    params = {"until": "processing", "timeout": "10m"}
    before = await waiting(relay)
    async with aiohttp.ClientSession() as http:

        async def poll() -> int:
            async with http.get(url, params=params, headers=headers or {}) as response:
                return response.status

        tasks = [asyncio.create_task(poll(), name=f"tests-poll-{n}") for n in range(count)]
        try:
            await eventually(lambda: sample(relay, "relay_waiters") == before + count)
            yield tasks
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def wait_answer(relay: Relay, headers: dict[str, str] | None = None) -> tuple[Any, ...]:
    """A long poll's answer when it comes at once (a refusal); a short one otherwise."""
    params = {"until": "processing", "timeout": "1s"}
    async with aiohttp.ClientSession() as http:
        url = base_url(relay) + WAIT
        async with http.get(url, params=params, headers=headers or {}) as response:
            return response.status, response.headers, await response.json()


async def test_one_address_gets_only_its_share_of_the_long_polls(db_dsn: str) -> None:
    config = relay_config(
        db_dsn, wait={"max_waiters": 10, "max_waiters_per_address": 2}, http=PROXY
    )
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.stable is True)
        client = {"X-Forwarded-For": "203.0.113.7"}
        async with long_polls(relay, 2, client):
            status, headers, body = await wait_answer(relay, client)
            assert status == 429
            assert headers["Retry-After"] == "5"
            assert headers["Content-Type"].startswith("application/json")
            assert "one address" in body["error"]
            # Another client (another X-Forwarded-For) still gets a slot.
            other = {"X-Forwarded-For": "203.0.113.8"}
            assert (await wait_answer(relay, other))[0] == 408
        # Once they have ended, the slots are free again.
        await eventually(lambda: sample(relay, "relay_waiters") == 0)
        assert (await wait_answer(relay, client))[0] == 408


async def test_long_polls_of_a_direct_client_count_against_its_share(db_dsn: str) -> None:
    config = relay_config(db_dsn, wait={"max_waiters_per_address": 3})
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.stable is True)
        async with long_polls(relay, 3):
            assert (await wait_answer(relay))[0] == 429


async def test_long_polls_and_streams_share_max_clients_per_address_behind_a_proxy(
    db_dsn: str,
) -> None:
    config = relay_config(db_dsn, http={"max_clients_per_address": 2, **PROXY})
    async with running_relay(config) as relay, aiohttp.ClientSession() as http:
        await eventually(lambda: relay.stability.current.stable is True)
        client = {"X-Forwarded-For": "203.0.113.9"}
        async with http.get(base_url(relay) + LIVE, headers=client) as stream:
            assert stream.status == 200
            async with long_polls(relay, 1, client):
                status, headers, body = await wait_answer(relay, client)
                assert status == 429 and headers["Retry-After"]
                assert "one address" in body["error"]
