"""Hints only for statements that change a row an activity can see, on plain and partitioned
tables (issue 20: idle workers must not keep the relay busy).

A plain table hints by statement triggers over their transition tables; a partitioned one by
row triggers with WHEN, which PostgreSQL clones to every partition, those created or attached
after install too. The relay below runs with heartbeat and reconcile a minute away, so a
write whose hint went missing would fail the test instead of being read late.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import psycopg
import pytest

from relay.config.activities import Activity
from relay.source.activities.hints import visible_rows
from relay.source.install import install
from relay.state.stability import State
from tests.support import (
    HINTS_ONLY,
    activities_truth,
    eventually,
    fresh_database,
    relay_config,
    running_relay,
    sample,
    transitions,
    truth,
)

CHANNEL = "system_stability"
HINT = '{"table":"job"}'
JOBS = {
    "name": "jobs",
    "label": "Jobs",
    "table": "q.job",
    "active_states": ["created", "active"],
}
SCHEMA = """
CREATE SCHEMA q;
CREATE TYPE q.job_state AS ENUM ('created', 'active', 'completed', 'failed');
"""
PLAIN = "CREATE TABLE q.job (name text NOT NULL, id int NOT NULL, state q.job_state NOT NULL)"
PARTITIONED = (
    PLAIN + " PARTITION BY LIST (name); CREATE TABLE q.job_a PARTITION OF q.job FOR VALUES IN ('a')"
)

Conn = psycopg.AsyncConnection[Any]


async def make_database(admin_dsn: str, table: str) -> AsyncIterator[str]:
    async with fresh_database(admin_dsn, "hints") as dsn:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(SCHEMA + table)
        await install(dsn, activities=[Activity.model_validate(JOBS)], park=False)
        yield dsn


@pytest.fixture
async def plain_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    async for dsn in make_database(pg_admin_dsn, PLAIN):
        yield dsn


@pytest.fixture
async def partitioned_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    async for dsn in make_database(pg_admin_dsn, PARTITIONED):
        yield dsn


async def hints_after(dsn: str, *statements: str) -> list[str]:
    """The hints the statements send (each in its own transaction): a listener on the channel
    reads up to a marker sent after the last commit (notifications come in commit order)."""
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as writer,
    ):
        await listener.execute(f"LISTEN {CHANNEL}")
        for statement in statements:
            await writer.execute(statement)
        await writer.execute("SELECT pg_notify(%s, 'marker')", [CHANNEL])
        hints: list[str] = []
        async with asyncio.timeout(10), aclosing(listener.notifies()) as notes:
            async for note in notes:
                if note.payload == "marker":
                    return hints
                hints.append(note.payload)
    raise AssertionError("the marker never came")


async def triggers(dsn: str) -> list[tuple[str, str, bool, bool]]:
    """(table, name, per row, a clone of the parent's) of our triggers."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT tgrelid::regclass::text, tgname, tgtype & 1 = 1, tgparentid <> 0"
            " FROM pg_trigger WHERE tgname LIKE 'system\\_stability\\_hint%' ORDER BY 1, 2"
        )
        return await cursor.fetchall()


# Writes that change no row an activity can see, on either kind of table: an idle worker's
# poll (no row), and rows that are finished before and after.
UNSEEN = [
    "UPDATE q.job SET state = 'active' WHERE false",
    "DELETE FROM q.job WHERE id < 0",
    "INSERT INTO q.job (name, id, state) VALUES ('a', 1, 'completed')",
    "UPDATE q.job SET state = 'failed' WHERE id = 1",
    "DELETE FROM q.job WHERE id = 1",
]
SEEN = [
    "INSERT INTO q.job (name, id, state) VALUES ('a', 2, 'created')",
    "UPDATE q.job SET state = 'active' WHERE id = 2",
    "UPDATE q.job SET state = 'completed' WHERE id = 2",
    "INSERT INTO q.job (name, id, state) VALUES ('a', 3, 'active')",
    "DELETE FROM q.job WHERE id = 3",
    "TRUNCATE q.job",
]


@pytest.fixture(params=["plain", "partitioned"])
async def either_dsn(request: pytest.FixtureRequest, pg_admin_dsn: str) -> AsyncIterator[str]:
    table = PLAIN if request.param == "plain" else PARTITIONED
    async for dsn in make_database(pg_admin_dsn, table):
        yield dsn


async def test_only_writes_that_change_a_visible_row_hint(either_dsn: str) -> None:
    for statement in UNSEEN:
        assert await hints_after(either_dsn, statement) == [], statement
    for statement in SEEN:
        assert await hints_after(either_dsn, statement) == [HINT], statement


