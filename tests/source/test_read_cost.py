"""Reads that stay cheap as tables grow: a table activity's read of its active rows runs on
every hint and every reconcile, and without an index on the state column it scans the whole
table. ``db install`` and ``check`` warn (naming the index that serves it) when the read would
scan a table of more than 100,000 rows; a relay logs it once at start; ``--print`` suggests
the index in a comment. No timing is asserted: the plan is."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from structlog.testing import capture_logs

from relay.cli.main import startup_problems
from relay.config.activities import Activity
from relay.config.profiles import load_profile
from relay.source.activities.readcost import READ_SCAN_ROWS, ReadScan, read_scans
from relay.source.install import install
from tests.support import events, execute, fresh_database, relay_config, running_relay

REPO = Path(__file__).resolve().parents[2]
SEED_INDEX = (
    'CREATE INDEX CONCURRENTLY "tasks_analytics_active_idx" ON "worker"."tasks" ("state") '
    "WHERE \"state\" IN ('pending', 'processing', 'waiting');"
)
FILLED = (
    "INSERT INTO worker.tasks (command, state) "
    "SELECT 'derive_reports', 'completed' FROM generate_series(1, {rows})",
    "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'processing')",
)


async def _fill(dsn: str, rows: int) -> None:
    await execute(dsn, *(statement.format(rows=rows) for statement in FILLED))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("ANALYZE worker.tasks")


@pytest.fixture
async def seed_db(pg_admin_dsn: str) -> AsyncIterator[str]:
    """The demo schema and the seed profile's SQL, worker.tasks without an index on state."""
    async with fresh_database(pg_admin_dsn, prefix="readcost") as dsn:
        await install(dsn, demo_schema=True, park=False)
        yield dsn


def _cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={**os.environ, "RELAY_DSN": dsn},
    )


async def _cli_async(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_cli, dsn, *args)


def _statement(stderr: str) -> str:
    [line] = [line.strip() for line in stderr.splitlines() if "CREATE INDEX" in line]
    return line


async def test_a_small_table_is_not_warned_about(seed_db: str) -> None:
    await _fill(seed_db, 1_000)
    scans: list[ReadScan] = []
    await install(seed_db, park=False, scans=scans)
    assert scans == []
    installed = await _cli_async(seed_db, "db", "install")
    assert installed.returncode == 0, installed.stderr
    assert "warning" not in installed.stderr


async def test_db_install_warns_with_the_index_that_serves_the_read(seed_db: str) -> None:
    await _fill(seed_db, READ_SCAN_ROWS + 1)
    installed = await _cli_async(seed_db, "db", "install")
    assert installed.returncode == 0, installed.stderr  # a warning, not a refusal
    assert "applied activities (generated)" in installed.stdout
    stderr = installed.stderr
    flat = " ".join(stderr.split())
    assert flat.startswith("warning: a read would scan a large table")
    assert 'activity "analytics": worker.tasks has 100,002 rows (pg_class.reltuples)' in flat
    assert "Seq Scan on worker.tasks" in flat
    assert "filter is left out of it: it holds a subquery, which an index predicate" in flat
    assert _statement(stderr) == SEED_INDEX

    # The statement as printed, executed as is: then the read is served and nothing is said.
    async with await psycopg.AsyncConnection.connect(seed_db, autocommit=True) as conn:
        await conn.execute(_statement(stderr).encode())
    again = await _cli_async(seed_db, "db", "install")
    assert again.returncode == 0, again.stderr
    assert "warning" not in again.stderr


async def test_check_shows_it_when_it_reaches_the_database(seed_db: str, tmp_path: Path) -> None:
    await _fill(seed_db, READ_SCAN_ROWS + 1)
    config = tmp_path / "relay.yaml"
    config.write_text("database:\n  dsn: ${RELAY_DSN}\n")
    checked = await _cli_async(seed_db, "check", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "OK" in checked.stdout
    assert "worker.tasks has 100,002 rows" in " ".join(checked.stderr.split())
    assert _statement(checked.stderr) == SEED_INDEX


def test_print_suggests_each_table_activitys_index() -> None:
    printed = _cli("", "db", "install", "--print")
    assert printed.returncode == 0, printed.stderr
    out = printed.stdout
    assert "-- ==== suggested indexes (not applied) ====" in out
    assert "Printing\n-- cannot see the tables' sizes" in out
    assert f"-- suggested: {SEED_INDEX}" in out
    assert (
        '-- suggested: CREATE INDEX CONCURRENTLY "import_job_importing_active_idx" '
        'ON "public"."import_job" ("state") WHERE "state" IN (' in out
    )
    assert "cannot run inside a transaction block" in out


async def test_the_relay_logs_it_once(seed_db: str) -> None:
    await _fill(seed_db, READ_SCAN_ROWS + 1)
    config = relay_config(seed_db)
    with capture_logs() as logs:
        assert await startup_problems(config) == []  # `run` checks first, then the listener
        async with running_relay(config) as relay:
            await asyncio.wait_for(relay.listener.connected.wait(), 10)
    [logged] = events(logs, "activity_read_scans")
    assert logged["log_level"] == "warning"
    assert (logged["activity"], logged["table"]) == ("analytics", "worker.tasks")
    assert logged["rows"] == 100_002 and logged["rows_from"] == "pg_class.reltuples"
    assert logged["create_index"] == SEED_INDEX


@pytest.mark.parametrize(
    ("filter_", "kept"),
    [
        ("command <> 'task_cleanup'", True),
        ("created_at < now()", False),  # now() is not IMMUTABLE: PostgreSQL refuses it
    ],
)
async def test_a_filter_goes_in_the_predicate_when_postgresql_takes_it(
    seed_db: str, filter_: str, kept: bool
) -> None:
    await _fill(seed_db, READ_SCAN_ROWS + 1)
    tasks = Activity.model_validate(
        {
            "name": "tasks",
            "label": "Tasks",
            "table": "worker.tasks",
            "active_states": ["pending", "processing"],
            "filter": filter_,
        }
    )
    scans: list[ReadScan] = []
    await install(seed_db, activities=[tasks], park=False, scans=scans)
    [scan] = scans
    if kept:
        assert scan.create_index.endswith(f"AND ({filter_});")
        assert scan.filter_left_out is None
    else:
        assert scan.create_index.endswith("IN ('pending', 'processing');")
        assert scan.filter_left_out is not None and "IMMUTABLE" in scan.filter_left_out
    async with await psycopg.AsyncConnection.connect(seed_db, autocommit=True) as conn:
        await conn.execute(scan.create_index.encode())
    scans.clear()
    await install(seed_db, activities=[tasks], park=False, scans=scans)
    assert scans == []


async def test_the_relays_own_role_is_answered_from_the_catalog(seed_db: str) -> None:
    """The relay's login may not plan the read (no privilege on the data system's tables):
    whether an index serves the state column is read from the catalog instead."""
    await _fill(seed_db, READ_SCAN_ROWS + 1)
    name = f"relay_readcost_{uuid.uuid4().hex[:8]}"
    role = sql.Identifier(name)
    async with await psycopg.AsyncConnection.connect(seed_db, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE stability_relay").format(role))
        try:
            relay = psycopg.conninfo.make_conninfo(seed_db, user=name)
            async with await psycopg.AsyncConnection.connect(relay, autocommit=True) as conn:
                [scan] = await read_scans(conn, load_profile("seed").activities)
                assert "judged from the catalog" in scan.plan
                assert scan.create_index == SEED_INDEX
                await admin.execute(SEED_INDEX.encode())
                assert await read_scans(conn, load_profile("seed").activities) == []
        finally:
            await admin.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(role, role))
