"""The hold (sql/hold.sql) against a real PostgreSQL: request, confirm and release, the hold
lock, and what writers read of the flag."""

from __future__ import annotations

import asyncio
from typing import LiteralString

import psycopg
import pytest
from psycopg import sql

from tests.source.sql_support import (
    COMMAND_REGISTRY_HINT,
    HELD,
    HOLD_LOCK,
    HOLD_TRUE,
    IMPORT_JOB_HINT,
    NO_HOLD,
    REQUESTED,
    TASKS_HINT,
    WRITES,
    Conn,
    HintsAfter,
    RowsAndHintsAfter,
    confirm_hold,
    hold_flag,
    release_hold,
    request_hold,
    seed,
    set_flag,
    take_hold,
)

# The flag reads 0 (no hold), 2 (requested) or 1 (held). Writers skip their hint only on 1.
# A relay takes the hold in two steps, request (2, announced) and confirm (1), and ends it
# with release (0, unannounced).

# One write per table, for the tests of the hold.
ONE_WRITE_PER_TABLE = [
    ("INSERT INTO worker.tasks (command, state) VALUES ('task_cleanup', 'pending')", TASKS_HINT),
    (
        "INSERT INTO public.import_job (slug, state)"
        " SELECT 'one-' || count(*), 'approved' FROM public.import_job",
        IMPORT_JOB_HINT,
    ),
    ("UPDATE worker.command_registry SET description = 'x'", COMMAND_REGISTRY_HINT),
]


@pytest.mark.parametrize(
    "statement", [pytest.param(write.values[0], id=write.id) for write in WRITES if write.values[1]]
)
async def test_no_write_statement_hints_while_the_hold_is_held(
    conn: Conn, hints_after: HintsAfter, statement: LiteralString
) -> None:
    await seed(conn)
    await take_hold(conn)
    assert await hints_after(statement) == []


async def test_a_hold_is_requested_announced_confirmed_and_released(
    conn: Conn, hints_after: HintsAfter, rows_and_hints_after: RowsAndHintsAfter
) -> None:
    await seed(conn)
    assert await hold_flag(conn) == NO_HOLD

    assert await hints_after("SELECT public.system_stability_request_hold()") == [HOLD_TRUE]
    assert await hold_flag(conn) == REQUESTED
    for statement, hint in ONE_WRITE_PER_TABLE:  # only 1 silences the writers
        assert await hints_after(statement) == [hint], statement

    assert await rows_and_hints_after("SELECT public.system_stability_confirm_hold()") == (
        [(True,)],
        [],
    )
    assert await hold_flag(conn) == HELD
    for statement, _ in ONE_WRITE_PER_TABLE:
        assert await hints_after(statement) == [], statement

    assert await hints_after("SELECT public.system_stability_release_hold()") == []
    assert await hold_flag(conn) == NO_HOLD
    for statement, hint in ONE_WRITE_PER_TABLE:
        assert await hints_after(statement) == [hint], statement


async def test_a_confirm_after_a_release_confirms_nothing(
    conn: Conn, hints_after: HintsAfter, rows_and_hints_after: RowsAndHintsAfter
) -> None:
    """Request, release, confirm: the released request does not become a hold."""
    await request_hold(conn)
    await release_hold(conn)
    assert await rows_and_hints_after("SELECT public.system_stability_confirm_hold()") == (
        [(False,)],
        [],
    )
    assert await hold_flag(conn) == NO_HOLD
    for statement, hint in ONE_WRITE_PER_TABLE:
        assert await hints_after(statement) == [hint], statement


async def test_a_request_while_held_keeps_the_hold_and_announces_it(
    conn: Conn, hints_after: HintsAfter
) -> None:
    await take_hold(conn)
    assert await hints_after("SELECT public.system_stability_request_hold()") == [HOLD_TRUE]
    assert await hold_flag(conn) == HELD
    for statement, _ in ONE_WRITE_PER_TABLE:
        assert await hints_after(statement) == [], statement
    # A second confirm finds no request: the hold stays as it is.
    assert await confirm_hold(conn) is False
    assert await hold_flag(conn) == HELD


async def test_a_confirm_without_a_request_confirms_nothing(conn: Conn) -> None:
    assert await confirm_hold(conn) is False
    assert await hold_flag(conn) == NO_HOLD


async def _wait_until_waiting_for_an_advisory_lock(conn: Conn, pid: int) -> None:
    for _ in range(500):
        cursor = await conn.execute(
            "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
        if await cursor.fetchone() == ("Lock", "advisory"):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"backend {pid} did not wait for an advisory lock")


