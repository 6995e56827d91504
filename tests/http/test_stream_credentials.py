"""Issue 18, streams that outlive their credential: an open stream (the live route and a feed)
ends once its credential stops being valid, on a reload that removes the token and when a
JWT's ``exp`` passes, with a last ``event: unauthorized`` the client can read. Both ways of
holding a stream (taken over, and the public path), over real HTTP."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import jwt
import pytest

from relay.config import Config
from tests.support import (
    STATBUS_FEED,
    Event,
    SseClient,
    base_url,
    eventually,
    execute,
    relay_config,
    running_relay,
    sse_connect,
)

LIVE = "/api/system-status/live"
FEED = STATBUS_FEED["path"]
OLD = "old-token-0123456789abcdef"
KEPT = "kept-token-0123456789abcdef"
NEW = "new-token-0123456789abcdef"
JWT_SECRET = "jwt-secret-0123456789abcdef-0123456789"
START_JOB = "INSERT INTO public.import_job (slug, state) VALUES ('job-1', 'processing_data')"


def config(dsn: str, **auth: Any) -> Config:
    return relay_config(dsn, auth=auth, feeds=[STATBUS_FEED])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def last_words(client: SseClient) -> Event:
    """Read up to the ``unauthorized`` event, then the end of the stream."""
    while True:
        event = await client.next_event(timeout=15)
        if event.event == "unauthorized":
            break
    with pytest.raises(EOFError):
        await client.next_event(timeout=15)
    return event


async def status_of(url: str, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status


@pytest.fixture(params=["takeover", "public"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "public":
        monkeypatch.setenv("RELAY_SSE_TAKEOVER", "off")
    return str(request.param)


async def test_a_reload_that_removes_a_token_ends_its_streams_and_keeps_the_others(
    path: str, db_dsn: str
) -> None:
    async with running_relay(config(db_dsn, bearer_tokens=[OLD, KEPT])) as relay:
        assert (relay.capacity.takeover) is (path == "takeover")
        base = base_url(relay)
        async with (
            sse_connect(base + LIVE, bearer(OLD)) as live,
            sse_connect(base + FEED, bearer(OLD)) as feed,
            sse_connect(base + LIVE, bearer(KEPT)) as kept,
        ):
            await live.next_event()
            await feed.next_event()  # the feed's "connected"
            await kept.next_event()
            await eventually(lambda: len(relay.hub) == 2 and len(relay.feeds) == 1)
            relay.reload(config(db_dsn, bearer_tokens=[KEPT, NEW]))
            for client in (live, feed):
                assert (await last_words(client)).json == {"reason": "invalid token"}
            await eventually(lambda: len(relay.hub) == 1 and len(relay.feeds) == 0)
            # The stream whose token the new rules still accept goes on.
            await execute(db_dsn, START_JOB)
            await kept.wait_for_state("processing")
        # A browser's EventSource reconnects, meets the new rules and stops.
        assert await status_of(base + LIVE, bearer(OLD)) == 401
        assert await status_of(base + FEED, bearer(OLD)) == 401


async def test_a_reload_that_turns_authentication_on_ends_the_open_streams(
    path: str, db_dsn: str
) -> None:
    async with running_relay(relay_config(db_dsn, feeds=[STATBUS_FEED])) as relay:
        async with sse_connect(base_url(relay) + LIVE) as live:
            await live.next_event()
            relay.reload(config(db_dsn, bearer_tokens=[NEW]))
            assert (await last_words(live)).json == {"reason": "authentication required"}
        await eventually(lambda: len(relay.hub) == 0)


async def test_a_stream_ends_when_its_jwt_expires(path: str, db_dsn: str) -> None:
    jwt_settings = {"secret": JWT_SECRET, "cookie": "app", "leeway": "0s"}
    async with running_relay(config(db_dsn, bearer_tokens=[KEPT], jwt=jwt_settings)) as relay:
        base = base_url(relay)
        token = jwt.encode({"exp": time.time() + 2}, JWT_SECRET, algorithm="HS256")
        async with (
            sse_connect(base + LIVE, bearer(token)) as live,
            sse_connect(base + FEED, {"Cookie": f"app={token}"}) as feed,
            sse_connect(base + LIVE, bearer(KEPT)) as kept,
        ):
            for client in (live, feed, kept):
                await client.next_event()
            for client in (live, feed):
                assert (await last_words(client)).json == {"reason": "token expired"}
            await eventually(lambda: len(relay.hub) == 1 and len(relay.feeds) == 0)
            await execute(db_dsn, START_JOB)
            await kept.wait_for_state("processing")
        assert await status_of(base + LIVE, bearer(token)) == 401
        assert await status_of(base + FEED, {"Cookie": f"app={token}"}) == 401


async def test_a_reload_that_drops_the_cookie_ends_the_streams_it_let_in(
    path: str, db_dsn: str
) -> None:
    jwt_settings = {"secret": JWT_SECRET, "cookie": "app"}
    async with running_relay(config(db_dsn, jwt=jwt_settings)) as relay:
        token = jwt.encode({"exp": time.time() + 600}, JWT_SECRET, algorithm="HS256")
        base = base_url(relay)
        async with (
            sse_connect(base + LIVE, {"Cookie": f"app={token}"}) as by_cookie,
            sse_connect(base + LIVE, bearer(token)) as by_header,
        ):
            for client in (by_cookie, by_header):
                await client.next_event()
            relay.reload(config(db_dsn, jwt={"secret": JWT_SECRET}))
            assert (await last_words(by_cookie)).json == {"reason": "authentication required"}
            await eventually(lambda: len(relay.hub) == 1)
            await execute(db_dsn, START_JOB)
            await by_header.wait_for_state("processing")
