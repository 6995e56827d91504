"""Stalled, overdue, depth and lag (relay/state/signals.py), on a real PostgreSQL and a real
relay: each signal appears and clears, the gauges are zero-filled and never stale, a signals
function of another config is refused, and the config says what is wrong."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import psycopg
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from relay.config import Config, SignalsConfig
from relay.config.activities import Activity
from relay.config.profiles import load_profile
from relay.errors import ConfigError
from relay.source.activities.signals import signals_script
from relay.source.install import InstallRefused, install
from tests import procrastinate_support as pq
from tests.support import (
    base_url,
    events,
    eventually,
    execute,
    fresh_database,
    relay_config,
    running_relay,
    sample,
)

# Reads every 0.5 s: what a test waits for is a read or two away.
FAST = {"interval": "0.5s", "read_timeout": "0.4s"}
SEED = load_profile("seed").activities


def seed_config(dsn: str, signals: dict[str, Any] | None = None, **changes: Any) -> Config:
    """The seed's activities, with ``changes`` to its first (importing)."""
    return relay_config(
        dsn,
        profile="custom",
        activities=[{**SEED[0].model_dump(), **changes}, SEED[1].model_dump()],
        signals={**FAST, **(signals or {})},
    )


async def details(relay: Any) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(base_url(relay) + "/api/system-status/details") as response,
    ):
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


def insert_jobs(count: int, state: str = "processing_data", age: str = "0 s") -> str:
    return (
        "INSERT INTO public.import_job (slug, state, created_at) "
        f"SELECT 'j' || g || '-' || pg_catalog.md5(random()::text), '{state}', "
        f"now() - interval '{age}' FROM generate_series(1, {count}) AS g"
    )


FINISH = "UPDATE public.import_job SET state = 'finished'"


def test_the_signals_function_is_pinned_revoked_and_granted() -> None:
    script = signals_script(load_profile("procrastinate").activities)
    assert "SECURITY DEFINER" in script
    assert "SET search_path = pg_catalog, pg_temp" in script
    assert "REVOKE EXECUTE ON FUNCTION public.system_stability_signals(integer) FROM PUBLIC" in (
        script
    )
    assert "GRANT EXECUTE ON FUNCTION public.system_stability_signals(integer) TO" in script
    assert "GRANT" not in signals_script(SEED, grant=False)


def test_config_errors_name_their_keys() -> None:
    with pytest.raises(ValidationError, match=r"read_timeout \(2s\) must be shorter than interval"):
        SignalsConfig(interval=2.0, read_timeout=2.0)
    with pytest.raises(ValidationError, match="depth_cap"):
        SignalsConfig(depth_cap=0)
    with pytest.raises(ValidationError, match="overdue_factor"):
        SignalsConfig(overdue_factor=0.5)
    with pytest.raises(ValidationError, match=r"overdue_after\n.*greater than 0s"):
        SEED[0].model_validate({**SEED[0].model_dump(), "overdue_after": "0s"})
    with pytest.raises(ValidationError, match='expected a duration like "15s"'):
        SEED[0].model_validate({**SEED[0].model_dump(), "overdue_after": "soon"})
    with pytest.raises(ValidationError, match="an expression activity has rows only through"):
        Activity(
            name="x", label="X", expression="true", tables=("public.t",), stalled="t.x IS NULL"
        )
    with pytest.raises(ConfigError) as refused:
        from relay.config import load_config

        load_config(overrides={"signals.interval": "1s", "signals.read_timeout": "3s"})
    assert any(p.startswith("signals: ") for p in refused.value.problems), refused.value.problems


async def test_install_refuses_a_stalled_condition_or_age_column_that_does_not_fit(
    pg_admin_dsn: str,
) -> None:
    broken = [
        SEED[0].model_copy(update={"stalled": "t.no_such_column > 1", "age_column": "slug"}),
        SEED[1],
    ]
    async with fresh_database(pg_admin_dsn) as dsn:
        with pytest.raises(InstallRefused) as refused:
            await install(dsn, activities=broken, demo_schema=True, park=False)
        problems = refused.value.problems
        assert any(p.startswith("activities[0].stalled: column t.no_such_column") for p in problems)
        assert any(
            p.startswith("activities[0].age_column: operator does not exist") for p in problems
        )
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cursor = await conn.execute(
                "SELECT pg_catalog.to_regprocedure('public.system_stability_activities()')"
            )
            assert await cursor.fetchone() == (None,), "nothing is written when install refuses"


