"""Feeds that reshape, coalesce with a trailing debounce, and merge channels: the rules as
functions, then over real HTTP against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import psycopg

from relay.config import ClientFilter, Reshape
from relay.fanout import shape
from tests.fanout.test_feeds import connected, data_events, feed_config, notify
from tests.support import base_url, eventually, running_relay, sse_connect

PROGRESS = Reshape(
    add={"type": "import_job_progress"},
    keep=("type", "job_id", "state", "error_count", "warning_count"),
    defaults={"error_count": 0, "warning_count": 0},
)


def test_reshape_keeps_declared_keys_in_order_with_defaults_for_absent_or_null() -> None:
    payload = shape.parse('{"state":"analysing","job_id":7,"error_count":null,"rate":1.5}')
    shaped = shape.reshape(payload, PROGRESS, {})
    assert shape.encode(shaped) == (
        '{"type":"import_job_progress","job_id":7,"state":"analysing",'
        '"error_count":0,"warning_count":0}'
    )
    # A kept key absent from the payload and without a default is left out; null stays null.
    assert shape.reshape({"job_id": None}, PROGRESS, {}) == {
        "type": "import_job_progress",
        "job_id": None,
        "error_count": 0,
        "warning_count": 0,
    }


def test_reshape_renames_and_fills_the_time_in() -> None:
    rule = Reshape(add={"at": "$now"}, rename={"job": "job_id"})
    shaped = shape.reshape({"job_id": 3, "x": 1}, rule, {"$now": "2026-01-01T00:00:00.000Z"})
    assert list(shaped.items()) == [("at", "2026-01-01T00:00:00.000Z"), ("job", 3), ("x", 1)]


def test_json_is_written_as_json_stringify_writes_it() -> None:
    parsed = shape.parse('{"b" : 40.00, "a" : 12.50, "2": 1e21, "1": 0.0000001, "t": "ø\\u0001"}')
    assert shape.encode(parsed) == '{"1":1e-7,"2":1e+21,"b":40,"a":12.5,"t":"ø\\u0001"}'


def test_statbus_ids_are_read_as_parseint_reads_them() -> None:
    rule = ClientFilter(values="positive_integers")
    assert shape.parse_values(["\ufeff12abc, 0,,0x1A"], rule)[0] == [12.0, 26.0]
    for bad in ("-3", "abc", "00", "\x1c5"):
        try:
            shape.parse_values([bad], rule)
        except shape.BadFilter:
            continue
        raise AssertionError(f"{bad!r} was accepted")


async def test_a_burst_longer_than_the_window_is_one_event_with_the_last_payload(
    db_dsn: str,
) -> None:
    """Trailing: each arrival restarts its key's timer. Eight payloads 0.3 s apart span 2.1 s,
    more than the 1.5 s window: a window fixed at the first arrival sent two events or more."""
    feed = {
        "path": "/f",
        "channels": ["ticks"],
        "events": "unnamed",
        "on_connect": "none",
        "coalesce": {"window": "1.5s", "key": "k"},
    }
    async with running_relay(feed_config(db_dsn, feed)) as relay:
        await connected(relay)
        async with sse_connect(base_url(relay) + "/f") as client:
            await eventually(lambda: len(relay.feeds) == 1)
            for n in range(8):
                await notify(db_dsn, "ticks", json.dumps({"k": "a", "n": n}))
                await asyncio.sleep(0.3)
            await notify(db_dsn, "ticks", '{"k":"sentinel"}')
            events = await data_events(client, 2, timeout=10)
            assert [e.json for e in events] == [{"k": "a", "n": 7}, {"k": "sentinel"}]
            assert all(e.id for e in events)


async def test_max_wait_sends_a_key_that_never_pauses(db_dsn: str) -> None:
    feed = {
        "path": "/f",
        "channels": ["ticks"],
        "events": "unnamed",
        "on_connect": "none",
        "coalesce": {"window": "5s", "key": "k", "max_wait": "0.5s"},
    }
    async with running_relay(feed_config(db_dsn, feed)) as relay:
        await connected(relay)
        async with sse_connect(base_url(relay) + "/f") as client:
            await eventually(lambda: len(relay.feeds) == 1)
            for n in range(6):
                await notify(db_dsn, "ticks", json.dumps({"k": "a", "n": n}))
                await asyncio.sleep(0.25)
            [first] = await data_events(client, 1, timeout=4)  # the window alone: 5 s after
            assert first.json["n"] < 5


async def test_channels_merge_in_arrival_order_each_with_its_own_rules(db_dsn: str) -> None:
    feed = {
        "path": "/merged",
        "channels": ["status", "progress"],
        "events": "unnamed",
        "encode": "compact",
        "on_connect": "none",
        "per_channel": {
            "progress": {"reshape": PROGRESS.model_dump()},
        },
    }
    async with running_relay(feed_config(db_dsn, feed)) as relay:
        await connected(relay)
        async with sse_connect(base_url(relay) + "/merged") as client:
            await eventually(lambda: len(relay.feeds) == 1)
            async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
                for n in range(5):
                    await conn.execute("SELECT pg_notify('status', %s)", (f'{{"n" : {n}.00}}',))
                    await conn.execute(
                        "SELECT pg_notify('progress', %s)", (f'{{"job_id":{n},"rate":1}}',)
                    )
                await conn.commit()
            events = await data_events(client, 10)
            assert [e.data for e in events] == [
                line
                for n in range(5)
                for line in (
                    f'{{"n":{n}}}',
                    f'{{"type":"import_job_progress","job_id":{n},'
                    '"error_count":0,"warning_count":0}',
                )
            ]
