"""check.py on a table activity that is its filter alone (``active_states: []``): no state
column is checked, and the read-cost advice is an index whose predicate is the filter, never
one on a "state" column the table does not have. The table is graphile-worker's jobs table's
shape (its columns, its generated is_available), written here from its migration 000011."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from relay.config.activities import Activity
from relay.config.profiles import load_profile
from relay.source.activities.check import check_activities
from relay.source.activities.indexes import index_suggestion, unaliased
from relay.source.activities.readcost import READ_SCAN_ROWS, ReadScan, read_scans
from relay.source.install import suggested_indexes
from tests.support import fresh_database

PROFILE = load_profile("graphile_worker").activities[0]
JOBS = """
CREATE SCHEMA gw;
CREATE TABLE gw.jobs (
    id bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
    task_id int NOT NULL,
    run_at timestamptz NOT NULL DEFAULT now(),
    attempts smallint NOT NULL DEFAULT 0,
    max_attempts smallint NOT NULL DEFAULT 25,
    locked_at timestamptz,
    is_available boolean GENERATED ALWAYS AS (locked_at IS NULL AND attempts < max_attempts)
        STORED NOT NULL
)
"""
# Failed for good (no attempt left, unlocked): the rows that pile up; then one waiting job.
FILLED = (
    "INSERT INTO gw.jobs (task_id, attempts, max_attempts)"
    " SELECT 1, 3, 3 FROM generate_series(1, {rows})",
    "INSERT INTO gw.jobs (task_id) VALUES (1)",
    "ANALYZE gw.jobs",
)
STATEMENT = (
    'CREATE INDEX CONCURRENTLY "jobs_jobs_active_idx" ON "gw"."jobs" ("is_available") '
    "WHERE (is_available OR locked_at IS NOT NULL);"
)


def activity(condition: str) -> Activity:
    return Activity(name="jobs", label="Jobs", table="gw.jobs", active_states=(), filter=condition)


@pytest.fixture
async def jobs_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    async with fresh_database(pg_admin_dsn, "filterform") as dsn:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(JOBS)
            for statement in FILLED:
                await conn.execute(statement.format(rows=READ_SCAN_ROWS))
        yield dsn


async def connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


def test_the_profile_s_suggestion_is_its_filter_not_a_state_column() -> None:
    statement, note = index_suggestion(PROFILE)
    assert statement == (
        'CREATE INDEX CONCURRENTLY "_private_jobs_jobs_active_idx" ON '
        '"graphile_worker"."_private_jobs" ("is_available") '
        "WHERE (is_available OR locked_at IS NOT NULL);"
    )
    assert '"state"' not in statement
    assert note is not None and "no index serves the read" in note


def test_the_alias_is_dropped_outside_quotes_only() -> None:
    assert unaliased("t.locked_at IS NOT NULL\n   OR t.kind = 't.x'") == (
        "locked_at IS NOT NULL OR kind = 't.x'"
    )
    assert unaliased('t."Weird" > 0 AND at.x = 1') == '"Weird" > 0 AND at.x = 1'


def test_a_filter_with_a_subquery_gets_no_index() -> None:
    refused = activity("EXISTS (SELECT 1 FROM gw.holds AS h WHERE h.job_id = t.id)")
    statement, note = index_suggestion(refused)
    assert statement == ""
    assert note is not None and "holds a subquery" in note
    scan = ReadScan("jobs", "gw.jobs", 200_000, "pg_class.reltuples", "Seq Scan", "", note)
    assert "No index serves it: its filter" in " ".join(scan.describe().split())
    printed = suggested_indexes([refused])
    assert "-- suggested: none" in printed and "holds a subquery" in printed
    assert "-- suggested: \n" not in printed + "\n"


async def test_no_state_column_is_checked_and_the_filter_compiles(jobs_dsn: str) -> None:
    async with await connect(jobs_dsn) as conn:
        assert (
            await check_activities(
                conn, [activity(PROFILE.filter or "")], snippets=True, role="postgres"
            )
            == []
        )


async def test_a_large_table_is_warned_about_until_the_index_exists(jobs_dsn: str) -> None:
    """The suggestion as printed, executed as is: then the read is an Index Only Scan of it,
    and nothing is said."""
    profile_like = activity(PROFILE.filter or "")
    async with await connect(jobs_dsn) as conn:
        [scan] = await read_scans(conn, [profile_like])
        assert scan.rows == READ_SCAN_ROWS + 1
        assert "Seq Scan on gw.jobs" in scan.plan
        assert (scan.create_index, scan.filter_left_out) == (STATEMENT, None)
        await conn.execute(scan.create_index.encode())
        assert await read_scans(conn, [profile_like]) == []


async def test_graphile_s_own_spelling_is_not_served_by_its_index(jobs_dsn: str) -> None:
    """Why the profile's filter goes through is_available: PostgreSQL has no statistics for
    attempts < max_attempts (two columns), assumes a third of the rows match, and keeps its
    Seq Scan under LIMIT 1 even with the index whose predicate is the filter. The advice
    says so: the warning stays once the index exists."""
    spelled = activity("t.locked_at IS NOT NULL OR t.attempts < t.max_attempts")
    async with await connect(jobs_dsn) as conn:
        [scan] = await read_scans(conn, [spelled])
        assert scan.create_index == (
            'CREATE INDEX CONCURRENTLY "jobs_jobs_active_idx" ON "gw"."jobs" ("locked_at") '
            "WHERE (locked_at IS NOT NULL OR attempts < max_attempts);"
        )
        await conn.execute(scan.create_index.encode())
        [again] = await read_scans(conn, [spelled])
        assert "Seq Scan on gw.jobs" in again.plan


async def test_a_filter_postgresql_refuses_in_a_predicate_gets_no_index(jobs_dsn: str) -> None:
    due = activity("t.run_at <= now()")
    async with await connect(jobs_dsn) as conn:
        [scan] = await read_scans(conn, [due])
        assert scan.create_index == ""
        assert scan.filter_left_out is not None
        assert "IMMUTABLE" in scan.filter_left_out
        assert "No index serves it" in " ".join(scan.describe().split())


async def test_a_role_that_may_not_plan_it_is_answered_from_the_catalog(jobs_dsn: str) -> None:
    """graphile's own partial index (is_available = true) does not serve the read: it holds
    the available jobs only, not the locked ones; the suggested one does."""
    role = f"blind_{uuid.uuid4().hex[:8]}"
    profile_like = activity(PROFILE.filter or "")
    async with await connect(jobs_dsn) as conn:
        await conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        try:
            await conn.execute(
                "CREATE INDEX jobs_main_index ON gw.jobs (run_at) WHERE (is_available = true)"
            )
            await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            [scan] = await read_scans(conn, [profile_like])
            assert "judged from the catalog" in scan.plan
            assert scan.create_index == STATEMENT
            await conn.execute("RESET ROLE")
            await conn.execute(STATEMENT.encode())
            await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            assert await read_scans(conn, [profile_like]) == []
        finally:
            await conn.execute("RESET ROLE")
            await conn.execute("DROP INDEX IF EXISTS gw.jobs_jobs_active_idx")
            await conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