async def test_gauges_are_zero_filled_while_stable(db_dsn: str) -> None:
    async with running_relay(seed_config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.stable is True)
        for name in ("importing", "analytics"):
            for metric in ("depth", "stalled", "overdue", "oldest_age_seconds"):
                assert sample(relay, f"relay_activity_{metric}", activity=name) == 0.0
        assert sample(relay, "relay_signals_reads_total", outcome="ok") == 0.0, "stable: no read"


async def test_depth_is_capped_and_lag_is_the_oldest_row(db_dsn: str) -> None:
    config = seed_config(db_dsn, signals={"depth_cap": 3})
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.stable is True)
        await execute(db_dsn, insert_jobs(5, age="100 s"), insert_jobs(1))
        await eventually(lambda: sample(relay, "relay_activity_depth", activity="importing") == 4)
        age = sample(relay, "relay_activity_oldest_age_seconds", activity="importing")
        assert age >= 100, age
        assert sample(relay, "relay_activity_depth", activity="analytics") == 0
        body = await details(relay)
        signals = body["signals"]["importing"]
        assert signals["depth"] == 4 and signals["depth_capped"] is True
        assert signals["oldest_age_s"] >= 100
        assert body["signals_error"] is None
        # Two rows: exact below the cap.
        await execute(
            db_dsn,
            "UPDATE public.import_job SET state = 'finished' WHERE id NOT IN "
            "(SELECT id FROM public.import_job ORDER BY id LIMIT 2)",
        )
        await eventually(lambda: sample(relay, "relay_activity_depth", activity="importing") == 2)
        await execute(db_dsn, FINISH)
        await eventually(lambda: relay.stability.current.stable is True)
        assert sample(relay, "relay_activity_depth", activity="importing") == 0
        assert sample(relay, "relay_activity_oldest_age_seconds", activity="importing") == 0


async def test_overdue_appears_at_its_bound_and_clears_with_the_work(db_dsn: str) -> None:
    async with running_relay(seed_config(db_dsn, overdue_after="1s")) as relay:
        await eventually(lambda: relay.stability.current.stable is True)
        await execute(db_dsn, insert_jobs(1))
        await eventually(lambda: bool(relay.stability.current.running))
        assert relay.stability.current.overdue == ()
        # No database event: the timer notices the bound.
        await eventually(lambda: bool(relay.stability.current.overdue), timeout=10)
        signal = relay.stability.current.overdue[0]
        assert (signal.activity, signal.bound) == ("importing", 1.0)
        assert relay.stability.current.state.value == "processing", "signals never change it"
        assert sample(relay, "relay_activity_overdue", activity="importing") == 1
        assert sample(relay, "relay_activity_overdue", activity="analytics") == 0
        body = await details(relay)
        assert body["signals"]["importing"]["overdue"] is True
        assert body["signals"]["importing"]["overdue_bound_s"] == 1.0
        await execute(db_dsn, FINISH)
        await eventually(lambda: relay.stability.current.stable is True)
        assert relay.stability.current.overdue == ()
        assert sample(relay, "relay_activity_overdue", activity="importing") == 0


async def test_a_read_past_its_timeout_exports_nan_not_the_last_value(db_dsn: str) -> None:
    # The stalled condition sleeps once a flag row exists: the read then runs past its timeout.
    slow = (
        "NOT EXISTS (SELECT FROM public.import_job AS s WHERE s.slug = 'slow' "
        "AND pg_catalog.pg_sleep(2) IS NOT NULL)"
    )
    config = seed_config(db_dsn, stalled=f"t.state = 'approved' AND {slow}")
    await install(db_dsn, activities=config.activities, park=False)
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.stable is True)
        await execute(db_dsn, insert_jobs(2), insert_jobs(1, state="approved"))
        await eventually(lambda: sample(relay, "relay_activity_stalled", activity="importing") == 1)
        assert sample(relay, "relay_activity_depth", activity="importing") == 3
        with capture_logs() as logs:
            await execute(db_dsn, "INSERT INTO public.import_job (slug) VALUES ('slow')")
            await eventually(
                lambda: math.isnan(sample(relay, "relay_activity_depth", activity="importing")),
                timeout=10,
            )
        assert math.isnan(sample(relay, "relay_activity_stalled", activity="importing"))
        assert math.isnan(sample(relay, "relay_activity_oldest_age_seconds", activity="importing"))
        assert sample(relay, "relay_activity_depth", activity="analytics") == 0, "not active"
        assert sample(relay, "relay_signals_reads_total", outcome="failed") >= 1
        assert "signals.read_timeout" in events(logs, "signals_read_failed")[0]["reason"]
        body = await details(relay)
        assert body["signals"]["importing"]["depth"] is None
        assert "read_timeout" in body["signals_error"]
        await execute(db_dsn, "DELETE FROM public.import_job WHERE slug = 'slow'")
        await eventually(lambda: sample(relay, "relay_activity_depth", activity="importing") == 3)
        await execute(db_dsn, FINISH)


