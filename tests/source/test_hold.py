"""The hold: writers skip their hints while a relay polls, and no commit is missed.

The reconcile and heartbeat are pushed far out, so a missed commit would stay missed for a
minute: what these tests see within seconds is the hold protocol alone (sql/hold.sql).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import psycopg
import pytest
from psycopg import sql

from relay.app import Relay
from relay.state.stability import State
from tests.support import (
    RANDOM_WRITES,
    eventually,
    execute,
    hint_log,
    hints_only_config,
    reads_completed,
    running_relay,
    sample,
    settled,
    transitions,
)

TABLE_HINTS = {'{"table":"import_job"}', '{"table":"tasks"}', '{"table":"command_registry"}'}


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
    """Take a hold as a relay does (request, then confirm), or release it."""
    if held:
        await execute(dsn, "SELECT public.system_stability_request_hold()")
        await execute(dsn, "SELECT public.system_stability_confirm_hold()")
    else:
        await execute(dsn, "SELECT public.system_stability_release_hold()")


def polling(relay: Relay) -> bool:
    return bool(sample(relay, "relay_polling"))


def holds(relay: Relay, action: str) -> float:
    """Holds the relay took (``taken``) or released (``released``)."""
    return sample(relay, "relay_hold_changes_total", action=action)


def drain_waiting(relay: Relay) -> float:
    return sample(relay, "relay_drain_waiting")


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
        running_relay(hints_only_config(db_dsn, hold_release_after="60s")) as relay,
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
        running_relay(hints_only_config(db_dsn, hold_release_after="0.3s")) as relay,
        collecting_hints(db_dsn) as hints,
    ):
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        await set_hold(db_dsn, True)
        await eventually(lambda: polling(relay))
        async with await psycopg.AsyncConnection.connect(db_dsn) as writer:
            await writer.execute("UPDATE public.import_job SET state = 'finished'")
            # The relay sees nothing change and ends the hold; the writer is still open.
            await eventually(lambda: flag_is(db_dsn, 0))
            # Counted once the release's round trip returns, a moment after the flag is 0.
            await eventually(lambda: holds(relay, "released") >= 1)
            # The drain begins (it waits for the writer) and goes on: the relay keeps reading
            # on its own, five reads and more, and nothing changes.
            await eventually(lambda: drain_waiting(relay) >= 1)
            with transitions(relay) as seen:
                await reads_completed(relay, 5)
            assert polling(relay), "the relay stopped polling with a skipped commit in flight"
            assert drain_waiting(relay) >= 1
            assert seen == []
            assert relay.stability.current.state is State.PROCESSING
            await writer.commit()
        await eventually(lambda: relay.stability.current.state is State.STABLE, timeout=3)
        await eventually(lambda: not polling(relay))
        assert hints.table_hints() == []


async def test_a_writer_newer_than_every_finished_transaction_is_waited_for(
    db_dsn: str,
) -> None:
    """The release commits slowly (a synchronous standby, say) after a writer skipped its hint.

    A snapshot lists running transactions only below its horizon (the newest finished id):
    here both the writer and the release are above it, so the drain commits an id of its own
    first. Without that it would find nothing to wait for and miss the writer's commit.
    """
    await execute(db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('a', 'approved')")
    config = hints_only_config(db_dsn, hold_when_busy=False, hold_release_after="60s")
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        await set_hold(db_dsn, True)
        await eventually(lambda: polling(relay))
        async with (
            await psycopg.AsyncConnection.connect(db_dsn) as writer,
            await psycopg.AsyncConnection.connect(db_dsn) as releaser,
        ):
            await writer.execute("UPDATE public.import_job SET state = 'finished'")
            await releaser.execute("SELECT public.system_stability_release_hold()")
            # The relay reads the flag clear and drains: it waits for both transactions.
            await eventually(lambda: drain_waiting(relay) >= 2)
            await writer.commit()
            await eventually(lambda: relay.stability.current.state is State.STABLE, timeout=3)
            assert polling(relay), "the drain ended with the release still running"
            await releaser.commit()
        await eventually(lambda: not polling(relay))


async def test_hints_further_apart_than_reads_take_no_hold(db_dsn: str) -> None:
    async with running_relay(hints_only_config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        await eventually(lambda: not polling(relay))
        async with hint_log(relay, db_dsn) as hints:
            for i in range(4):  # one hint each, 0.3 s apart: each answered at once
                await execute(
                    db_dsn,
                    f"INSERT INTO public.import_job (slug, state) VALUES ('j{i}', 'approved')",
                )
                await asyncio.sleep(0.3)
            # Every hint dispatched (a hold is taken right then) and a read begun after them
            # is over.
            await hints.caught_up()
        assert hints.payloads.count('{"table":"import_job"}') == 4
        assert sample(relay, "relay_notifications_total", channel="system_stability") >= 4
        assert holds(relay, "taken") == 0
        assert not polling(relay)


async def test_a_relay_idle_for_long_gives_a_new_hold_its_full_quiet_period(
    db_dsn: str,
) -> None:
    """Not ending another relay's fresh hold at once (holds would flap, hints come back)."""
    config = hints_only_config(db_dsn, hold_when_busy=False, hold_release_after="1.5s")
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        await asyncio.sleep(2)  # idle for longer than the quiet period
        held_at = time.monotonic()
        await set_hold(db_dsn, True)
        await eventually(lambda: polling(relay))
        # Polled a few times: a relay that ended fresh holds at once would have ended this
        # one. Each check below holds only if made within the quiet period (never flaky: a
        # slow machine makes it vacuous, not wrong); the release decision comes 1.5 s after
        # the relay learnt of the hold, which was after held_at.
        await reads_completed(relay, 3)
        early = time.monotonic() - held_at < 1.5
        assert not (early and holds(relay, "released")), "a fresh hold ended at once"
        value = await flag(db_dsn)
        assert value == 1 or time.monotonic() - held_at >= 1.5
        await eventually(lambda: flag_is(db_dsn, 0), timeout=5)
        assert time.monotonic() - held_at >= 1.5, "released before a full quiet period"
        assert holds(relay, "released") >= 1


