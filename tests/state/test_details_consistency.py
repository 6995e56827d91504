"""The details agree with the state the live stream said (issue 18): real PostgreSQL writes,
real HTTP over loopback, a real SSE client."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp

from relay.app import Relay
from relay.config import Config
from relay.metrics import Metrics
from relay.state.details import Details
from relay.state.eta import Estimates
from relay.state.readpool import ReadPool
from relay.state.stability import Stability
from tests.support import (
    HINTS_ONLY,
    Event,
    SseClient,
    activities_truth,
    base_url,
    eventually,
    execute,
    relay_config,
    running_relay,
    sample,
    sse_connect,
)

LIVE = "/api/system-status/live"
DETAILS = "/api/system-status/details"
START = (
    "INSERT INTO public.import_job (slug, state) VALUES ('flip', 'processing_data') "
    "ON CONFLICT (slug) DO UPDATE SET state = 'processing_data'"
)
FINISH = "UPDATE public.import_job SET state = 'finished' WHERE slug = 'flip'"
QUERIES = "relay_details_queries_total"


async def details(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + DETAILS) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


def assert_agrees(body: dict[str, Any], event: Event) -> None:
    """The details say the stream's state: overall, per activity, and in their lists."""
    state = event.json
    assert body["system_stable"] == state["stable"], (body, state)
    active = {name: group["active"] for name, group in body["activities"].items()}
    assert active == state["activities"], (body, state)
    listed = [job["slug"] for job in body["import_jobs"]]
    assert listed == ([] if state["activities"]["importing"] is False else ["flip"])


async def hint_path(relay: Relay) -> None:
    """Connected, and past the poll every session starts with (relay/source/hold.py): from
    now on only a hint makes the listener read."""
    await eventually(lambda: relay.listener.connected.is_set())
    await eventually(lambda: sample(relay, "relay_polling") == 0)


def unhinted_config(dsn: str) -> Config:
    """No cache (so a request reads), no reconcile within the test: a commit no trigger
    announces is seen by the listener only when something hints."""
    return relay_config(
        dsn,
        database=HINTS_ONLY,
        stability={"reconcile_interval": "60s"},
        details={"cache": "0s"},
    )


async def unhinted(dsn: str, *statements: str) -> None:
    """A commit no trigger announces (as statbus deletes a task): only a read finds it."""
    await execute(dsn, "SET LOCAL session_replication_role = replica", *statements)


async def test_details_opened_right_after_each_flip_agree_with_the_stream(db_dsn: str) -> None:
    """The modal opened moments before (the cache holds that state), the flip seen on the
    stream, the modal opened again at once: the details say the new state, and its seq."""
    async with running_relay(relay_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        url = base_url(relay)
        await eventually(lambda: relay.listener.connected.is_set())
        async with sse_connect(url + LIVE) as stream:
            event = await stream.wait_for_state("stable")
            for flip in range(20):
                before = await details(http, url)
                assert_agrees(before, event)
                seen = event
                await execute(db_dsn, FINISH if flip % 2 else START)
                event = await stream.wait_for_state("stable" if flip % 2 else "processing")
                after = await details(http, url)  # at once: well within 50 ms of the event
                assert_agrees(after, event)
                assert before["seq"] == int(seen.json["seq"])
                assert after["seq"] >= int(event.json["seq"])
                assert after["ahead"] is False


async def test_concurrent_requests_across_a_flip_cost_one_round_per_state(db_dsn: str) -> None:
    """Hundreds of requests before, during and after a flip, with a 30 s cache: one round of
    queries per state, and no request sent after the stream said the flip is answered with
    the state before it."""
    config = relay_config(db_dsn, details={"cache": "30s"})
    async with running_relay(config) as relay:
        url = base_url(relay)
        await eventually(lambda: relay.listener.connected.is_set())
        connector = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            sse_connect(url + LIVE) as stream,
        ):
            first = await stream.wait_for_state("stable")
            states = {int(first.json["seq"]): first}  # every state the stream said, by seq
            latest = [int(first.json["seq"])]

            async def follow(client: SseClient) -> None:
                while True:
                    event = await client.next_event(timeout=60)
                    if event.event is None:
                        states[int(event.json["seq"])] = event
                        latest[0] = int(event.json["seq"])

            async def ask() -> tuple[int, dict[str, Any]]:
                known = latest[0]  # the newest state this client had heard of when it asked
                return known, await details(http, url)

            follower = asyncio.create_task(follow(stream), name="test-follow-stream")
            try:
                queries = sample(relay, QUERIES)
                asked = [asyncio.create_task(ask()) for _ in range(200)]
                await asyncio.gather(*asked)
                assert sample(relay, QUERIES) - queries == 1
                writer = asyncio.create_task(execute(db_dsn, START))
                # Requests in waves while the commit lands and the stream says so, and after.
                while len(states) < 2 or len(asked) < 800:
                    asked += [asyncio.create_task(ask()) for _ in range(25)]
                    await asyncio.sleep(0.002)
                    assert len(asked) < 20_000, "the flip never reached the stream"
                await writer
                answers = await asyncio.gather(*asked)
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            flip = max(states)
            assert states[flip].json["state"] == "processing"
            assert sample(relay, QUERIES) - queries <= len(states)
            after_flip = [body for known, body in answers if known >= flip]
            assert after_flip, "no request was sent after the stream said the flip"
            stale = [body for body in after_flip if body["system_stable"] is not False]
            assert not stale, f"{len(stale)} of {len(after_flip)} answered from before the flip"
            for known, body in answers:
                assert body["seq"] >= known
                assert body["ahead"] is False
                assert_agrees(body, states[body["seq"]])


