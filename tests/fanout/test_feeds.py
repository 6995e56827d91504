"""Feeds: NOTIFY channels on SSE routes of their own, against a real PostgreSQL over real HTTP.

The statbus framing is what statbus's frontend reads today (``/api/sse/worker_status``); the
default framing is what a new user gets. Payloads are sent with pg_notify as the system's own
triggers and hooks would.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import psycopg
import pytest

from relay.app import Relay
from relay.config import Config
from relay.state.stability import State
from tests import support
from tests.support import (
    Event,
    SseClient,
    base_url,
    eventually,
    relay_config,
    running_relay,
    sse_connect,
)

STATBUS_FEED = {**support.STATBUS_FEED, "heartbeat_interval": "0.3s"}


def feed_config(dsn: str, *feeds: dict[str, Any], **sections: Any) -> Config:
    return relay_config(dsn, feeds=list(feeds), **sections)


async def notify(dsn: str, channel: str, *payloads: str) -> None:
    """Each payload committed on its own, in order (as the system's hooks send them)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for payload in payloads:
            await conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


async def data_events(client: SseClient, count: int, timeout: float = 5.0) -> list[Event]:
    """The next ``count`` events that are not heartbeats."""
    seen: list[Event] = []
    while len(seen) < count:
        event = await client.next_event(timeout)
        if event.event != "heartbeat":
            seen.append(event)
    return seen


async def connected(relay: Relay) -> None:
    await eventually(lambda: relay.stability.current.state is not State.UNKNOWN)


async def test_statbus_framing_connected_then_payloads_verbatim_in_order(db_dsn: str) -> None:
    payloads = [
        '{"type":"is_importing","status":true}',
        '{"type": "pipeline_progress", "phases": [{"phase": "is_deriving_reports"}]}',
        '{"type":"is_importing","status":false}',
    ]
    async with running_relay(feed_config(db_dsn, STATBUS_FEED)) as relay:
        await connected(relay)
        url = base_url(relay) + "/api/sse/worker_status"
        async with sse_connect(url) as client:
            assert client.response.headers["Content-Type"] == "text/event-stream"
            first = await client.next_event()
            assert (first.event, first.data) == ("connected", "true")
            await notify(db_dsn, "worker_status", *payloads)
            events = await data_events(client, 3)
            assert [(e.event, e.data) for e in events] == [(None, p) for p in payloads]
            beat = await client.next_event(2)
            while beat.event != "heartbeat":
                beat = await client.next_event(2)
            assert beat.json["type"] == "heartbeat" and beat.json["timestamp"].endswith("Z")
        registry = relay.metrics.registry
        events_total = registry.get_sample_value(
            "relay_feed_events_total", {"feed": "/api/sse/worker_status"}
        )
        assert events_total == 3


async def test_after_the_database_connection_is_cut_each_client_is_told_again(
    db_dsn: str,
) -> None:
    """Notifications sent while the relay was away are gone: `connected` makes statbus's
    client re-read; the default framing says `event: resync`."""
    default = {"path": "/feeds/progress", "channels": ["import_job_progress"]}
    async with running_relay(feed_config(db_dsn, STATBUS_FEED, default)) as relay:
        await connected(relay)
        base = base_url(relay)
        async with (
            sse_connect(base + "/api/sse/worker_status") as statbus,
            sse_connect(base + "/feeds/progress") as other,
        ):
            assert (await statbus.next_event()).event == "connected"
            snapshot = await other.next_event()
            assert snapshot.event == "stability" and snapshot.json["stable"] is True
            await _terminate_listener(db_dsn)
            again = await data_events(statbus, 1, timeout=10)
            assert (again[0].event, again[0].data) == ("connected", "true")
            resync = await other.next_event(10)
            assert (resync.event, resync.json) == ("resync", {"reason": "reconnected"})
            await notify(db_dsn, "import_job_progress", '{"id":1}')
            after = await other.next_event()
            assert (after.event, after.data) == ("import_job_progress", '{"id":1}')


async def _terminate_listener(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'stability-relay' AND datname = current_database()"
        )


async def test_clients_filter_by_a_payload_field_and_bad_values_get_400(db_dsn: str) -> None:
    feed = {
        "path": "/api/sse/import-jobs",
        "channels": ["import_job"],
        "events": "unnamed",
        "on_connect": "none",
        "filter": {"param": "ids", "field": "id"},
    }
    async with running_relay(feed_config(db_dsn, feed)) as relay:
        await connected(relay)
        url = base_url(relay) + "/api/sse/import-jobs"
        async with sse_connect(url + "?ids=3,4") as some, sse_connect(url) as every:
            await eventually(lambda: len(relay.feeds) == 2)
            await notify(
                db_dsn,
                "import_job",
                '{"verb":"UPDATE","id":5}',
                '{"verb":"UPDATE","id":3}',
                '{"verb":"INSERT","id":4}',
                '{"verb":"DELETE"}',
            )
            assert [e.json.get("id") for e in await data_events(every, 4)] == [5, 3, 4, None]
            assert [e.json["id"] for e in await data_events(some, 2)] == [3, 4]
            with pytest.raises(TimeoutError):
                await some.next_event(0.5)  # id 5 and the id-less one were not for it
        async with aiohttp.ClientSession() as http:
            for bad in ("ids=", "ids=1,,2", "ids=" + ",".join(map(str, range(101)))):
                async with http.get(f"{url}?{bad}") as response:
                    assert response.status == 400
                    assert response.content_type == "application/json"
                    assert "ids" in (await response.json())["error"]


async def test_bursts_keep_the_latest_payload_per_key_without_reordering(db_dsn: str) -> None:
    feed = {
        **STATBUS_FEED,
        "heartbeat_interval": "30s",
        "coalesce": {"window": "300ms", "key": "type"},
    }
    async with running_relay(feed_config(db_dsn, feed)) as relay:
        await connected(relay)
        async with sse_connect(base_url(relay) + "/api/sse/worker_status") as client:
            assert (await client.next_event()).event == "connected"
            await notify(
                db_dsn,
                "worker_status",
                '{"type":"a","n":1}',
                '{"type":"b","n":1}',
                '{"type":"a","n":2}',
                '{"type":"c","n":1}',
                '{"type":"a","n":3}',
            )
            events = await data_events(client, 3)
            assert [(e.json["type"], e.json["n"]) for e in events] == [
                ("b", 1),
                ("c", 1),
                ("a", 3),
            ]
        coalesced = relay.metrics.registry.get_sample_value(
            "relay_feed_coalesced_total", {"feed": "/api/sse/worker_status"}
        )
        assert coalesced == 2


async def test_unrelayable_payloads_are_counted_and_dropped(db_dsn: str) -> None:
    async with running_relay(feed_config(db_dsn, STATBUS_FEED)) as relay:
        await connected(relay)
        async with sse_connect(base_url(relay) + "/api/sse/worker_status") as client:
            assert (await client.next_event()).event == "connected"
            await notify(db_dsn, "worker_status", "not json", "[1]", '{"type":"ok"}')
            [event] = await data_events(client, 1)
            assert event.json == {"type": "ok"}
        dropped = relay.metrics.registry.get_sample_value(
            "relay_feed_dropped_total", {"feed": "/api/sse/worker_status"}
        )
        assert dropped == 2


async def test_feeds_share_the_streams_limit_and_the_authentication(db_dsn: str) -> None:
    token = "a-test-token-of-16+"
    config = feed_config(
        db_dsn,
        STATBUS_FEED,
        http={"max_clients": 2},
        auth={"bearer_tokens": [token]},
    )
    headers = {"Authorization": f"Bearer {token}"}
    async with running_relay(config) as relay, aiohttp.ClientSession() as http:
        await connected(relay)
        base = base_url(relay)
        async with http.get(base + "/api/sse/worker_status") as response:
            assert response.status == 401
        live = base + "/api/system-status/live"
        async with (
            sse_connect(live, headers=headers),
            sse_connect(base + "/api/sse/worker_status", headers=headers),
        ):
            await eventually(lambda: relay.capacity.open == 2)
            async with http.get(base + "/api/sse/worker_status", headers=headers) as response:
                assert response.status == 429


def test_the_statbus_profile_serves_statbus_s_three_routes() -> None:
    config = Config.model_validate({"profile": "statbus"})
    feed, jobs, tasks = config.feeds
    assert (feed.path, feed.channels, feed.events, feed.encode) == (
        "/api/sse/worker_status",
        ("worker_status", "import_job_progress"),
        "unnamed",
        "compact",
    )
    assert (feed.on_connect, feed.connect_event, feed.connect_data, feed.retry) == (
        "event",
        "connected",
        "true",
        "none",
    )
    assert (feed.heartbeat, feed.heartbeat_event, feed.heartbeat_interval) == (
        "event",
        "heartbeat",
        30.0,
    )
    assert feed.coalesce is not None and (feed.coalesce.window, feed.coalesce.key) == (0.5, "type")
    progress = feed.rules("import_job_progress").coalesce
    assert progress is not None and (progress.window, progress.key) == (0.5, "job_id")
    assert (jobs.path, jobs.on_connect, jobs.retry, jobs.heartbeat_interval) == (
        "/api/sse/import-jobs",
        "message",
        "after_greeting",
        10.0,
    )
    assert jobs.filter is not None and jobs.filter.invalid_body == {
        "error": "Invalid job ID format"
    }
    assert [read.name for read in config.enrichers] == ["import_job"]
    assert (tasks.path, tasks.heartbeat, tasks.heartbeat_comment) == (
        "/api/sse/worker-tasks",
        "comment",
        "heartbeat",
    )
    assert tasks.coalesce is not None and (tasks.coalesce.window, tasks.coalesce.key) == (
        1.0,
        "parent_id",
    )


def test_a_feed_may_not_take_over_the_relay_s_own_routes() -> None:
    with pytest.raises(ValueError, match="one of the relay's own routes"):
        Config.model_validate({"feeds": [{"path": "/api/system-status/x", "channels": ["a"]}]})
    with pytest.raises(ValueError, match="used twice"):
        Config.model_validate(
            {"feeds": [{"path": "/a", "channels": ["x"]}, {"path": "/a", "channels": ["y"]}]}
        )


async def test_payloads_keep_flowing_to_a_feed_under_a_burst(db_dsn: str) -> None:
    """A thousand payloads in one transaction each reach the client, in order."""
    feed = {"path": "/f", "channels": ["burst"], "events": "unnamed", "on_connect": "none"}
    async with running_relay(feed_config(db_dsn, feed)) as relay:
        await connected(relay)
        async with sse_connect(base_url(relay) + "/f") as client:
            await eventually(lambda: len(relay.feeds) == 1)
            async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
                for i in range(1000):
                    await conn.execute("SELECT pg_notify('burst', %s)", (json.dumps({"i": i}),))
                await conn.commit()
            events = await data_events(client, 1000, timeout=10)
            assert [e.json["i"] for e in events] == list(range(1000))