@pytest.mark.parametrize(
    ("function", "flag_before", "flag_after", "result"),
    [
        ("system_stability_request_hold", NO_HOLD, REQUESTED, None),
        ("system_stability_confirm_hold", REQUESTED, HELD, True),
        ("system_stability_release_hold", HELD, NO_HOLD, None),
    ],
)
async def test_the_hold_functions_wait_for_the_hold_lock_before_touching_the_flag(
    db_dsn: str,
    conn: Conn,
    function: str,
    flag_before: int,
    flag_after: int,
    result: bool | None,
) -> None:
    """Request, confirm and release serialise on one advisory lock, taken first."""
    await set_flag(conn, flag_before)
    call = sql.SQL("SELECT {}()").format(sql.Identifier("public", function))
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as caller:
        # Inner, so that a failing test releases the lock before the caller's connection closes.
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as blocker:
            await blocker.execute("BEGIN")
            await blocker.execute("SELECT pg_advisory_xact_lock(%s)", (HOLD_LOCK,))
            calling = asyncio.create_task(caller.execute(call))
            await _wait_until_waiting_for_an_advisory_lock(conn, caller.info.backend_pid)
            assert not calling.done()
            assert await hold_flag(conn) == flag_before
            await blocker.execute("COMMIT")
            cursor = await asyncio.wait_for(calling, timeout=10.0)
        if result is not None:
            assert await cursor.fetchone() == (result,)
    assert await hold_flag(conn) == flag_after


async def test_a_confirm_waiting_for_a_release_confirms_nothing(db_dsn: str, conn: Conn) -> None:
    """The interleaving the lock is for: a confirm that reads the flag while a release is
    in progress waits for it, then finds no request to confirm."""
    await request_hold(conn)
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as confirmer:
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as releaser:
            await releaser.execute("BEGIN")
            await release_hold(releaser)
            confirming = asyncio.create_task(confirm_hold(confirmer))
            await _wait_until_waiting_for_an_advisory_lock(conn, confirmer.info.backend_pid)
            await releaser.execute("COMMIT")
            assert await asyncio.wait_for(confirming, timeout=10.0) is False
    assert await hold_flag(conn) == NO_HOLD


async def test_the_flag_is_not_transactional(
    db_dsn: str, conn: Conn, hints_after: HintsAfter
) -> None:
    """setval() takes effect at once and survives a rollback; the announcement goes out
    only with a commit. A request rolled back leaves 2, unannounced: writers go on hinting,
    and relays that read 2 poll (sql/hold.sql)."""
    write, hint = ONE_WRITE_PER_TABLE[0]
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as relay:
        await relay.execute("BEGIN")
        await request_hold(relay)
        assert await hold_flag(conn) == REQUESTED
        assert await hints_after("ROLLBACK", on=relay) == []
        assert await hold_flag(conn) == REQUESTED
        assert await hints_after(write) == [hint]

        await relay.execute("BEGIN")
        assert await confirm_hold(relay) is True
        assert await hints_after(write) == []
        assert await hints_after("ROLLBACK", on=relay) == []
    assert await hold_flag(conn) == HELD
    assert await hints_after(write) == []


async def test_a_writer_reads_the_flag_when_its_statement_runs_not_when_it_commits(
    db_dsn: str, conn: Conn, hints_after: HintsAfter
) -> None:
    """A write made while held and committed after the release is never hinted: why every
    relay drains after a hold (sql/hold.sql)."""
    insert = "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')"
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as writer:
        await writer.execute("BEGIN")
        await writer.execute(insert)
        await take_hold(conn)
        assert await hints_after("COMMIT", on=writer) == [TASKS_HINT]

        await writer.execute("BEGIN")
        await writer.execute(insert)
        await release_hold(conn)
        assert await hints_after("COMMIT", on=writer) == []


async def test_a_flag_that_was_never_set_does_not_hold(conn: Conn, hints_after: HintsAfter) -> None:
    """pg_sequence_last_value() returns NULL for a sequence never set: writers still hint
    (the relay polls on NULL), a request treats it as 0, a confirm finds no request."""
    await seed(conn)
    await take_hold(conn)
    await set_flag(conn, None)
    assert await hold_flag(conn) is None
    for statement, hint in ONE_WRITE_PER_TABLE:
        assert await hints_after(statement) == [hint], statement
    assert await confirm_hold(conn) is False
    assert await hold_flag(conn) is None
    assert await hints_after("SELECT public.system_stability_request_hold()") == [HOLD_TRUE]
    assert await hold_flag(conn) == REQUESTED