async def test_details_that_read_a_newer_state_have_the_listener_read_it(db_dsn: str) -> None:
    """A commit no trigger announces, and a reconcile a minute away: the details read it, the
    relay's state follows at once, and the answer carries that state's seq."""
    async with running_relay(unhinted_config(db_dsn)) as relay:
        url = base_url(relay)
        await hint_path(relay)
        async with aiohttp.ClientSession() as http, sse_connect(url + LIVE) as stream:
            stable = await stream.wait_for_state("stable")
            assert_agrees(await details(http, url), stable)
            await unhinted(db_dsn, START)
            body = await details(http, url)
            processing = await stream.wait_for_state("processing", timeout=10)
            assert body["ahead"] is False
            assert body["seq"] == int(processing.json["seq"])
            assert_agrees(body, processing)


async def test_details_say_ahead_when_the_state_cannot_follow(db_dsn: str) -> None:
    """With the listener stopped, the relay's state cannot follow a commit: the details are
    answered (after a bounded wait) with the seq they were read in and ``ahead``."""
    async with running_relay(unhinted_config(db_dsn)) as relay:
        url = base_url(relay)
        await hint_path(relay)
        async with aiohttp.ClientSession() as http:
            before = await details(http, url)
            assert before["ahead"] is False
            await relay.listener.aclose()
            await unhinted(db_dsn, START)
            body = await details(http, url)
            assert body["seq"] == before["seq"] == relay.stability.current.seq
            assert body["ahead"] is True
            assert body["system_stable"] is False
            again = await details(http, url)  # from the cache, without a second wait
            assert again == body


async def test_a_round_in_flight_is_not_shared_past_a_transition(db_dsn: str) -> None:
    """A request that arrives after a transition never joins the round begun before it:
    it gets a round of its own, and each answer names the state it was read in."""
    config = relay_config(db_dsn, details={"cache": "30s"})
    stability = Stability({a.name: a.label for a in config.activities})
    metrics = Metrics()
    pool = ReadPool(config.database, config.details)
    details = Details(config.database, config.details, metrics, stability, pool, Estimates())
    stability.subscribe(details.on_change)
    await pool.start()
    await details.start()
    try:
        unknown = stability.current.seq
        first = asyncio.create_task(details.fetch())
        await asyncio.sleep(0)  # its round has begun; no query can have landed yet
        stability.update_truth(await activities_truth(db_dsn))  # the truth: stable
        second = asyncio.create_task(details.fetch())
        early, late = [json.loads(body) for body in await asyncio.gather(first, second)]
    finally:
        await details.aclose()
        await pool.aclose()
    assert metrics.registry.get_sample_value(QUERIES) == 2
    assert (early["seq"], early["ahead"]) == (unknown, True)  # read while the state was unknown
    assert (late["seq"], late["ahead"]) == (stability.current.seq, False)
    assert late["seq"] > unknown and late["system_stable"] is True
