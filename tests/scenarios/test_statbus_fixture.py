"""The statbus fixture (tests/fixtures/statbus.sql) reproduces the facts the relay relies on.

Each test gets a fresh database with only the fixture in it (not the seed schema).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

from tests import statbus_driver as sb
from tests import support

SENTINEL = "fixture_sentinel"
Note = tuple[str, Any]


@asynccontextmanager
async def fresh_database(admin_dsn: str, *, fixture: bool = True) -> AsyncIterator[str]:
    async with support.fresh_database(admin_dsn, "statbus") as dsn:
        if fixture:
            await sb.apply_statbus_fixture(dsn)
        yield dsn


@pytest.fixture
async def statbus_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    async with fresh_database(pg_admin_dsn) as dsn:
        yield dsn


@pytest.fixture
async def owner(statbus_dsn: str) -> AsyncIterator[sb.AsyncConn]:
    """The superuser that applied the fixture: the tables' owner."""
    async with await psycopg.AsyncConnection.connect(statbus_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def listener(statbus_dsn: str) -> AsyncIterator[sb.AsyncConn]:
    async with await psycopg.AsyncConnection.connect(statbus_dsn, autocommit=True) as conn:
        for channel in (*sb.CHANNELS, SENTINEL):
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        yield conn


async def notes(listener: sb.AsyncConn, actor: sb.AsyncConn) -> list[Note]:
    """The notifications the actor's committed work sent, in order, up to a sentinel of its
    own (one session's commits reach listeners in order). JSON payloads are decoded."""
    await actor.execute("SELECT pg_notify(%s, '')", (SENTINEL,))
    got: list[Note] = []
    async with aclosing(listener.notifies(timeout=5.0)) as stream:
        async for note in stream:
            if note.channel == SENTINEL:
                return got
            try:
                payload: Any = json.loads(note.payload)
            except ValueError:
                payload = note.payload
            got.append((note.channel, payload))
    raise AssertionError(f"the sentinel never arrived; got {got}")


# --- shape -----------------------------------------------------------------------------------


async def test_shape_enums_commands_columns_and_functions(owner: sb.AsyncConn) -> None:
    async def one(query: LiteralString) -> Any:
        cur = await owner.execute(query)
        row = await cur.fetchone()
        assert row is not None
        return row[0]

    assert tuple(await one("SELECT enum_range(NULL::public.import_job_state)::text[]")) == (
        sb.IMPORT_JOB_STATES
    )
    assert tuple(await one("SELECT enum_range(NULL::worker.task_state)::text[]")) == (
        sb.TASK_STATES
    )
    assert tuple(await one("SELECT enum_range(NULL::worker.child_mode)::text[]")) == (
        sb.CHILD_MODES
    )

    cur = await owner.execute(
        "SELECT queue, array_agg(command ORDER BY command) FROM worker.command_registry"
        " GROUP BY queue"
    )
    commands = {queue: set(names) for queue, names in await cur.fetchall()}
    assert {queue: len(names) for queue, names in commands.items()} == {
        "analytics": 17,
        "import": 2,
        "maintenance": 2,
    }
    assert {
        "collect_changes",
        "derive_units_phase",
        "derive_reports_phase",
        "derive_statistical_unit",
        "derive_reports",
    } <= commands["analytics"]
    assert commands["import"] == {"import_job", "import_job_process"}
    assert commands["maintenance"] == {"task_cleanup", "import_job_cleanup"}

    cur = await owner.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'worker.tasks'::regclass"
        " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    )
    columns = [name for (name,) in await cur.fetchall()]
    assert columns == [
        "id", "command", "priority", "created_at", "state", "process_start_at",
        "completed_at", "process_duration_ms", "error", "scheduled_at", "worker_pid",
        "payload", "parent_id", "child_mode", "depth", "process_stop_at",
        "completion_duration_ms", "info",
    ]  # fmt: skip

    assert await one(
        "SELECT relrowsecurity FROM pg_class WHERE oid = 'public.import_job'::regclass"
    )
    cur = await owner.execute(
        "SELECT proname, prosecdef, provolatile FROM pg_proc"
        " WHERE pronamespace = 'public'::regnamespace"
        " AND proname IN ('is_importing', 'is_deriving_statistical_units', 'is_deriving_reports')"
    )
    assert sorted(await cur.fetchall()) == [
        ("is_deriving_reports", False, "s"),
        ("is_deriving_statistical_units", False, "s"),
        ("is_importing", False, "s"),
    ]


async def test_applies_to_several_fresh_databases_at_once(pg_admin_dsn: str) -> None:
    async with fresh_database(pg_admin_dsn, fixture=False) as a:
        async with fresh_database(pg_admin_dsn, fixture=False) as b:
            await asyncio.gather(sb.apply_statbus_fixture(a), sb.apply_statbus_fixture(b))


# --- the situations --------------------------------------------------------------------------


@pytest.mark.parametrize("situation", sb.STATES, ids=lambda s: s.name)
async def test_situation(owner: sb.AsyncConn, situation: sb.Situation) -> None:
    await situation.setup(owner)
    assert await sb.statbus_indicators(owner) == situation.expected
    truth = await sb.statbus_truth(owner)
    for path, value in situation.details.items():
        assert sb.dig(truth, path) == value, (path, truth)


def test_the_named_situations_are_there() -> None:
    by_name = {s.name: s for s in sb.STATES}
    assert by_name["analytics_task_interrupted"].expected["deriving_statistical_units"]
    assert by_name["import_waiting_for_review"].expected["importing"]
    assert not by_name["import_upload_completed"].expected["importing"]
    assert not by_name["import_approved"].expected["importing"]
    assert by_name["import_analysing_40pct"].expected["importing"]


async def test_lone_interrupted_task_of_any_other_command_is_not_deriving(
    owner: sb.AsyncConn,
) -> None:
    # Only a collect_changes root counts: an orphan phase task is invisible to both.
    await sb.insert_task_raw(owner, "derive_reports_phase", "interrupted")
    await sb.insert_task_raw(owner, "derive_units_phase", "interrupted")
    assert await sb.statbus_indicators(owner) == sb.indicators()
    await sb.insert_task_raw(owner, "collect_changes", "interrupted")
    assert await sb.statbus_indicators(owner) == sb.indicators(units=True)


# --- notifications ---------------------------------------------------------------------------


async def test_import_job_notifications(owner: sb.AsyncConn, listener: sb.AsyncConn) -> None:
    job = await sb.add_import_job(owner, "n1")
    assert await notes(listener, owner) == [("import_job", {"verb": "INSERT", "id": job})]

    # any UPDATE: import_job; one of no progress column: no import_job_progress
    await sb.update_import_job(owner, job, note="hello", total_rows=10)
    assert await notes(listener, owner) == [("import_job", {"verb": "UPDATE", "id": job})]

    # the user's upload: the job is enqueued for the worker
    await sb.set_import_state(owner, job, "upload_completed")
    got = await notes(listener, owner)
    # AFTER row triggers fire in name order, as statbus's (same names) do
    assert [channel for channel, _ in got] == ["import_job", "import_job_progress", "worker_tasks"]
    assert got[2] == ("worker_tasks", "import")
    progress = got[1][1]
    assert progress["job_id"] == job
    assert progress["state"] == "upload_completed"
    assert set(progress) == {
        "job_id", "state", "total_rows", "analysis_completed_pct", "analysis_rows_per_sec",
        "imported_rows", "import_completed_pct", "import_rows_per_sec", "error_count",
        "warning_count",
    }  # fmt: skip
    cur = await owner.execute("SELECT command, payload, state FROM worker.tasks")
    assert await cur.fetchall() == [("import_job", {"job_id": job}, "pending")]

    # a worker-side state change: no new task
    await sb.set_import_state(owner, job, "preparing_data")
    assert [c for c, _ in await notes(listener, owner)] == ["import_job", "import_job_progress"]

    await sb.update_import_job(owner, job, warning_count=3)
    assert [c for c, _ in await notes(listener, owner)] == ["import_job", "import_job_progress"]

    await sb.delete_import_job(owner, job)
    assert await notes(listener, owner) == [("import_job", {"verb": "DELETE", "id": job})]


async def test_import_progress_percentage_is_computed_from_the_counters(
    owner: sb.AsyncConn, listener: sb.AsyncConn
) -> None:
    job = await sb.add_import_job(owner, "pct", "analysing_data")
    assert await notes(listener, owner) == [("import_job", {"verb": "INSERT", "id": job})]
    await sb.update_import_job(owner, job, total_analysis_steps_weighted=200)
    await sb.update_import_job(owner, job, completed_analysis_steps_weighted=80)
    got = await notes(listener, owner)
    assert [c for c, _ in got] == ["import_job", "import_job", "import_job_progress"]
    assert got[2][1]["analysis_completed_pct"] == 40
    # Setting the percentage itself goes through (no trigger recomputes it) but is not progress
    await sb.update_import_job(owner, job, analysis_completed_pct=55)
    assert [c for c, _ in await notes(listener, owner)] == ["import_job"]


async def test_task_notifications(owner: sb.AsyncConn, listener: sb.AsyncConn) -> None:
    # raw INSERT, non-state UPDATE, DELETE: nothing
    task = await sb.insert_task_raw(owner, "derive_reports", "pending")
    await owner.execute("UPDATE worker.tasks SET priority = 7 WHERE id = %s", (task,))
    assert await notes(listener, owner) == []

    await sb.set_task_state(owner, task, "processing")
    assert await notes(listener, owner) == [
        ("worker_task_changed", {"id": task, "parent_id": None})
    ]
    await sb.set_task_state(owner, task, "processing")  # same state: nothing
    assert await notes(listener, owner) == []
    await sb.set_task_state(owner, task, "failed", error="boom")
    assert await notes(listener, owner) == [
        ("worker_task_changed", {"id": task, "parent_id": None})
    ]
    await sb.delete_task(owner, task)
    assert await notes(listener, owner) == []

    # a base-table change enqueues collect_changes, once while it is pending; each notifies
    root = await sb.enqueue_collect_changes(owner)
    again = await sb.enqueue_collect_changes(owner)
    assert again == root
    assert await notes(listener, owner) == [
        ("worker_tasks", "analytics"),
        ("worker_tasks", "analytics"),
    ]

    # spawn: worker_tasks with the queue; setting the parent's child_mode is no state change
    child = await sb.spawn(owner, "derive_units_phase", parent_id=root, child_mode="serial")
    assert child is not None
    assert await notes(listener, owner) == [("worker_tasks", "analytics")]
    cur = await owner.execute(
        "SELECT id, depth, child_mode, payload->>'command' FROM worker.tasks"
        " WHERE id IN (%s, %s) ORDER BY id",
        (root, child),
    )
    assert await cur.fetchall() == [
        (root, 0, "serial", "collect_changes"),
        (child, 1, None, "derive_units_phase"),
    ]
    with pytest.raises(pg_errors.RaiseException):
        await sb.spawn(owner, "derive_reports_phase", parent_id=root, child_mode="concurrent")
    # a spawn that a dedup index skips still notifies
    assert await sb.spawn(owner, "collect_changes") is None
    assert await notes(listener, owner) == [("worker_tasks", "analytics")]

    await sb.set_task_state(owner, child, "processing")
    assert await notes(listener, owner) == [
        ("worker_task_changed", {"id": child, "parent_id": root})
    ]
    # deleting the tree: nothing
    await sb.delete_task(owner, root)
    assert await notes(listener, owner) == []

    # maintenance enqueuers: one pending task, notify every time
    first = await owner.execute("SELECT worker.enqueue_task_cleanup()")
    second = await owner.execute("SELECT worker.enqueue_task_cleanup()")
    assert await first.fetchone() == await second.fetchone()
    await owner.execute("SELECT worker.enqueue_import_job_cleanup()")
    assert await notes(listener, owner) == [("worker_tasks", "maintenance")] * 3

    await owner.execute(
        "INSERT INTO worker.command_registry (command, handler_procedure, queue)"
        " VALUES ('fixture_probe', 'x', 'maintenance')"
    )
    assert await notes(listener, owner) == [("worker_queue_change", "maintenance")]


async def test_worker_status_hooks(owner: sb.AsyncConn, listener: sb.AsyncConn) -> None:
    await owner.execute("CALL worker.notify_is_importing_start()")
    await owner.execute("CALL worker.notify_is_importing_stop()")
    assert await notes(listener, owner) == [
        ("worker_status", {"type": "is_importing", "status": True}),
        ("worker_status", {"type": "is_importing", "status": False}),
    ]
    job = await sb.add_import_job(owner, "busy", "processing_data")
    await notes(listener, owner)
    await owner.execute("CALL worker.notify_is_importing_stop()")
    assert await notes(listener, owner) == [
        ("worker_status", {"type": "is_importing", "status": True})
    ]
    await sb.delete_import_job(owner, job)
    await notes(listener, owner)

    await owner.execute("CALL worker.notify_task_progress()")
    assert await notes(listener, owner) == [
        ("worker_status", {"type": "is_deriving_statistical_units", "status": False}),
        ("worker_status", {"type": "is_deriving_reports", "status": False}),
    ]

    ids = await sb.start_pipeline(owner, phases=True)
    await sb.set_task_state(owner, ids["derive_units_phase"], "processing")
    await owner.execute("CALL worker.derive_units_phase('{}'::jsonb)")
    await notes(listener, owner)
    await owner.execute("CALL worker.notify_task_progress()")
    got = await notes(listener, owner)
    assert len(got) == 1
    channel, payload = got[0]
    assert channel == "worker_status"
    assert payload["type"] == "pipeline_progress"
    units, reports = payload["phases"]
    assert units["phase"] == "is_deriving_statistical_units"
    assert units["active"] is True
    assert reports["phase"] == "is_deriving_reports"
    assert (reports["active"], reports["pending"]) == (False, True)


async def test_constraints_the_driver_respects(owner: sb.AsyncConn) -> None:
    with pytest.raises(pg_errors.CheckViolation):  # failed without an error
        await owner.execute(
            "INSERT INTO worker.tasks (command, state, payload) VALUES"
            " ('derive_reports', 'failed', '{\"command\": \"derive_reports\"}')"
        )
    with pytest.raises(pg_errors.CheckViolation):  # an error without failing
        await owner.execute(
            "INSERT INTO worker.tasks (command, error, payload) VALUES"
            " ('derive_reports', 'x', '{\"command\": \"derive_reports\"}')"
        )
    with pytest.raises(pg_errors.CheckViolation):  # payload names another command
        await owner.execute(
            "INSERT INTO worker.tasks (command, payload) VALUES"
            " ('derive_reports', '{\"command\": \"collect_changes\"}')"
        )
    # a payload without 'command' passes (statbus's import and cleanup enqueuers rely on it)
    await owner.execute("INSERT INTO worker.tasks (command, payload) VALUES ('import_job', '{}')")
    await sb.insert_task_raw(owner, "collect_changes")
    with pytest.raises(pg_errors.UniqueViolation):  # one pending collect_changes
        await sb.insert_task_raw(owner, "collect_changes")
    with pytest.raises(pg_errors.CheckViolation):  # failed import job without an error
        await owner.execute("INSERT INTO public.import_job (slug, state) VALUES ('bad', 'failed')")
    job = await sb.add_import_job(owner, "ok")
    await sb.set_import_state(owner, job, "failed")  # the driver supplies an error
    task = await sb.insert_task_raw(owner, "derive_reports", "failed")
    await sb.set_task_state(owner, task, "pending")  # and clears it
    with pytest.raises(ValueError):
        await sb.set_task_state(owner, task, "completed", error="no")


# --- row-level security ----------------------------------------------------------------------


@asynccontextmanager
async def scratch_roles(
    admin_dsn: str, db_dsn: str, **member_of: str | None
) -> AsyncIterator[dict[str, str]]:
    """Login roles named ``fx_<key>_<hex>@example.test``, each a member of the given role (or
    of none); dropped afterwards, with their privileges in the test database."""
    tag = uuid.uuid4().hex[:10]
    names = {key: f"fx_{key}_{tag}@example.test" for key in member_of}
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as admin:
        for key, group in member_of.items():
            create = sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(names[key]))
            if group is not None:
                create += sql.SQL(" IN ROLE {}").format(sql.Identifier(group))
            await admin.execute(create)
        try:
            yield names
        finally:
            roles = sql.SQL(", ").join(map(sql.Identifier, names.values()))
            async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as db:
                await db.execute(sql.SQL("DROP OWNED BY {}").format(roles))
            await admin.execute(sql.SQL("DROP ROLE {}").format(roles))


