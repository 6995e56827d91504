"""Exactness: once commits settle, the relay's state equals ``is_system_stable()``.

The reconcile and heartbeat are pushed far out in these tests, so what is tested is the
hint path alone: notifications received, the truth re-read after each.
"""

from __future__ import annotations

import asyncio
import random

import psycopg
import pytest

from relay.app import Relay
from relay.errors import RelayError
from relay.source.install import install
from relay.state.stability import State
from tests.support import (
    HINTS_ONLY,
    RANDOM_WRITES,
    eventually,
    execute,
    hint_log,
    hints_only_config,
    reads,
    reads_completed,
    relay_config,
    running_relay,
    sample,
    settled,
    transitions,
    truth,
)


async def test_concurrent_finish_and_start_ends_processing(db_dsn: str) -> None:
    """T1 finishes the last active job while T2 starts one; T2 commits first.

    The seed's triggers compute the state inside each transaction: T2 (committing first)
    says processing, T1 (last) says stable, and the seed reports stable for good.
    The truth is processing.
    """
    await execute(
        db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('old', 'analysing_data')"
    )
    async with running_relay(hints_only_config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        async with hint_log(relay, db_dsn) as hints:
            with transitions(relay) as seen:
                t1 = await psycopg.AsyncConnection.connect(db_dsn)
                t2 = await psycopg.AsyncConnection.connect(db_dsn)
                try:
                    await t1.execute(
                        "UPDATE public.import_job SET state = 'finished' WHERE slug = 'old'"
                    )
                    await t2.execute(
                        "INSERT INTO public.import_job (slug, state) "
                        "VALUES ('new', 'preparing_data')"
                    )
                    await t2.commit()
                    await t1.commit()
                finally:
                    await t1.close()
                    await t2.close()
                assert await truth(db_dsn) is False
                # Every notification handled, and the truth read after them.
                await hints.caught_up()
        assert '{"table":"import_job"}' in hints.payloads, "the commits hinted"
        assert seen == [], "the relay left processing (if only for a moment)"
        assert relay.stability.current.state is State.PROCESSING


async def test_concurrent_finishes_of_the_last_two_jobs_end_stable(db_dsn: str) -> None:
    """Each transaction alone still sees the other's job active; together they end it all."""
    await execute(
        db_dsn,
        "INSERT INTO public.import_job (slug, state) VALUES ('a', 'analysing_data'), "
        "('b', 'processing_data')",
    )
    async with running_relay(hints_only_config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        t1 = await psycopg.AsyncConnection.connect(db_dsn)
        t2 = await psycopg.AsyncConnection.connect(db_dsn)
        try:
            await t1.execute("UPDATE public.import_job SET state = 'finished' WHERE slug = 'a'")
            await t2.execute("UPDATE public.import_job SET state = 'failed' WHERE slug = 'b'")
            await t1.commit()
            await t2.commit()
        finally:
            await t1.close()
            await t2.close()
        await settled(relay, db_dsn)
        assert relay.stability.current.state is State.STABLE


async def _random_transaction(dsn: str, rng: random.Random, gate: asyncio.Event) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        try:
            for _ in range(rng.randint(1, 3)):
                statement = rng.choice(RANDOM_WRITES).format(slug=f"s{rng.getrandbits(40)}")
                await conn.execute(statement)
        except psycopg.errors.DeadlockDetected:
            await conn.rollback()  # PostgreSQL chose this one; the others go on
            return
        await gate.wait()  # transactions run their statements before the first commits
        await asyncio.sleep(rng.random() * 0.02)
        if rng.random() < 0.1:
            await conn.rollback()
        else:
            await conn.commit()


async def test_random_concurrent_transactions_settle_to_the_truth(db_dsn: str) -> None:
    rng = random.Random(20261130)
    async with running_relay(hints_only_config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.stable is not None)
        for _round in range(25):
            gate = asyncio.Event()
            workers = [
                asyncio.create_task(_random_transaction(db_dsn, rng, gate))
                for _ in range(rng.randint(2, 8))
            ]
            await asyncio.sleep(0.05)
            gate.set()
            await asyncio.gather(*workers)
            await settled(relay, db_dsn)
            # Finish everything now and then, so both states are visited often.
            if rng.random() < 0.4:
                await execute(
                    db_dsn,
                    "UPDATE public.import_job SET state = 'finished'",
                    "UPDATE worker.tasks SET state = 'completed'",
                )
                await settled(relay, db_dsn)
                assert relay.stability.current.state is State.STABLE


async def _thousand_commit_burst(dsn: str) -> None:
    """1,001 commits, each changing an import job's activeness, pipelined; ends processing."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with conn.pipeline() as pipeline:
            # A sync point after each statement: each is its own committed transaction.
            for i in range(500):
                await conn.execute(
                    "INSERT INTO public.import_job (slug, state) VALUES (%s, 'approved')",
                    (f"burst-{i}",),
                )
                await pipeline.sync()
                await conn.execute(
                    "UPDATE public.import_job SET state = 'finished' WHERE slug = %s",
                    (f"burst-{i}",),
                )
                await pipeline.sync()
        await conn.execute(
            "INSERT INTO public.import_job (slug, state) VALUES ('last', 'processing_data')"
        )


def _hints(relay: Relay) -> float:
    return sample(relay, "relay_notifications_total", channel="system_stability")


async def test_thousand_commit_burst_without_holds_coalesces_hints(db_dsn: str) -> None:
    config = hints_only_config(db_dsn, hold_when_busy=False)
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        before, hints_before = reads(relay), _hints(relay)
        await _thousand_commit_burst(db_dsn)
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        await eventually(lambda: _hints(relay) - hints_before >= 1001)
        # Every hint is in: at most the read answering the last one is still to begin, and
        # the relay gets to the end's truth on its own.
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        queries = reads(relay) - before + 1  # + the read that may be still to begin
        with transitions(relay) as seen:
            await reads_completed(relay, 2, hint_dsn=db_dsn)
        assert seen == [], "the state moved after the burst's end was read"
        assert relay.stability.current.state is State.PROCESSING
        assert 1 <= queries <= 100, f"{queries} queries for 1,001 hints"


async def test_thousand_commit_burst_takes_a_hold_and_ends_right(db_dsn: str) -> None:
    """Hints faster than reads: the relay holds, writers stop hinting, the end is right."""
    async with running_relay(hints_only_config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        hints_before = _hints(relay)
        await _thousand_commit_burst(db_dsn)
        # The relay polls (writers skip their hints): a read begun after the last commit
        # is over without any hint of ours.
        await reads_completed(relay, 1)
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        assert sample(relay, "relay_hold_changes_total", action="taken") >= 1
        # The bulk of the burst was committed during the hold, without a hint.
        assert _hints(relay) - hints_before < 500
        with transitions(relay) as seen:
            await reads_completed(relay, 3, hint_dsn=db_dsn)
        assert seen == [], "the state moved after the burst's end was read"
        assert relay.stability.current.state is State.PROCESSING


async def test_a_database_installed_with_another_channel_hints_on_it(db_dsn: str) -> None:
    await install(db_dsn, demo_schema=True, channel="stability_custom", park=False)
    config = relay_config(
        db_dsn,
        database={**HINTS_ONLY, "channel": "stability_custom"},
        stability={"reconcile_interval": "60s", "hold_when_busy": False},
    )
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        job = "INSERT INTO public.import_job (slug, state) VALUES ('a', 'approved')"
        await execute(db_dsn, job)
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        notifications = "relay_notifications_total"
        assert sample(relay, notifications, channel="stability_custom") >= 1
        assert sample(relay, notifications, channel="system_stability") == 0


async def test_an_invalid_channel_is_refused_before_connecting() -> None:
    with pytest.raises(RelayError, match="invalid channel name"):
        await install("host=nowhere.invalid", channel="x'; DROP TABLE y; --")