async def test_a_relay_that_connects_during_a_leftover_hold_polls_and_ends_it(
    db_dsn: str,
) -> None:
    await set_hold(db_dsn, True)  # as a relay that is gone left it
    await execute(db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('a', 'approved')")
    async with running_relay(hints_only_config(db_dsn, hold_release_after="0.3s")) as relay:
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
        async with running_relay(hints_only_config(db_dsn)) as relay:
            await eventually(lambda: relay.stability.current.state is State.PROCESSING)
            await writer.commit()
            await eventually(lambda: relay.stability.current.state is State.STABLE, timeout=3)


async def test_a_relay_follows_a_hold_it_did_not_take(db_dsn: str) -> None:
    follower_config = hints_only_config(db_dsn, hold_when_busy=False, hold_release_after="60s")
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
        assert holds(follower, "taken") == 0


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


async def _toggle_holds(dsn: str, rng: random.Random, stop: asyncio.Event) -> int:
    """A third party that takes, half-takes (request only) and ends holds at random; returns
    how many holds it ended."""
    released = 0
    while not stop.is_set():
        choice = rng.random()
        if choice < 0.2:
            await execute(dsn, "SELECT public.system_stability_request_hold()")
        else:
            await set_hold(dsn, choice < 0.6)
            released += choice >= 0.6
        await asyncio.sleep(rng.random() * 0.15)
    return released


async def test_random_transactions_with_holds_coming_and_going_settle_to_the_truth(
    db_dsn: str,
) -> None:
    rng = random.Random(20261130)
    taker_config = hints_only_config(db_dsn, hold_release_after="0.1s")
    follower_config = hints_only_config(db_dsn, hold_when_busy=False, hold_release_after="0.2s")
    async with running_relay(taker_config) as taker, running_relay(follower_config) as follower:
        relays = (taker, follower)
        for relay in relays:
            await eventually(lambda: relay.stability.current.stable is not None)  # noqa: B023
        ended = 0
        for _round in range(20):
            stop = asyncio.Event()
            toggler = asyncio.create_task(_toggle_holds(db_dsn, rng, stop))
            await asyncio.gather(
                *(_random_transaction(db_dsn, rng) for _ in range(rng.randint(2, 8)))
            )
            stop.set()
            ended += await toggler
            if rng.random() < 0.3:
                await execute(
                    db_dsn,
                    "UPDATE public.import_job SET state = 'finished'",
                    "UPDATE worker.tasks SET state = 'completed'",
                )
            for relay in relays:
                await settled(relay, db_dsn)
        # Holds came and went throughout: the relays took some, the third party ended many.
        taken = sum(holds(r, "taken") for r in relays)
        assert taken >= 1 and ended >= 5, (taken, ended)


@pytest.fixture
async def relay_login(db_dsn: str) -> AsyncIterator[str]:
    """A relay login in stability_relay, as the README tells operators to create one."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    role = sql.Identifier(name)
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE stability_relay").format(role))
        try:
            yield psycopg.conninfo.make_conninfo(db_dsn, user=name)
        finally:
            await admin.execute(sql.SQL("DROP ROLE {}").format(role))


@pytest.fixture
async def relay_login_without_holds(db_dsn: str, relay_login: str) -> AsyncIterator[str]:
    """A relay login whose group role lost EXECUTE on system_stability_request_hold()."""
    function = "FUNCTION public.system_stability_request_hold()"
    await execute(db_dsn, f"REVOKE EXECUTE ON {function} FROM stability_relay")
    try:
        yield relay_login
    finally:
        await execute(db_dsn, f"GRANT EXECUTE ON {function} TO stability_relay")


async def test_a_relay_that_may_not_hold_stays_exact_and_connected(
    db_dsn: str, relay_login_without_holds: str
) -> None:
    async with running_relay(hints_only_config(relay_login_without_holds)) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        async with (
            hint_log(relay, db_dsn) as hints,
            await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn,
        ):
            for i in range(200):  # hints faster than reads: the relay tries to hold
                state = "approved" if i % 2 == 0 else "finished"
                await conn.execute(
                    "INSERT INTO public.import_job (slug, state) VALUES (%s, %s)",
                    (f"s{i}", state),
                )
            await conn.execute("UPDATE public.import_job SET state = 'finished'")
            # Every hint dispatched (each try to hold came and went) and the end read.
            await hints.caught_up()
        # One per approved job and the final update; a finished job is no row an activity
        # sees, and sends none.
        assert hints.payloads.count('{"table":"import_job"}') == 101, "no hint was skipped"
        assert relay.stability.current.state is State.STABLE
        assert holds(relay, "taken") == 0
        assert sample(relay, "relay_reconnects_total") == 0
        assert await flag(db_dsn) != 1


async def test_a_relay_that_cannot_read_the_flag_polls_as_if_held(
    db_dsn: str, relay_login: str
) -> None:
    """PostgreSQL 18 reads NULL without SELECT on the sequence; writers may still skip."""
    await execute(db_dsn, "REVOKE SELECT ON SEQUENCE public.system_stability_hold FROM PUBLIC")
    await execute(db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('a', 'approved')")
    async with running_relay(hints_only_config(relay_login, hold_release_after="60s")) as relay:
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        assert polling(relay)
        await set_hold(db_dsn, True)  # the superuser's writes below skip their hint
        await execute(db_dsn, "UPDATE public.import_job SET state = 'finished'")
        await eventually(lambda: relay.stability.current.state is State.STABLE, timeout=3)


async def test_a_relay_that_stops_parks_the_flag_so_writers_stay_quiet(db_dsn: str) -> None:
    """Nothing listens once it is gone; the next relay to start polls, ends it and drains."""
    async with running_relay(hints_only_config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        await eventually(lambda: not polling(relay))
        assert await flag(db_dsn) == 0
    assert await flag(db_dsn) == 1
    await execute(db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('a', 'approved')")
    async with running_relay(hints_only_config(db_dsn, hold_release_after="0.3s")) as relay:
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        await eventually(lambda: flag_is(db_dsn, 0), timeout=5)
        await execute(db_dsn, "UPDATE public.import_job SET state = 'finished'")
        await eventually(lambda: relay.stability.current.state is State.STABLE, timeout=3)


async def test_a_relay_that_stops_tells_the_others_before_writers_go_quiet(db_dsn: str) -> None:
    """The park is announced: a relay still running polls, and misses nothing."""
    config = hints_only_config(db_dsn, hold_release_after="60s")
    async with running_relay(config) as staying:
        await eventually(lambda: staying.stability.current.state is State.STABLE)
        async with running_relay(config) as leaving:
            await eventually(lambda: leaving.stability.current.state is State.STABLE)
        assert await flag(db_dsn) == 1
        await eventually(lambda: polling(staying))
        await execute(
            db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('a', 'approved')"
        )
        await eventually(lambda: staying.stability.current.state is State.PROCESSING, timeout=3)


async def test_a_relay_that_may_not_hold_ends_a_hold_it_was_in_when_it_stops(
    db_dsn: str, relay_login_without_holds: str
) -> None:
    """It cannot park; writers must not be left skipping their hints."""
    config = hints_only_config(relay_login_without_holds, hold_release_after="60s")
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        await set_hold(db_dsn, True)
        await eventually(lambda: polling(relay))
        assert await flag(db_dsn) == 1
    assert await flag(db_dsn) == 0


async def test_a_relay_draining_behind_a_long_transaction_still_takes_holds(
    db_dsn: str,
) -> None:
    """An idle session's open transaction keeps the first drain waiting; hints still stop."""
    async with await psycopg.AsyncConnection.connect(db_dsn) as idle:
        await idle.execute("SELECT pg_current_xact_id()")  # an id, then idle in transaction
        async with running_relay(hints_only_config(db_dsn, hold_release_after="60s")) as relay:
            await eventually(lambda: relay.stability.current.state is State.STABLE)
            await eventually(lambda: drain_waiting(relay) >= 1)
            assert polling(relay)
            async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
                for i in range(60):  # hints across many reads, faster than reads
                    await conn.execute(
                        "INSERT INTO public.import_job (slug, state) VALUES (%s, 'approved')",
                        (f"s{i}",),
                    )
                    await asyncio.sleep(0.01)
            assert holds(relay, "taken") >= 1
        await idle.rollback()
