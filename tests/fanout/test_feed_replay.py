"""Replay: feed events carry ids; a client that reconnects with Last-Event-ID gets what it
missed (as its filter allows), or `event: resync` when that is gone or of another run."""

from __future__ import annotations

import json

import pytest

from relay.fanout.replay import Ring
from tests.fanout.test_feeds import _terminate_listener, connected, data_events, feed_config, notify
from tests.support import base_url, eventually, running_relay, sse_connect

FEED = {"path": "/f", "channels": ["things"], "events": "unnamed", "on_connect": "none"}


def test_the_ring_is_bounded_in_events_and_bytes_and_knows_its_run() -> None:
    ring = Ring(max_events=3, max_bytes=1000)
    for _ in range(5):
        number, _id = ring.next_id()
        ring.keep(number, b"x" * 10, None)
    assert len(ring) == 3 and ring.size == 30
    assert ring.position(f"{ring.epoch}-2") == 2  # 3, 4, 5 are kept
    assert ring.position(f"{ring.epoch}-1") is None  # 2 is gone
    assert ring.position(f"{ring.epoch}-6") is None  # not sent yet
    assert ring.position(f"other-{ring.last}") is None
    assert list(ring.after(2, lambda _a: True)) == [b"x" * 10] * 3
    small = Ring(max_events=100, max_bytes=25)
    for _ in range(5):
        number, _id = small.next_id()
        small.keep(number, b"y" * 10, None)
    assert len(small) == 2 and small.size == 20


async def test_a_client_reconnecting_with_last_event_id_gets_what_it_missed(db_dsn: str) -> None:
    async with running_relay(feed_config(db_dsn, FEED)) as relay:
        await connected(relay)
        url = base_url(relay) + "/f"
        async with sse_connect(url) as client:
            await eventually(lambda: len(relay.feeds) == 1)
            await notify(db_dsn, "things", '{"n":1}', '{"n":2}')
            seen = await data_events(client, 2)
        last = seen[-1].id
        assert last and seen[0].id and seen[0].id != last
        await eventually(lambda: len(relay.feeds) == 0)
        ring = relay.feeds.feeds[0].ring
        before = ring.last
        await notify(db_dsn, "things", '{"n":3}', '{"n":4}')
        await eventually(lambda: ring.last == before + 2)
        async with sse_connect(url, headers={"Last-Event-ID": last}) as back:
            missed = await data_events(back, 2)
            assert [e.json["n"] for e in missed] == [3, 4]
            await notify(db_dsn, "things", '{"n":5}')
            [live] = await data_events(back, 1)
            assert live.json["n"] == 5
        replayed = relay.metrics.registry.get_sample_value(
            "relay_feed_replayed_total", {"feed": "/f"}
        )
        assert replayed == 2


async def test_replay_respects_the_client_s_filter(db_dsn: str) -> None:
    feed = {**FEED, "filter": {"param": "ids", "field": "job.id"}}
    async with running_relay(feed_config(db_dsn, feed)) as relay:
        await connected(relay)
        url = base_url(relay) + "/f?ids=2"
        async with sse_connect(url) as client:
            await eventually(lambda: len(relay.feeds) == 1)
            await notify(db_dsn, "things", '{"job":{"id":2},"n":0}')
            [first] = await data_events(client, 1)
        await eventually(lambda: len(relay.feeds) == 0)
        payloads = [json.dumps({"job": {"id": 1 + n % 2}, "n": n}) for n in range(1, 7)]
        ring = relay.feeds.feeds[0].ring
        before = ring.last
        await notify(db_dsn, "things", *payloads)
        await eventually(lambda: ring.last == before + 6)
        assert first.id is not None
        async with sse_connect(url, headers={"Last-Event-ID": first.id}) as back:
            missed = await data_events(back, 3)
            assert [e.json["n"] for e in missed] == [1, 3, 5]


@pytest.mark.parametrize("kind", ["too_old", "other_run"])
async def test_what_cannot_be_replayed_is_a_resync(db_dsn: str, kind: str) -> None:
    feed = {**FEED, "replay": {"events": 3}}
    async with running_relay(feed_config(db_dsn, feed)) as relay:
        await connected(relay)
        url = base_url(relay) + "/f"
        async with sse_connect(url) as client:
            await eventually(lambda: len(relay.feeds) == 1)
            await notify(db_dsn, "things", '{"n":1}')
            [first] = await data_events(client, 1)
        ring = relay.feeds.feeds[0].ring
        before = ring.last
        await notify(db_dsn, "things", *(f'{{"n":{n}}}' for n in range(2, 8)))
        await eventually(lambda: ring.last == before + 6)
        assert first.id is not None
        last = first.id if kind == "too_old" else "0badc0de-1"
        async with sse_connect(url, headers={"Last-Event-ID": last}) as back:
            [resync] = await data_events(back, 1)
            assert (resync.event, resync.json) == ("resync", {"reason": kind})


async def test_the_database_resync_is_an_event_a_returning_client_is_given(db_dsn: str) -> None:
    async with running_relay(feed_config(db_dsn, FEED)) as relay:
        await connected(relay)
        url = base_url(relay) + "/f"
        async with sse_connect(url) as client:
            await eventually(lambda: len(relay.feeds) == 1)
            await notify(db_dsn, "things", '{"n":1}')
            [first] = await data_events(client, 1)
        before = relay.feeds.feeds[0].ring.last
        await _terminate_listener(db_dsn)
        await eventually(lambda: relay.feeds.feeds[0].ring.last > before, timeout=15)
        assert first.id is not None
        async with sse_connect(url, headers={"Last-Event-ID": first.id}) as back:
            [told] = await data_events(back, 1)
            assert (told.event, told.json) == ("resync", {"reason": "reconnected"})
            assert told.id is not None and told.id != first.id