async def test_install_chooses_the_triggers_by_the_table_s_kind(
    plain_dsn: str, partitioned_dsn: str
) -> None:
    """Statement triggers on a plain table; on a partitioned one, row triggers that each
    partition has a clone of, and the TRUNCATE statement trigger on the parent alone."""
    assert await triggers(plain_dsn) == [
        ("q.job", "system_stability_hint_delete", False, False),
        ("q.job", "system_stability_hint_insert", False, False),
        ("q.job", "system_stability_hint_truncate", False, False),
        ("q.job", "system_stability_hint_update", False, False),
    ]
    row = [
        (table, f"system_stability_hint_{event}", True, table != "q.job")
        for table in ("q.job", "q.job_a")
        for event in ("delete", "insert", "update")
    ]
    truncate = ("q.job", "system_stability_hint_truncate", False, False)
    assert sorted(await triggers(partitioned_dsn)) == sorted([*row, truncate])
    # A partition made later has its clones; installing again keeps them and adds nothing.
    async with await psycopg.AsyncConnection.connect(partitioned_dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE q.job_b PARTITION OF q.job FOR VALUES IN ('b')")
    later = [
        ("q.job_b", f"system_stability_hint_{e}", True, True)
        for e in ("delete", "insert", "update")
    ]
    assert sorted(await triggers(partitioned_dsn)) == sorted([*row, truncate, *later])
    await install(partitioned_dsn, activities=[Activity.model_validate(JOBS)], park=False)
    assert sorted(await triggers(partitioned_dsn)) == sorted([*row, truncate, *later])


async def test_the_relay_is_exact_on_hints_alone_with_partitions_made_after_install(
    partitioned_dsn: str,
) -> None:
    """pg-boss's shape: a LIST-partitioned job table, a partition created after install and
    one attached after install, writes that name the partition, a row moved between
    partitions through the parent, TRUNCATE of the parent."""
    dsn = partitioned_dsn
    # hold_release_after: the poll every session starts with ends soon (relay/source/hold.py).
    stability = {"reconcile_interval": "60s", "hold_release_after": "0.2s"}
    config = relay_config(dsn, activities=[JOBS], database=HINTS_ONLY, stability=stability)
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        running_relay(config) as relay,
    ):
        await conn.execute("CREATE TABLE q.job_b PARTITION OF q.job FOR VALUES IN ('b')")
        await conn.execute("CREATE TABLE q.job_c (LIKE q.job)")
        await conn.execute("ALTER TABLE q.job ATTACH PARTITION q.job_c FOR VALUES IN ('c')")
        await eventually(lambda: relay.stability.current.state is State.STABLE)

        def polling() -> bool:
            return bool(sample(relay, "relay_polling"))

        async def agreed(busy: bool) -> None:
            """Seen within 2 s: only a hint makes the relay read then (no poll, no hold)."""
            expected = State.PROCESSING if busy else State.STABLE
            await eventually(lambda: relay.stability.current.state is expected, timeout=2)
            assert await truth(dsn) is not busy
            assert await activities_truth(dsn) == {"jobs": busy}
            await eventually(lambda: not polling())

        steps = [
            # Written to the partition created after install, by its own name.
            ("INSERT INTO q.job_b (name, id, state) VALUES ('b', 1, 'created')", True),
            ("UPDATE q.job_b SET state = 'completed' WHERE id = 1", False),
            # The attached one.
            ("INSERT INTO q.job_c (name, id, state) VALUES ('c', 2, 'active')", True),
            ("DELETE FROM q.job_c WHERE id = 2", False),
            # Through the parent, moved from partition a to b, then finished in b.
            ("INSERT INTO q.job (name, id, state) VALUES ('a', 3, 'active')", True),
            ("UPDATE q.job SET name = 'b' WHERE id = 3", True),
            ("UPDATE q.job_b SET state = 'failed' WHERE id = 3", False),
            # Emptied by TRUNCATE of the parent.
            ("INSERT INTO q.job_c (name, id, state) VALUES ('c', 4, 'created')", True),
            ("TRUNCATE q.job", False),
        ]
        await eventually(lambda: not polling())
        with transitions(relay) as seen:
            for statement, busy in steps:
                await conn.execute(statement)
                await agreed(busy)
        assert [snapshot.state for snapshot in seen] == [State.PROCESSING, State.STABLE] * 4


def test_visible_rows_are_the_union_of_the_activities_reading_a_table() -> None:
    """Per table: the active states by state column, or every row (None) as soon as one
    activity reads it otherwise (its tables:, an expression, a filter alone)."""
    queued = Activity.model_validate({**JOBS, "name": "queued", "active_states": ["created"]})
    running = Activity.model_validate(
        {**JOBS, "name": "running", "active_states": ["active", "created"]}
    )
    by_kind = Activity.model_validate(
        {**JOBS, "name": "by_kind", "state_column": "kind", "active_states": ["x"]}
    )
    filtered = Activity.model_validate(
        {**JOBS, "name": "filtered", "active_states": [], "filter": "t.id > 0"}
    )
    expression = Activity.model_validate(
        {"name": "expr", "label": "E", "expression": "true", "tables": ["q.job"]}
    )
    reader = Activity.model_validate({**JOBS, "name": "reader", "tables": ["q.other"]})
    assert visible_rows([queued, running, by_kind]) == {
        "q.job": {"state": ("created", "active"), "kind": ("x",)}
    }
    assert visible_rows([queued, filtered]) == {"q.job": None}
    assert visible_rows([expression, queued]) == {"q.job": None}
    assert visible_rows([reader]) == {"q.job": {"state": ("created", "active")}, "q.other": None}


async def test_a_writer_may_hint_where_functions_are_not_executable_by_default(
    pg_admin_dsn: str,
) -> None:
    """Hardened databases revoke EXECUTE on new functions from PUBLIC: a writer that may write
    the table must still send its hint (hold.sql grants the notify function to PUBLIC)."""
    async with fresh_database(pg_admin_dsn, "hints") as dsn:
        writer_role = f"writer_{dsn.split('dbname=')[1].split()[0][-8:]}"
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC")
            await conn.execute(SCHEMA + PLAIN)
            await conn.execute(f"CREATE ROLE {writer_role} LOGIN")
            await conn.execute(f"GRANT USAGE ON SCHEMA q TO {writer_role}")
            await conn.execute(f"GRANT INSERT, UPDATE, DELETE ON q.job TO {writer_role}")
        try:
            await install(dsn, activities=[Activity.model_validate(JOBS)], park=False)
            # The writer's statement runs as the writer: its trigger calls the notify function.
            hints = await hints_after(dsn, f"SET ROLE {writer_role}", SEEN[0], "RESET ROLE")
            assert hints == [HINT]
        finally:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(f"DROP OWNED BY {writer_role}")
                await conn.execute(f"DROP ROLE {writer_role}")
