"""The hold: writers skip their hints while a relay polls, and no commit is missed.

The reconcile and heartbeat are pushed far out, so a missed commit would stay missed for a
minute: what these tests see within seconds is the hold protocol alone (sql/stability.sql).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from relay.app import Relay
from relay.config import Config
from relay.stability import State
from tests.support import (
    RANDOM_WRITES,
    eventually,
    execute,
    relay_config,
    running_relay,
    truth,
)

HINTS_ONLY = {"heartbeat_interval": "60s", "heartbeat_timeout": "5s"}
TABLE_HINTS = {'{"table":"import_job"}', '{"table":"tasks"}', '{"table":"command_registry"}'}


def hold_config(dsn: str, **stability: Any) -> Config:
    return relay_config(
        dsn, database=HINTS_ONLY, stability={"reconcile_interval": "60s", **stability}
    )


async def flag(dsn: str) -> int | None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT pg_sequence_last_value('public.system_stability_hold'::regclass)"
        )
        row = await cursor.fetchone()
        assert row is not None
        value: int | None = row[0]
        return value


async def flag_is(dsn: str, value: int) -> bool:
    return await flag(dsn) == value


async def set_hold(dsn: str, held: bool) -> None:
    await execute(dsn, f"SELECT public.system_stability_set_hold({str(held).lower()})")


def polling(relay: Relay) -> bool:
    return bool(relay.metrics.polling._value.get())


async def settled(relay: Relay, dsn: str, timeout: float = 5.0) -> None:
    expected = State.from_truth(await truth(dsn))
    await eventually(lambda: relay.stability.current.state is expected, timeout=timeout)


class Hints:
    """A LISTENing connection that collects every payload on the stability channel."""

    def __init__(self) -> None:
        self.payloads: list[str] = []

    def table_hints(self) -> list[str]:
        return [p for p in self.payloads if p in TABLE_HINTS]


@asynccontextmanager
async def collecting_hints(dsn: str) -> AsyncIterator[Hints]:
    hints = Hints()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("LISTEN system_stability")

        async def collect() -> None:
            async with aclosing(conn.notifies()) as notifies:
                async for note in notifies:
                    hints.payloads.append(note.payload)

        task = asyncio.create_task(collect())
        try:
            yield hints
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_writes_during_a_hold_send_no_hints_and_the_relay_follows_them(
    db_dsn: str,
) -> None:
    async with (
        running_relay(hold_config(db_dsn, hold_release_after="60s")) as relay,
        collecting_hints(db_dsn) as hints,
    ):
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        await set_hold(db_dsn, True)
        await eventually(lambda: polling(relay))
        for i in range(5):
            await execute(
                db_dsn, f"INSERT INTO public.import_job (slug, state) VALUES ('j{i}', 'approved')"
            )
            await eventually(lambda: relay.stability.current.state is State.PROCESSING)
            await execute(db_dsn, "UPDATE public.import_job SET state = 'finished'")
            await eventually(lambda: relay.stability.current.state is State.STABLE)
        assert hints.table_hints() == []
        assert hints.payloads == ['{"hold":true}']


async def test_a_writer_that_saw_the_hold_and_commits_after_its_release_is_not_missed(
    db_dsn: str,
) -> None:
    """The drain: the writer skipped its hint while held; it commits once the hold is over.

    Without the drain the relay would read the flag clear, stop polling and wait for hints
    that never come: it would say processing for a minute (the reconcile here).
    """
    await execute(db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('a', 'approved')")
    async with (
        running_relay(hold_config(db_dsn, hold_release_after="0.3s")) as relay,
        collecting_hints(db_dsn) as hints,
    ):
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        await set_hold(db_dsn, True)
        await eventually(lambda: polling(relay))
        async with await psycopg.AsyncConnection.connect(db_dsn) as writer:
            await writer.execute("UPDATE public.import_job SET state = 'finished'")
            # The relay sees nothing change and ends the hold; the writer is still open.
            await eventually(lambda: flag_is(db_dsn, 0))
            assert relay.metrics.hold_changes.labels("released")._value.get() >= 1
            await asyncio.sleep(0.3)
            assert polling(relay), "the relay stopped polling with a skipped commit in flight"
            assert relay.stability.current.state is State.PROCESSING
            await writer.commit()
        await eventually(lambda: relay.stability.current.state is State.STABLE, timeout=3)
        await eventually(lambda: not polling(relay))
        assert hints.table_hints() == []


async def test_a_relay_that_connects_during_a_leftover_hold_polls_and_ends_it(
    db_dsn: str,
) -> None:
    await set_hold(db_dsn, True)  # as a relay that is gone left it
    await execute(db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('a', 'approved')")
    async with running_relay(hold_config(db_dsn, hold_release_after="0.3s")) as relay:
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        await execute(db_dsn, "UPDATE public.import_job SET state = 'finished'")
        await eventually(lambda: relay.stability.current.state is State.STABLE, timeout=3)
        await eventually(lambda: not polling(relay))
        assert await flag(db_dsn) == 0


async def test_a_relay_that_connects_just_after_a_hold_ended_drains_it(db_dsn: str) -> None:
    """A writer skipped its hint during a hold that ended before the relay connected."""
    await execute(db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('a', 'approved')")
    await set_hold(db_dsn, True)
    async with await psycopg.AsyncConnection.connect(db_dsn) as writer:
        await writer.execute("UPDATE public.import_job SET state = 'finished'")
        await set_hold(db_dsn, False)
        async with running_relay(hold_config(db_dsn)) as relay:
            await eventually(lambda: relay.stability.current.state is State.PROCESSING)
            await writer.commit()
            await eventually(lambda: relay.stability.current.state is State.STABLE, timeout=3)


async def test_a_relay_follows_a_hold_it_did_not_take(db_dsn: str) -> None:
    follower_config = hold_config(db_dsn, hold_when_busy=False, hold_release_after="60s")
    async with running_relay(follower_config) as follower:
        await eventually(lambda: follower.stability.current.state is State.STABLE)
        await set_hold(db_dsn, True)
        await eventually(lambda: polling(follower))
        for _ in range(3):
            await execute(
                db_dsn,
                "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')",
            )
            await eventually(lambda: follower.stability.current.state is State.PROCESSING)
            await execute(db_dsn, "UPDATE worker.tasks SET state = 'completed'")
            await eventually(lambda: follower.stability.current.state is State.STABLE)
        assert follower.metrics.hold_changes.labels("taken")._value.get() == 0


async def _random_transaction(dsn: str, rng: random.Random) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        try:
            for _ in range(rng.randint(1, 3)):
                await conn.execute(rng.choice(RANDOM_WRITES).format(slug=uuid.uuid4().hex))
                await asyncio.sleep(rng.random() * 0.05)
        except psycopg.errors.DeadlockDetected:
            await conn.rollback()
            return
        if rng.random() < 0.1:
            await conn.rollback()
        else:
            await conn.commit()


async def _toggle_holds(dsn: str, rng: random.Random, stop: asyncio.Event) -> None:
    """A third party that takes and ends holds at random moments."""
    while not stop.is_set():
        await set_hold(dsn, rng.random() < 0.5)
        await asyncio.sleep(rng.random() * 0.15)


async def test_random_transactions_with_holds_coming_and_going_settle_to_the_truth(
    db_dsn: str,
) -> None:
    rng = random.Random(20261130)
    taker_config = hold_config(db_dsn, hold_release_after="0.1s")
    follower_config = hold_config(db_dsn, hold_when_busy=False, hold_release_after="0.2s")
    async with running_relay(taker_config) as taker, running_relay(follower_config) as follower:
        relays = (taker, follower)
        for relay in relays:
            await eventually(lambda: relay.stability.current.stable is not None)  # noqa: B023
        for _round in range(20):
            stop = asyncio.Event()
            toggler = asyncio.create_task(_toggle_holds(db_dsn, rng, stop))
            await asyncio.gather(
                *(_random_transaction(db_dsn, rng) for _ in range(rng.randint(2, 8)))
            )
            stop.set()
            await toggler
            if rng.random() < 0.3:
                await execute(
                    db_dsn,
                    "UPDATE public.import_job SET state = 'finished'",
                    "UPDATE worker.tasks SET state = 'completed'",
                )
            for relay in relays:
                await settled(relay, db_dsn)
        taken = sum(r.metrics.hold_changes.labels("taken")._value.get() for r in relays)
        released = sum(r.metrics.hold_changes.labels("released")._value.get() for r in relays)
        assert taken >= 1 and released >= 5, (taken, released)


@pytest.fixture
async def relay_login_without_holds(db_dsn: str) -> AsyncIterator[str]:
    """A relay login whose group role lost EXECUTE on system_stability_set_hold()."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    role = sql.Identifier(name)
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE stability_relay").format(role))
        await admin.execute(
            "REVOKE EXECUTE ON FUNCTION public.system_stability_set_hold(boolean) "
            "FROM stability_relay"
        )
        try:
            yield psycopg.conninfo.make_conninfo(db_dsn, user=name)
        finally:
            await admin.execute(
                "GRANT EXECUTE ON FUNCTION public.system_stability_set_hold(boolean) "
                "TO stability_relay"
            )
            await admin.execute(sql.SQL("DROP ROLE {}").format(role))


async def test_a_relay_that_may_not_hold_stays_exact_and_connected(
    db_dsn: str, relay_login_without_holds: str
) -> None:
    async with running_relay(hold_config(relay_login_without_holds)) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
            for i in range(200):  # hints faster than reads: the relay tries to hold
                state = "approved" if i % 2 == 0 else "finished"
                await conn.execute(
                    "INSERT INTO public.import_job (slug, state) VALUES (%s, %s)",
                    (f"s{i}", state),
                )
            await conn.execute("UPDATE public.import_job SET state = 'finished'")
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        assert relay.metrics.hold_changes.labels("taken")._value.get() == 0
        assert relay.metrics.reconnects._value.get() == 0
        assert await flag(db_dsn) != 1