async def test_rls_filters_is_importing_for_its_caller(
    pg_admin_dsn: str, statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    async with scratch_roles(
        pg_admin_dsn,
        statbus_dsn,
        plain=None,
        granted=None,
        regular="regular_user",
        auth="authenticated",
        notify="notify_reader",
        admin="admin_user",
    ) as roles:
        await owner.execute(
            sql.SQL("GRANT SELECT ON public.import_job TO {}").format(
                sql.Identifier(roles["granted"])
            )
        )
        # an active job that the regular user owns
        uid = await sb.add_user(owner, roles["regular"])
        await sb.add_import_job(owner, "busy", "analysing_data", user_id=uid)
        assert (await sb.statbus_indicators(owner))["importing"] is True

        async def importing_as(role: str) -> bool:
            await owner.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            try:
                cur = await owner.execute("SELECT (public.is_importing()->>'active')::boolean")
                row = await cur.fetchone()
                assert row is not None
                return bool(row[0])
            finally:
                await owner.execute("RESET ROLE")

        async def fails_as(role: str, query: LiteralString) -> None:
            await owner.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            try:
                with pytest.raises(pg_errors.InsufficientPrivilege):
                    await owner.execute(query)
            finally:
                await owner.execute("RESET ROLE")

        # policies that cover the caller: it sees the job
        assert await importing_as(roles["auth"]) is True
        assert await importing_as(roles["notify"]) is True
        assert await importing_as(roles["admin"]) is True
        # SELECT privilege but no policy covering the caller: RLS hides every row
        assert await importing_as(roles["granted"]) is False
        # regular_user may SELECT but its policies cover only INSERT/UPDATE/DELETE of its own
        # rows: even its own active job is invisible without authenticated
        assert await importing_as(roles["regular"]) is False
        # no privilege at all: an error, not a false "not importing"
        await fails_as(roles["plain"], "SELECT public.is_importing()")
        # notify_reader has no USAGE on schema worker: the deriving functions fail for it
        await fails_as(roles["notify"], "SELECT public.is_deriving_statistical_units()")
        await fails_as(roles["notify"], "SELECT public.is_deriving_reports()")
        # authenticated may read worker.tasks (no RLS there)
        await owner.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(roles["auth"])))
        try:
            assert await sb.statbus_indicators(owner) == sb.indicators(importing=True)
        finally:
            await owner.execute("RESET ROLE")
