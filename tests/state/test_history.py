"""The history of busy periods: written by the leader, the same from every relay, kept
across restarts, trimmed by its retention, and summarised."""

from __future__ import annotations

from typing import Any

import aiohttp

from relay.state.stability import State
from tests.support import base_url, eventually, execute, relay_config, running_relay, sample

START = "INSERT INTO public.import_job (slug, state) VALUES ('census-2026', 'processing_data')"
FINISH = "UPDATE public.import_job SET state = 'finished'"


async def history(relay: Any, **params: str) -> tuple[int, dict[str, Any]]:
    url = base_url(relay) + "/api/system-status/history"
    async with aiohttp.ClientSession() as http, http.get(url, params=params) as response:
        return response.status, await response.json()


async def closed_periods(relay: Any, **params: str) -> list[dict[str, Any]]:
    _status, body = await history(relay, since="1h", **params)
    return [p for p in body["periods"] if not p["open"]]


async def test_the_leader_records_each_period_overall_and_per_activity(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay:
        await eventually(lambda: sample(relay, "relay_webhook_leader") == 1)
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        await execute(db_dsn, START)
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        await execute(db_dsn, FINISH)
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        await eventually(lambda: _has_closed(relay))
        [overall] = await closed_periods(relay)
        assert overall["activity"] is None
        assert overall["slugs"] == ["census-2026"]
        assert overall["duration_s"] >= 0
        [importing] = await closed_periods(relay, activity="importing")
        assert importing["activity"] == "importing"
        assert importing["slugs"] == ["census-2026"]
        assert await closed_periods(relay, activity="analytics") == []
        _status, body = await history(relay)
        assert body["summary"]["last_24h"]["count"] == 1
        assert body["summary"]["last_7d"]["median_s"] == overall["duration_s"]
        observed = relay.metrics.registry.get_sample_value(
            "relay_processing_duration_seconds_count"
        )
        assert observed == 1


async def _has_closed(relay: Any) -> bool:
    return bool(await closed_periods(relay))


async def test_two_relays_show_one_history_and_it_survives_a_restart_of_both(
    db_dsn: str,
) -> None:
    config = relay_config(db_dsn)
    async with running_relay(config) as one, running_relay(config) as two:
        relays = (one, two)
        # One of them leads (and writes the history) before the first period begins.
        await eventually(lambda: sum(sample(r, "relay_webhook_leader") for r in relays) == 1)
        for _round in range(2):
            await execute(db_dsn, START)
            # Both see each period, whichever leads: none is missed between two reads.
            await eventually(
                lambda: all(r.stability.current.state is State.PROCESSING for r in relays)
            )
            await execute(db_dsn, FINISH, "DELETE FROM public.import_job")
            await eventually(lambda: all(r.stability.current.state is State.STABLE for r in relays))
        await eventually(lambda: _count_closed(one, 2))
        seen_by_one = await closed_periods(one)
        assert seen_by_one == await closed_periods(two)
    async with running_relay(config) as again:
        assert await closed_periods(again) == seen_by_one


async def _count_closed(relay: Any, count: int) -> bool:
    return len(await closed_periods(relay)) == count


async def test_periods_older_than_the_retention_are_deleted(db_dsn: str) -> None:
    await execute(
        db_dsn,
        "INSERT INTO public.system_stability_period (activity, started_at, ended_at) VALUES "
        "('', now() - interval '100 days', now() - interval '99 days'), "
        "('', now() - interval '2 days', now() - interval '2 days' + interval '5 minutes')",
    )
    async with running_relay(relay_config(db_dsn, history={"retention": "30d"})) as relay:
        await execute(db_dsn, START)
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        # Two periods may be there before either change (the old one trimmed, the open one
        # written): wait for what is asserted.
        await eventually(lambda: _open_flags_are(relay, [True, False]))
        _status, body = await history(relay, since="365d")
        assert len(body["periods"]) == 2
        assert [p["open"] for p in body["periods"]] == [True, False]
        assert body["summary"]["last_7d"] == {"count": 1, "median_s": 300.0, "p90_s": 300.0}


async def _open_flags_are(relay: Any, flags: list[bool]) -> bool:
    _status, body = await history(relay, since="365d")
    return [p["open"] for p in body["periods"]] == flags


async def test_bad_history_queries_get_400(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay:
        bad_limits = ("0", "x", "+100", " 1_00 ", "\u0661\u0660\u0660", "1001")
        for bad in (
            {"since": "yesterday"},
            {"since": "\u0661\u0662h"},
            {"activity": "nope"},
            *({"limit": limit} for limit in bad_limits),
        ):
            status, body = await history(relay, **bad)
            assert status == 400 and body["error"], bad
        status, body = await history(relay, since="2026-01-01T00:00:00Z")
        assert status == 200 and body["since"].startswith("2026-01-01")


async def test_absurd_since_values_get_400_not_an_error(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay:
        for since in ("1000000d", "99999999999d", "9" * 400 + "s"):
            status, body = await history(relay, since=since)
            assert status == 400 and "since" in body["error"], since
