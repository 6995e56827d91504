"""Estimates of the time left: a range that holds on a steady import, none without data."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from relay.state import eta
from relay.state.eta import ProgressTracker, from_history
from relay.state.stability import State
from tests.support import base_url, eventually, execute, relay_config, running_relay


def test_a_steady_rate_gives_a_range_around_the_truth() -> None:
    tracker = ProgressTracker(min_span=10)
    for second in range(0, 31, 5):
        tracker.observe("job", done=100.0 * second, now=1000.0 + second)
    estimate = tracker.estimate("job", total=10_000)
    assert estimate is not None
    assert estimate["low_s"] <= 70 <= estimate["high_s"]  # 7,000 rows left at 100/s
    assert "progress" in estimate["source"]


def test_no_estimate_without_enough_data_or_with_a_stall() -> None:
    tracker = ProgressTracker(min_span=10)
    tracker.observe("few", 0, 0)
    tracker.observe("few", 10, 5)
    assert tracker.estimate("few", 100) is None  # two samples
    for second, done in ((0, 0), (5, 50), (10, 50), (15, 50)):
        tracker.observe("stalled", done, second)
    assert tracker.estimate("stalled", 100) is None  # no progress in half the window
    for second in (0, 1, 2):
        tracker.observe("short", second, second)
    assert tracker.estimate("short", 100) is None  # spans 2 s
    assert tracker.estimate("never seen", 100) is None


def test_history_gives_a_range_only_with_enough_periods_and_not_past_the_usual() -> None:
    started = datetime(2026, 1, 1, tzinfo=UTC)
    now = started.timestamp() + 60
    typical: dict[str, Any] = {
        "count": 5,
        "median_s": 240.0,
        "p90_s": 420.0,
        "open_since": started.isoformat(),
    }
    assert from_history(typical, now) == {
        "low_s": 180.0,
        "high_s": 360.0,
        "source": "the last 5 periods: median 4 min, 90% within 7 min",
    }
    assert from_history({**typical, "count": 2}, now) is None
    assert from_history(typical, now + 400) is None  # already longer than 90% of them
    assert from_history({**typical, "open_since": None}, now) is None
    assert from_history(None, now) is None


async def details(relay: Any) -> dict[str, Any]:
    url = base_url(relay) + "/api/system-status/details"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        body: dict[str, Any] = await response.json()
        return body


async def test_a_steady_import_ends_within_its_estimate(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(eta, "MIN_SPAN", 2.0)
    total, step, pause = 6000, 100, 0.1  # 1,000 rows a second for 6 s
    await execute(
        db_dsn,
        "INSERT INTO public.import_job (slug, state, total_rows, imported_rows) "
        f"VALUES ('steady', 'processing_data', {total}, 0)",
    )
    config = relay_config(db_dsn, details={"cache": "0.2s"})
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)

        async def importer() -> float:
            # Paced step by step, never catching up: a loaded machine slows the whole import
            # alike, so the rate the relay measured holds to the end.
            for k in range(1, total // step + 1):
                await asyncio.sleep(pause)
                await execute(db_dsn, f"UPDATE public.import_job SET imported_rows = {k * step}")
            return time.monotonic()

        running = asyncio.create_task(importer())
        body = await details(relay)
        assert "eta" not in body["import_jobs"][0]  # no data yet: no estimate
        estimate = None
        while estimate is None and not running.done():
            await asyncio.sleep(0.3)
            body = await details(relay)
            estimate = body["import_jobs"][0].get("eta")
        asked = time.monotonic()
        assert estimate is not None, "no estimate during a steady import"
        assert body["activities"]["importing"]["eta"] == estimate
        done = await running
        took = done - asked
        # A ratio, not a deadline (the machine is shared): the import ended within a factor
        # of two of the range the relay gave.
        assert estimate["low_s"] / 2 <= took <= estimate["high_s"] * 2, (estimate, took)