async def test_a_signals_function_of_another_config_is_refused(db_dsn: str) -> None:
    # Installed from the seed's activities; this relay's importing declares a stalled condition
    # (the activities' own function is the same, so the state is read and right).
    config = seed_config(db_dsn, stalled="t.updated_at < now() - interval '1 hour'")
    with capture_logs() as logs:
        async with running_relay(config) as relay:
            await eventually(lambda: relay.stability.current.stable is True)
            await execute(db_dsn, insert_jobs(1))
            await eventually(lambda: sample(relay, "relay_signals_refused") == 1)
            assert math.isnan(sample(relay, "relay_activity_depth", activity="importing"))
            assert sample(relay, "relay_signals_reads_total", outcome="refused") >= 1
            body = await details(relay)
            assert "run `stability-relay db install` with this config" in body["signals_error"]
            await execute(db_dsn, FINISH)
    refused = events(logs, "signals_refused")
    assert len(refused) == 1, "logged once"
    assert "generated from another definition" in refused[0]["reason"]


@pytest.fixture
async def procrastinate_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    async with fresh_database(pg_admin_dsn, "procrastinate") as dsn:
        await pq.apply_schema(dsn)
        activities = load_profile("procrastinate").activities
        await install(dsn, activities=activities, profile="procrastinate", park=False)
        yield dsn


async def test_procrastinate_job_of_a_silent_worker_is_stalled_until_it_beats(
    procrastinate_dsn: str,
) -> None:
    dsn = procrastinate_dsn
    config = relay_config(dsn, profile="procrastinate", signals=FAST)
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.stable is True)
        app = pq.make_app(dsn)
        async with app.open_async():
            await pq.defer(app, pq.SLEEP_TASK)
        # A worker takes the job with procrastinate's own functions, then goes silent.
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cursor = await conn.execute("SELECT worker_id FROM procrastinate_register_worker_v1()")
            row = await cursor.fetchone()
            assert row is not None
            worker = row[0]
            await conn.execute("SELECT procrastinate_fetch_job_v2(NULL, %s)", (worker,))
            await eventually(lambda: bool(relay.stability.current.running))
            # NaN until the first read of the new busy period, then its rows.
            await eventually(lambda: sample(relay, "relay_activity_depth", activity="jobs") == 1)
            assert sample(relay, "relay_activity_stalled", activity="jobs") == 0
            assert relay.stability.current.stalled == ()
            await conn.execute(
                "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '2 minutes' "
                "WHERE id = %s",
                (worker,),
            )
            await eventually(lambda: bool(relay.stability.current.stalled))
            signal = relay.stability.current.stalled[0]
            assert (signal.activity, signal.label) == ("jobs", "Running background jobs")
            assert relay.stability.current.state.value == "processing"
            assert sample(relay, "relay_activity_stalled", activity="jobs") == 1
            body = await details(relay)
            assert body["signals"]["jobs"]["stalled"] == 1
            assert body["signals"]["jobs"]["stalled_since"] is not None
            # Its heartbeat comes back: no longer stalled (no job changed, no hint).
            await conn.execute("SELECT procrastinate_update_heartbeat_v1(%s)", (worker,))
            await eventually(lambda: relay.stability.current.stalled == ())
            assert sample(relay, "relay_activity_stalled", activity="jobs") == 0
            # Pruned by another worker (worker_id turns NULL): stalled again.
            await conn.execute(
                "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour'"
            )
            await conn.execute("SELECT procrastinate_prune_stalled_workers_v1(60)")
            await eventually(lambda: bool(relay.stability.current.stalled))
            await conn.execute("UPDATE procrastinate_jobs SET status = 'failed'")
            await eventually(lambda: relay.stability.current.stable is True)
            assert relay.stability.current.stalled == ()
