"""The relay's SQL against a real PostgreSQL: activeness, hints, the hold, installation,
privileges."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg import sql

from relay.errors import DatabaseUnavailable, RelayError
from relay.source.activities.hints import hint_rows_function
from relay.source.install import InstallRefused, install, sql_dir

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
HintsAfter = Callable[..., Awaitable[list[str]]]
RowsAndHintsAfter = Callable[..., Awaitable[tuple[list[tuple[Any, ...]], list[str]]]]

CHANNEL = "system_stability"
SENTINEL = "sentinel"
TASKS_HINT = '{"table":"tasks"}'
IMPORT_JOB_HINT = '{"table":"import_job"}'
COMMAND_REGISTRY_HINT = '{"table":"command_registry"}'
HOLD_TRUE = '{"hold":true}'
# The hold flag's values (sql/hold.sql); a flag never set reads NULL.
NO_HOLD, HELD, REQUESTED = 0, 1, 2
# The advisory lock that request, confirm and release take (b"stabhold").
HOLD_LOCK = 8319381486946970724

IMPORT_STATES = [
    "waiting_for_upload",
    "upload_completed",
    "preparing_data",
    "analysing_data",
    "waiting_for_review",
    "approved",
    "rejected",
    "processing_data",
    "failed",
    "finished",
]
ACTIVE_IMPORT_STATES = {
    "upload_completed",
    "preparing_data",
    "analysing_data",
    "approved",
    "processing_data",
}
TASK_STATES = ["pending", "processing", "waiting", "interrupted", "completed", "failed"]
ACTIVE_TASK_STATES = {"pending", "processing", "waiting"}
COMMAND_OF_QUEUE = {
    "analytics": "derive_reports",
    "import": "import_job_process",
    "maintenance": "task_cleanup",
}
READER_FUNCTIONS = [
    "is_system_stable",
    "get_analytics_tasks_in_progress",
    "get_import_jobs_in_progress",
]
HOLD_FUNCTIONS = [
    "system_stability_request_hold",
    "system_stability_confirm_hold",
    "system_stability_release_hold",
]
SECURITY_DEFINER_FUNCTIONS = [*READER_FUNCTIONS, *HOLD_FUNCTIONS]
PINNED_SEARCH_PATH = ["search_path=pg_catalog, pg_temp"]


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
async def rows_and_hints_after(db_dsn: str, conn: Conn) -> AsyncIterator[RowsAndHintsAfter]:
    """Run a statement (one transaction) on ``conn``, or ``on`` another connection; return
    the rows it returned and the hints its commit sent."""
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as listener:
        await listener.execute(f"LISTEN {CHANNEL}")

        async def run(
            query: LiteralString, params: Sequence[object] | None = None, *, on: Conn | None = None
        ) -> tuple[list[tuple[Any, ...]], list[str]]:
            await _received_before_sentinel(conn, listener)  # discard the test's set-up hints
            cursor = await (on or conn).execute(query, params)
            rows = await cursor.fetchall() if cursor.description is not None else []
            return rows, await _received_before_sentinel(conn, listener)

        yield run


@pytest.fixture
def hints_after(rows_and_hints_after: RowsAndHintsAfter) -> HintsAfter:
    """Run a statement (one transaction) on ``conn``, or ``on`` another connection; return
    the hints its commit sent."""

    async def run(*args: Any, **kwargs: Any) -> list[str]:
        _, hints = await rows_and_hints_after(*args, **kwargs)
        return hints

    return run


async def _received_before_sentinel(conn: Conn, listener: Conn) -> list[str]:
    """The hints committed on ``conn`` so far and not yet received by ``listener``."""
    # Notifications arrive in commit order, so every earlier one precedes the sentinel.
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, SENTINEL))
    payloads: list[str] = []
    async with aclosing(listener.notifies(timeout=10.0)) as notifies:
        async for notify in notifies:
            if notify.payload == SENTINEL:
                return payloads
            payloads.append(notify.payload)
    raise AssertionError(f"the sentinel notification did not arrive; got {payloads}")


async def is_stable(conn: Conn) -> bool:
    cursor = await conn.execute("SELECT public.is_system_stable()")
    row = await cursor.fetchone()
    assert row is not None
    result: bool = row[0]
    return result


async def insert_task(conn: Conn, command: str, state: str, priority: int | None = None) -> int:
    cursor = await conn.execute(
        "INSERT INTO worker.tasks (command, state, priority) VALUES (%s, %s, %s) RETURNING id",
        (command, state, priority),
    )
    row = await cursor.fetchone()
    assert row is not None
    task_id: int = row[0]
    return task_id


async def json_rows(conn: Conn, function: LiteralString) -> list[dict[str, Any]]:
    cursor = await conn.execute(f"SELECT * FROM public.{function}()")
    return [row[0] for row in await cursor.fetchall()]


# -- is_system_stable() -----------------------------------------------------------------------


async def test_system_is_stable_when_nothing_is_queued(conn: Conn) -> None:
    assert await is_stable(conn) is True


@pytest.mark.parametrize("state", IMPORT_STATES)
async def test_an_import_job_makes_the_system_unstable_only_while_active(
    conn: Conn, state: str
) -> None:
    await conn.execute("INSERT INTO public.import_job (slug, state) VALUES ('job', %s)", (state,))
    assert await is_stable(conn) is (state not in ACTIVE_IMPORT_STATES)


@pytest.mark.parametrize("queue", sorted(COMMAND_OF_QUEUE))
@pytest.mark.parametrize("state", TASK_STATES)
async def test_only_active_analytics_tasks_make_the_system_unstable(
    conn: Conn, state: str, queue: str
) -> None:
    await insert_task(conn, COMMAND_OF_QUEUE[queue], state)
    expected_active = queue == "analytics" and state in ACTIVE_TASK_STATES
    assert await is_stable(conn) is not expected_active


async def test_active_tasks_are_found_through_an_index_on_state(conn: Conn) -> None:
    """A relay polls is_system_stable() 20 times a second during a hold: with an index on
    state (production queues have one) it must not scan the whole table."""
    await conn.execute("CREATE INDEX tasks_state_idx ON worker.tasks (state)")
    await conn.execute(
        "INSERT INTO worker.tasks (command, state) "
        "SELECT 'derive_reports', 'completed' FROM generate_series(1, 20000)"
    )
    await conn.execute("ANALYZE worker.tasks")
    cursor = await conn.execute(
        "EXPLAIN (FORMAT JSON) SELECT FROM worker.system_stability_active_analytics"
    )
    row = await cursor.fetchone()
    assert row is not None
    nodes = list(_plan_nodes(row[0][0]["Plan"]))
    on_tasks = [node for node in nodes if node.get("Relation Name") == "tasks"]
    assert on_tasks, nodes
    assert all(node.get("Index Name") == "tasks_state_idx" for node in on_tasks), on_tasks


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


async def test_moving_a_command_out_of_the_analytics_queue_stabilises_the_system(
    conn: Conn,
) -> None:
    await insert_task(conn, "derive_reports", "pending")
    assert await is_stable(conn) is False
    await conn.execute(
        "UPDATE worker.command_registry SET queue = 'maintenance' WHERE command = 'derive_reports'"
    )
    assert await is_stable(conn) is True


# -- detail functions -----------------------------------------------------------------------------


async def test_analytics_tasks_in_progress_lists_active_analytics_tasks_by_priority(
    conn: Conn,
) -> None:
    low = await insert_task(conn, "derive_reports", "waiting", priority=20)
    high = await insert_task(conn, "derive_statistical_unit", "processing", priority=10)
    unprioritised = await insert_task(conn, "derive_reports", "pending")
    await insert_task(conn, "derive_reports", "completed", priority=1)
    await insert_task(conn, "import_job_process", "pending", priority=1)

    tasks = await json_rows(conn, "get_analytics_tasks_in_progress")

    assert [task["id"] for task in tasks] == [high, low, unprioritised]
    assert set(tasks[0]) == {"id", "command", "state", "created_at", "duration_ms"}
    assert (tasks[0]["command"], tasks[0]["state"]) == ("derive_statistical_unit", "processing")


async def test_import_jobs_in_progress_report_progress_by_priority(conn: Conn) -> None:
    await conn.execute(
        """
        INSERT INTO public.import_job
            (slug, state, priority, total_rows, imported_rows, import_completed_pct)
        VALUES
            ('by-rows', 'processing_data', 2, 200, 50, 0),
            ('by-pct', 'analysing_data', 1, 200, 10, 40),
            ('no-rows', 'upload_completed', NULL, NULL, 0, 0),
            ('done', 'finished', 0, 10, 10, 100)
        """
    )

    jobs = await json_rows(conn, "get_import_jobs_in_progress")

    assert [(job["slug"], job["progress_pct"]) for job in jobs] == [
        ("by-pct", 40.00),
        ("by-rows", 25.00),
        ("no-rows", 0),
    ]
    assert set(jobs[0]) == {
        "id",
        "slug",
        "description",
        "state",
        "total_rows",
        "imported_rows",
        "progress_pct",
        "priority",
        "created_at",
        "updated_at",
    }


# -- hints ------------------------------------------------------------------------------------
#
# Triggers on each table hint after a write statement that changed a row an activity can see:
# of an activity's table, a row in one of its active states before or after the change (its
# filter left out); of any other table it reads, any row. The relay answers a hint by reading
# is_system_stable(), so a spurious hint costs one cheap query and a missed one a wrong answer;
# a statement that changed no visible row (an idle worker's poll) costs nothing.

# Every kind of write statement, with the hints it sends; run after _seed().
WRITES = [
    pytest.param(statement, expected, id=name)
    for name, statement, expected in [
        (
            "insert-analytics-task",
            "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')",
            [TASKS_HINT],
        ),
        (
            "insert-maintenance-task",
            "INSERT INTO worker.tasks (command, state) VALUES ('task_cleanup', 'pending')",
            [TASKS_HINT],
        ),
        (
            "insert-completed-task",
            "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'completed')",
            [],
        ),
        (
            "update-task-state",
            "UPDATE worker.tasks SET state = 'processing' WHERE command = 'derive_reports'",
            [TASKS_HINT],
        ),
        (
            "update-maintenance-task-state",
            "UPDATE worker.tasks SET state = 'completed' WHERE command = 'task_cleanup'",
            [TASKS_HINT],
        ),
        (
            "update-task-other-columns",
            "UPDATE worker.tasks SET duration_ms = 12, error = 'x'",
            [TASKS_HINT],
        ),
        (
            "update-task-command",
            "UPDATE worker.tasks SET command = 'import_job_process' WHERE command = 'task_cleanup'",
            [TASKS_HINT],
        ),
        (
            "upsert-task",
            "INSERT INTO worker.tasks (id, command, state)"
            " SELECT id, 'derive_reports', 'completed' FROM worker.tasks"
            " ON CONFLICT (id) DO UPDATE SET state = excluded.state",
            [TASKS_HINT],
        ),
        ("delete-task", "DELETE FROM worker.tasks WHERE command = 'task_cleanup'", [TASKS_HINT]),
        ("truncate-tasks", "TRUNCATE worker.tasks", [TASKS_HINT]),
        (
            "insert-active-import-job",
            "INSERT INTO public.import_job (slug, state) VALUES ('new', 'preparing_data')",
            [IMPORT_JOB_HINT],
        ),
        (
            "insert-inactive-import-job",
            "INSERT INTO public.import_job (slug, state) VALUES ('new', 'waiting_for_upload')",
            [],
        ),
        (
            "update-import-job-state",
            "UPDATE public.import_job SET state = 'finished' WHERE slug = 'active'",
            [IMPORT_JOB_HINT],
        ),
        (
            "update-import-job-into-an-active-state",
            "UPDATE public.import_job SET state = 'approved' WHERE slug = 'done'",
            [IMPORT_JOB_HINT],
        ),
        (
            "update-import-job-progress",
            "UPDATE public.import_job SET imported_rows = 10 WHERE slug = 'active'",
            [IMPORT_JOB_HINT],
        ),
        (
            "update-inactive-import-job",
            "UPDATE public.import_job SET description = 'x' WHERE slug = 'done'",
            [],
        ),
        (
            "delete-inactive-import-job",
            "DELETE FROM public.import_job WHERE slug = 'done'",
            [],
        ),
        ("truncate-import-jobs", "TRUNCATE public.import_job", [IMPORT_JOB_HINT]),
        (
            "insert-command",
            "INSERT INTO worker.command_registry (command, queue) VALUES ('new', 'maintenance')",
            [COMMAND_REGISTRY_HINT],
        ),
        (
            "update-command-queue",
            "UPDATE worker.command_registry SET queue = 'maintenance'"
            " WHERE command = 'derive_reports'",
            [COMMAND_REGISTRY_HINT],
        ),
        (
            "update-command-description",
            "UPDATE worker.command_registry SET description = 'x'",
            [COMMAND_REGISTRY_HINT],
        ),
        (
            "delete-unused-command",
            "DELETE FROM worker.command_registry WHERE command = 'derive_statistical_history'",
            [COMMAND_REGISTRY_HINT],
        ),
        (
            # The tasks reference the registry: TRUNCATE needs CASCADE, which truncates both.
            "truncate-command-registry",
            "TRUNCATE worker.command_registry CASCADE",
            [COMMAND_REGISTRY_HINT, TASKS_HINT],
        ),
    ]
]

# Statements that change no row: none hints, on any table.
NO_ROW_WRITES = [
    pytest.param(statement, expected, id=name)
    for name, statement, expected in [
        ("update-no-task", "UPDATE worker.tasks SET state = 'failed' WHERE false", TASKS_HINT),
        ("delete-no-task", "DELETE FROM worker.tasks WHERE id < 0", TASKS_HINT),
        (
            "insert-no-task",
            "INSERT INTO worker.tasks (command, state)"
            " SELECT command, 'pending' FROM worker.command_registry WHERE false",
            TASKS_HINT,
        ),
        (
            "update-no-import-job",
            "UPDATE public.import_job SET state = 'failed' WHERE slug = 'none'",
            IMPORT_JOB_HINT,
        ),
        (
            "delete-no-import-job",
            "DELETE FROM public.import_job WHERE slug = 'none'",
            IMPORT_JOB_HINT,
        ),
        (
            "insert-existing-command",
            "INSERT INTO worker.command_registry (command, queue)"
            " VALUES ('derive_reports', 'analytics') ON CONFLICT (command) DO NOTHING",
            COMMAND_REGISTRY_HINT,
        ),
        (
            "delete-no-command",
            "DELETE FROM worker.command_registry WHERE command = 'none'",
            COMMAND_REGISTRY_HINT,
        ),
    ]
]

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


async def _seed(conn: Conn) -> None:
    """An active and an inactive import job; an analytics and a maintenance task, pending."""
    await conn.execute(
        "INSERT INTO public.import_job (slug, state)"
        " VALUES ('active', 'processing_data'), ('done', 'finished');"
        "INSERT INTO worker.tasks (command, state)"
        " VALUES ('derive_reports', 'pending'), ('task_cleanup', 'pending')"
    )


async def _request_hold(conn: Conn) -> None:
    await conn.execute("SELECT public.system_stability_request_hold()")


async def _confirm_hold(conn: Conn) -> bool:
    cursor = await conn.execute("SELECT public.system_stability_confirm_hold()")
    row = await cursor.fetchone()
    assert row is not None
    confirmed: bool = row[0]
    return confirmed


async def _take_hold(conn: Conn) -> None:
    """As a relay takes it: the request, committed (on an autocommit ``conn``), then the
    confirmation in a transaction of its own."""
    await _request_hold(conn)
    assert await _confirm_hold(conn) is True


async def _release_hold(conn: Conn) -> None:
    await conn.execute("SELECT public.system_stability_release_hold()")


async def _set_flag(conn: Conn, value: int | None) -> None:
    """Set the flag directly, as its owner; None makes it read NULL (never set)."""
    if value is None:
        await conn.execute("SELECT setval('public.system_stability_hold', 0, false)")
    else:
        await conn.execute("SELECT setval('public.system_stability_hold', %s)", (value,))


async def _hold_flag(conn: Conn) -> int | None:
    cursor = await conn.execute(
        "SELECT pg_sequence_last_value('public.system_stability_hold'::regclass)"
    )
    row = await cursor.fetchone()
    assert row is not None
    flag: int | None = row[0]
    return flag


@pytest.mark.parametrize(("statement", "expected"), WRITES)
async def test_every_write_statement_sends_its_tables_hint(
    conn: Conn, hints_after: HintsAfter, statement: LiteralString, expected: list[str]
) -> None:
    """Whatever it changes: tasks of any queue, any state, any column."""
    await _seed(conn)
    assert sorted(await hints_after(statement)) == sorted(expected)


@pytest.mark.parametrize(("statement", "expected"), NO_ROW_WRITES)
async def test_a_statement_that_changes_no_row_sends_no_hint(
    conn: Conn, hints_after: HintsAfter, statement: LiteralString, expected: str
) -> None:
    """An idle worker's poll (an UPDATE or DELETE of nothing) keeps the relay idle too; the
    same statement that does change a row of the table hints."""
    await _seed(conn)
    assert await hints_after(statement) == []
    await conn.execute("DELETE FROM worker.tasks")
    await conn.execute(
        "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')"
    )
    visible = {
        TASKS_HINT: "UPDATE worker.tasks SET state = 'processing'",
        IMPORT_JOB_HINT: "UPDATE public.import_job SET state = 'failed' WHERE slug = 'active'",
        COMMAND_REGISTRY_HINT: "UPDATE worker.command_registry SET description = 'x'",
    }[expected]
    assert await hints_after(visible) == [expected]


async def test_a_bulk_statement_sends_one_hint(conn: Conn, hints_after: HintsAfter) -> None:
    assert await hints_after(
        "INSERT INTO worker.tasks (command, state)"
        " SELECT 'derive_reports', 'pending' FROM generate_series(1, 100)"
    ) == [TASKS_HINT]
    assert await hints_after("UPDATE worker.tasks SET state = 'processing'") == [TASKS_HINT]
    assert await hints_after("DELETE FROM worker.tasks") == [TASKS_HINT]


async def test_a_transaction_sends_at_most_one_hint_per_table(
    conn: Conn, hints_after: HintsAfter
) -> None:
    assert await hints_after(
        "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending');"
        "INSERT INTO worker.tasks (command, state) VALUES ('task_cleanup', 'pending');"
        "UPDATE worker.tasks SET state = 'completed';"
        "INSERT INTO public.import_job (slug, state) VALUES ('a', 'preparing_data');"
        "INSERT INTO public.import_job (slug, state) VALUES ('b', 'preparing_data');"
        "UPDATE worker.command_registry SET description = 'x';"
        "DELETE FROM worker.tasks;"
        "UPDATE worker.command_registry SET description = 'y';"
    ) == [TASKS_HINT, IMPORT_JOB_HINT, COMMAND_REGISTRY_HINT]


async def test_a_rolled_back_change_sends_no_hint(conn: Conn, hints_after: HintsAfter) -> None:
    assert (
        await hints_after(
            "BEGIN;"
            "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending');"
            "INSERT INTO public.import_job (slug, state) VALUES ('a', 'preparing_data');"
            "ROLLBACK;"
        )
        == []
    )


# -- the hold ---------------------------------------------------------------------------------
#
# The flag reads 0 (no hold), 2 (requested) or 1 (held). Writers skip their hint only on 1.
# A relay takes the hold in two steps, request (2, announced) and confirm (1), and ends it
# with release (0, unannounced).


@pytest.mark.parametrize(
    "statement", [pytest.param(write.values[0], id=write.id) for write in WRITES if write.values[1]]
)
async def test_no_write_statement_hints_while_the_hold_is_held(
    conn: Conn, hints_after: HintsAfter, statement: LiteralString
) -> None:
    await _seed(conn)
    await _take_hold(conn)
    assert await hints_after(statement) == []


async def test_a_hold_is_requested_announced_confirmed_and_released(
    conn: Conn, hints_after: HintsAfter, rows_and_hints_after: RowsAndHintsAfter
) -> None:
    await _seed(conn)
    assert await _hold_flag(conn) == NO_HOLD

    assert await hints_after("SELECT public.system_stability_request_hold()") == [HOLD_TRUE]
    assert await _hold_flag(conn) == REQUESTED
    for statement, hint in ONE_WRITE_PER_TABLE:  # only 1 silences the writers
        assert await hints_after(statement) == [hint], statement

    assert await rows_and_hints_after("SELECT public.system_stability_confirm_hold()") == (
        [(True,)],
        [],
    )
    assert await _hold_flag(conn) == HELD
    for statement, _ in ONE_WRITE_PER_TABLE:
        assert await hints_after(statement) == [], statement

    assert await hints_after("SELECT public.system_stability_release_hold()") == []
    assert await _hold_flag(conn) == NO_HOLD
    for statement, hint in ONE_WRITE_PER_TABLE:
        assert await hints_after(statement) == [hint], statement


async def test_a_confirm_after_a_release_confirms_nothing(
    conn: Conn, hints_after: HintsAfter, rows_and_hints_after: RowsAndHintsAfter
) -> None:
    """Request, release, confirm: the released request does not become a hold."""
    await _request_hold(conn)
    await _release_hold(conn)
    assert await rows_and_hints_after("SELECT public.system_stability_confirm_hold()") == (
        [(False,)],
        [],
    )
    assert await _hold_flag(conn) == NO_HOLD
    for statement, hint in ONE_WRITE_PER_TABLE:
        assert await hints_after(statement) == [hint], statement


async def test_a_request_while_held_keeps_the_hold_and_announces_it(
    conn: Conn, hints_after: HintsAfter
) -> None:
    await _take_hold(conn)
    assert await hints_after("SELECT public.system_stability_request_hold()") == [HOLD_TRUE]
    assert await _hold_flag(conn) == HELD
    for statement, _ in ONE_WRITE_PER_TABLE:
        assert await hints_after(statement) == [], statement
    # A second confirm finds no request: the hold stays as it is.
    assert await _confirm_hold(conn) is False
    assert await _hold_flag(conn) == HELD


async def test_a_confirm_without_a_request_confirms_nothing(conn: Conn) -> None:
    assert await _confirm_hold(conn) is False
    assert await _hold_flag(conn) == NO_HOLD


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
    await _set_flag(conn, flag_before)
    call = sql.SQL("SELECT {}()").format(sql.Identifier("public", function))
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as caller:
        # Inner, so that a failing test releases the lock before the caller's connection closes.
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as blocker:
            await blocker.execute("BEGIN")
            await blocker.execute("SELECT pg_advisory_xact_lock(%s)", (HOLD_LOCK,))
            calling = asyncio.create_task(caller.execute(call))
            await _wait_until_waiting_for_an_advisory_lock(conn, caller.info.backend_pid)
            assert not calling.done()
            assert await _hold_flag(conn) == flag_before
            await blocker.execute("COMMIT")
            cursor = await asyncio.wait_for(calling, timeout=10.0)
        if result is not None:
            assert await cursor.fetchone() == (result,)
    assert await _hold_flag(conn) == flag_after


async def test_a_confirm_waiting_for_a_release_confirms_nothing(db_dsn: str, conn: Conn) -> None:
    """The interleaving the lock is for: a confirm that reads the flag while a release is
    in progress waits for it, then finds no request to confirm."""
    await _request_hold(conn)
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as confirmer:
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as releaser:
            await releaser.execute("BEGIN")
            await _release_hold(releaser)
            confirming = asyncio.create_task(_confirm_hold(confirmer))
            await _wait_until_waiting_for_an_advisory_lock(conn, confirmer.info.backend_pid)
            await releaser.execute("COMMIT")
            assert await asyncio.wait_for(confirming, timeout=10.0) is False
    assert await _hold_flag(conn) == NO_HOLD


async def test_the_flag_is_not_transactional(
    db_dsn: str, conn: Conn, hints_after: HintsAfter
) -> None:
    """setval() takes effect at once and survives a rollback; the announcement goes out
    only with a commit. A request rolled back leaves 2, unannounced: writers go on hinting,
    and relays that read 2 poll (sql/hold.sql)."""
    write, hint = ONE_WRITE_PER_TABLE[0]
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as relay:
        await relay.execute("BEGIN")
        await _request_hold(relay)
        assert await _hold_flag(conn) == REQUESTED
        assert await hints_after("ROLLBACK", on=relay) == []
        assert await _hold_flag(conn) == REQUESTED
        assert await hints_after(write) == [hint]

        await relay.execute("BEGIN")
        assert await _confirm_hold(relay) is True
        assert await hints_after(write) == []
        assert await hints_after("ROLLBACK", on=relay) == []
    assert await _hold_flag(conn) == HELD
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
        await _take_hold(conn)
        assert await hints_after("COMMIT", on=writer) == [TASKS_HINT]

        await writer.execute("BEGIN")
        await writer.execute(insert)
        await _release_hold(conn)
        assert await hints_after("COMMIT", on=writer) == []


async def test_a_flag_that_was_never_set_does_not_hold(conn: Conn, hints_after: HintsAfter) -> None:
    """pg_sequence_last_value() returns NULL for a sequence never set: writers still hint
    (the relay polls on NULL), a request treats it as 0, a confirm finds no request."""
    await _seed(conn)
    await _take_hold(conn)
    await _set_flag(conn, None)
    assert await _hold_flag(conn) is None
    for statement, hint in ONE_WRITE_PER_TABLE:
        assert await hints_after(statement) == [hint], statement
    assert await _confirm_hold(conn) is False
    assert await _hold_flag(conn) is None
    assert await hints_after("SELECT public.system_stability_request_hold()") == [HOLD_TRUE]
    assert await _hold_flag(conn) == REQUESTED


# -- installation -----------------------------------------------------------------------------

# pg_trigger.tgtype bits (PostgreSQL's trigger.h); the ROW (1) and BEFORE (2) bits are clear.
TRIGGER_TYPE_INSERT = 4
TRIGGER_TYPE_DELETE = 8
TRIGGER_TYPE_UPDATE = 16
TRIGGER_TYPE_TRUNCATE = 32


async def _installed_objects(conn: Conn) -> list[tuple[Any, ...]]:
    """Triggers, functions and sequences of the two schemas, with definitions and grants
    (and the data system's command registry)."""
    cursor = await conn.execute(
        """
        SELECT 'trigger', tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
        FROM pg_trigger WHERE NOT tgisinternal
        UNION ALL
        SELECT 'function', pronamespace::regnamespace::text, proname,
            pg_get_functiondef(oid) || coalesce(proacl::text, '')
        FROM pg_proc
        WHERE pronamespace IN ('public'::regnamespace, 'worker'::regnamespace)
        UNION ALL
        SELECT 'sequence', relnamespace::regnamespace::text, relname,
            format('%s %s..%s start %s cycle %s %s', seqtypid::regtype, seqmin, seqmax,
                seqstart, seqcycle, coalesce(relacl::text, ''))
        FROM pg_class JOIN pg_sequence ON seqrelid = pg_class.oid
        WHERE relkind = 'S' AND relnamespace IN ('public'::regnamespace, 'worker'::regnamespace)
        UNION ALL
        SELECT 'command', queue, command, NULL FROM worker.command_registry
        ORDER BY 1, 2, 3
        """
    )
    return await cursor.fetchall()


async def test_installing_again_changes_nothing(
    db_dsn: str, conn: Conn, hints_after: HintsAfter
) -> None:
    before = await _installed_objects(conn)

    applied = await install(db_dsn, demo_schema=True, park=False)

    assert applied == [
        "demo_schema.sql",
        "hold.sql",
        "activities (generated)",
        "history.sql",
        "roles.sql",
        "signals (generated)",
    ]
    assert await _installed_objects(conn) == before
    assert await hints_after(
        "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')"
    ) == [TASKS_HINT]


@pytest.mark.parametrize("flag", [HELD, REQUESTED])
async def test_installing_again_keeps_a_hold(db_dsn: str, conn: Conn, flag: int) -> None:
    await _request_hold(conn)
    if flag == HELD:
        assert await _confirm_hold(conn) is True
    await install(db_dsn, demo_schema=True, park=False)
    assert await _hold_flag(conn) == flag


async def test_an_install_without_parking_leaves_the_flag_reading_0(
    db_dsn: str, conn: Conn
) -> None:
    """Not NULL, which a relay takes for "cannot read" and polls on: after a fresh install
    (the fixture's), after one that creates the sequence, and after one that finds it unset."""
    assert await _hold_flag(conn) == NO_HOLD
    await conn.execute("DROP SEQUENCE public.system_stability_hold")
    await install(db_dsn, park=False)  # demo_schema.sql writes, and the triggers need it
    assert await _hold_flag(conn) == NO_HOLD
    await _set_flag(conn, None)
    await install(db_dsn, demo_schema=True, park=False)
    assert await _hold_flag(conn) == NO_HOLD


async def test_an_install_parks_the_flag_announcing_it_first(
    db_dsn: str, conn: Conn, hints_after: HintsAfter
) -> None:
    """No relay listens yet: writers stay quiet. Requested and announced, then confirmed,
    each committed, so a relay already running hears of it before writers go quiet."""
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as listener:
        await listener.execute(f"LISTEN {CHANNEL}")
        await install(db_dsn)
        assert await _received_before_sentinel(conn, listener) == [HOLD_TRUE]
    assert await _hold_flag(conn) == HELD
    job = "INSERT INTO public.import_job (slug, state) VALUES ('q', 'approved')"
    assert await hints_after(job) == []


async def test_install_creates_a_trigger_per_statement_on_each_table(conn: Conn) -> None:
    """INSERT, UPDATE and DELETE: statement triggers with the transition tables of their
    event, calling the table's own hint function; TRUNCATE (which has none): hold.sql's."""
    cursor = await conn.execute(
        r"""
        SELECT tgrelid::regclass::text, tgname, tgtype, tgenabled, tgfoid::regproc::text,
            tgoldtable, tgnewtable, convert_from(rtrim(tgargs, '\x00'::bytea), 'UTF8')
        FROM pg_trigger
        WHERE NOT tgisinternal AND tgname LIKE 'system\_stability%'
        ORDER BY 1, 2
        """
    )
    expected = []
    for table, hint in [
        ("import_job", IMPORT_JOB_HINT),
        ("worker.command_registry", COMMAND_REGISTRY_HINT),
        ("worker.tasks", TASKS_HINT),
    ]:
        own = hint_rows_function(table if "." in table else f"public.{table}").split(".")[1]
        old, new = "system_stability_old", "system_stability_new"
        plain = ("system_stability_hint", None, None)
        expected += [
            (table, "system_stability_hint_delete", TRIGGER_TYPE_DELETE, "O", own, old, None, hint),
            (table, "system_stability_hint_insert", TRIGGER_TYPE_INSERT, "O", own, None, new, hint),
            (table, "system_stability_hint_truncate", TRIGGER_TYPE_TRUNCATE, "O", *plain, hint),
            (table, "system_stability_hint_update", TRIGGER_TYPE_UPDATE, "O", own, old, new, hint),
        ]
    assert await cursor.fetchall() == expected


async def test_install_leaves_no_function_of_the_old_design(conn: Conn) -> None:
    """worker.system_stability_task_hint, _registry_hint, _compile_commands and
    public.system_stability_set_hold(boolean) are gone."""
    cursor = await conn.execute(
        r"""
        SELECT oid::regprocedure::text FROM pg_proc
        WHERE proname LIKE 'system\_stability%'
        """
    )
    assert sorted(row[0] for row in await cursor.fetchall()) == sorted(
        [
            "system_stability_activities()",
            "system_stability_confirm_hold()",
            "system_stability_details(integer)",
            "system_stability_hint()",
            f"{hint_rows_function('public.import_job').split('.')[1]}()",
            f"{hint_rows_function('worker.command_registry').split('.')[1]}()",
            f"{hint_rows_function('worker.tasks').split('.')[1]}()",
            "system_stability_history(timestamp with time zone,text,integer)",
            "system_stability_history_summary(text)",
            "system_stability_indicators()",
            "system_stability_items_analytics(integer)",
            "system_stability_items_importing(integer)",
            "system_stability_notify(text)",
            "system_stability_record(text[],text[],timestamp with time zone,interval)",
            "system_stability_release_hold()",
            "system_stability_request_hold()",
            "system_stability_signals(integer)",
            "system_stability_slugs()",
            "system_stability_typical()",
        ]
    )


async def test_installing_over_the_old_design_removes_it(
    db_dsn: str, conn: Conn, hints_after: HintsAfter
) -> None:
    """The per-row triggers and their functions go, and so does the one-step hold's
    set_hold(boolean); the result is a fresh install's."""
    fresh = await _installed_objects(conn)
    # The old releases' objects, as their stability.sql left them (bodies simplified).
    await conn.execute(
        """
        DROP TRIGGER system_stability_hint_insert ON public.import_job;
        DROP TRIGGER system_stability_hint_update ON public.import_job;
        DROP TRIGGER system_stability_hint_delete ON public.import_job;
        DROP TRIGGER system_stability_hint_truncate ON public.import_job;
        DROP TRIGGER system_stability_hint_insert ON worker.tasks;
        DROP TRIGGER system_stability_hint_update ON worker.tasks;
        DROP TRIGGER system_stability_hint_delete ON worker.tasks;
        DROP TRIGGER system_stability_hint_truncate ON worker.tasks;
        DROP TRIGGER system_stability_hint_insert ON worker.command_registry;
        DROP TRIGGER system_stability_hint_update ON worker.command_registry;
        DROP TRIGGER system_stability_hint_delete ON worker.command_registry;
        DROP TRIGGER system_stability_hint_truncate ON worker.command_registry;
        DROP FUNCTION public.system_stability_notify(text);
        DROP FUNCTION public.system_stability_request_hold();
        DROP FUNCTION public.system_stability_confirm_hold();
        DROP FUNCTION public.system_stability_release_hold();
        DROP SEQUENCE public.system_stability_hold;
        CREATE FUNCTION public.system_stability_set_hold(held boolean) RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            PERFORM pg_notify('system_stability', '{"hold":true}');
        END $$;
        CREATE OR REPLACE FUNCTION public.system_stability_hint() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            PERFORM pg_notify('system_stability', TG_ARGV[0]);
            RETURN NULL;
        END $$;
        CREATE FUNCTION worker.system_stability_task_hint() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            PERFORM pg_notify('system_stability', '{"table":"tasks"}');
            RETURN NULL;
        END $$;
        CREATE FUNCTION worker.system_stability_compile_commands() RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
        END $$;
        CREATE FUNCTION worker.system_stability_registry_hint() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            PERFORM worker.system_stability_compile_commands();
            PERFORM pg_notify('system_stability', '{"table":"command_registry"}');
            RETURN NULL;
        END $$;
        CREATE TRIGGER system_stability_hint_insert AFTER INSERT ON worker.tasks
        FOR EACH ROW WHEN (NEW.state = 'pending')
        EXECUTE FUNCTION worker.system_stability_task_hint();
        CREATE TRIGGER system_stability_hint_update AFTER UPDATE ON worker.tasks
        FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
        EXECUTE FUNCTION worker.system_stability_task_hint();
        CREATE TRIGGER system_stability_hint_delete AFTER DELETE ON worker.tasks
        FOR EACH ROW EXECUTE FUNCTION worker.system_stability_task_hint();
        CREATE TRIGGER system_stability_hint_truncate AFTER TRUNCATE ON worker.tasks
        FOR EACH STATEMENT EXECUTE FUNCTION public.system_stability_hint('{"table":"tasks"}');
        CREATE FUNCTION public.import_job_state_is_active(state text) RETURNS boolean
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        RETURN coalesce(state NOT IN ('finished', 'rejected', 'failed'), false);
        CREATE FUNCTION worker.task_state_is_active(state text) RETURNS boolean
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        RETURN coalesce(state IN ('pending', 'processing', 'waiting'), false);
        CREATE TRIGGER system_stability_hint_insert AFTER INSERT ON public.import_job
        FOR EACH ROW WHEN (public.import_job_state_is_active(NEW.state::text))
        EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');
        CREATE TRIGGER system_stability_hint_update AFTER UPDATE ON public.import_job
        FOR EACH ROW EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');
        CREATE TRIGGER system_stability_hint_delete AFTER DELETE ON public.import_job
        FOR EACH ROW EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');
        CREATE TRIGGER system_stability_hint_truncate AFTER TRUNCATE ON public.import_job
        FOR EACH STATEMENT
        EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');
        CREATE OR REPLACE TRIGGER system_stability_hint
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON worker.command_registry
        FOR EACH STATEMENT EXECUTE FUNCTION worker.system_stability_registry_hint();
        -- The release before hints by rows: one plain statement trigger per table.
        CREATE TRIGGER system_stability_hint
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON worker.tasks
        FOR EACH STATEMENT EXECUTE FUNCTION public.system_stability_hint('{"table":"tasks"}');
        -- A table's hint function that this config no longer has.
        CREATE FUNCTION public.system_stability_hint_gone_00000000() RETURNS trigger
        LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
        COMMENT ON FUNCTION public.system_stability_hint_gone_00000000()
        IS 'stability-relay: hint rows of public.gone: a hint when a statement changed one.';
        """
    )
    assert await _installed_objects(conn) != fresh

    await install(db_dsn, demo_schema=True, park=False)

    assert await _installed_objects(conn) == fresh
    await _take_hold(conn)
    assert (
        await hints_after(
            "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')"
        )
        == []
    )


async def test_installing_over_the_one_step_hold_upgrades_it(
    db_dsn: str, conn: Conn, hints_after: HintsAfter
) -> None:
    """A development build's flag (MAXVALUE 1) and set_hold(boolean) become a fresh
    install's: a request can then set the flag to 2."""
    fresh = await _installed_objects(conn)
    # As that build's stability.sql and roles.sql left them (body simplified).
    await conn.execute(
        """
        DROP FUNCTION public.system_stability_request_hold();
        DROP FUNCTION public.system_stability_confirm_hold();
        DROP FUNCTION public.system_stability_release_hold();
        DROP SEQUENCE public.system_stability_hold;
        CREATE SEQUENCE public.system_stability_hold
            AS smallint MINVALUE 0 MAXVALUE 1 START 0 NO CYCLE;
        GRANT SELECT ON SEQUENCE public.system_stability_hold TO PUBLIC;
        CREATE FUNCTION public.system_stability_set_hold(held boolean) RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            PERFORM pg_catalog.setval('public.system_stability_hold', held::int);
        END $$;
        REVOKE EXECUTE ON FUNCTION public.system_stability_set_hold(boolean) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION public.system_stability_set_hold(boolean) TO stability_relay;
        """
    )

    await install(db_dsn, demo_schema=True, park=False)

    assert await _installed_objects(conn) == fresh
    assert await hints_after("SELECT public.system_stability_request_hold()") == [HOLD_TRUE]
    assert await _hold_flag(conn) == REQUESTED


async def test_concurrent_installs_into_one_database_succeed(db_dsn: str) -> None:
    results = await asyncio.gather(*(install(db_dsn, demo_schema=True) for _ in range(4)))
    assert all(result == results[0] for result in results)


async def test_install_without_the_system_tables_is_refused_naming_each(
    pg_admin_dsn: str,
) -> None:
    dbname = f"test_{uuid.uuid4().hex}"
    async with await psycopg.AsyncConnection.connect(pg_admin_dsn, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        try:
            with pytest.raises(InstallRefused) as refused:
                await install(psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=dbname))
            assert refused.value.problems == [
                "activities[0].table: table public.import_job does not exist",
                "activities[1].table: table worker.tasks does not exist",
                "activities[1].tables[0]: table worker.command_registry does not exist",
            ]
            async with await psycopg.AsyncConnection.connect(
                psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=dbname)
            ) as target:  # refused before anything was written
                cursor = await target.execute(
                    "SELECT count(*) FROM pg_proc WHERE proname LIKE 'system_stability%'"
                )
                assert await cursor.fetchone() == (0,)
        finally:
            await admin.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname))
            )


async def test_connection_errors_do_not_reveal_the_password(pg_admin_dsn: str) -> None:
    missing_db = psycopg.conninfo.make_conninfo(
        pg_admin_dsn, dbname="no_such_database", password="s3cret-pw"
    )
    with pytest.raises(DatabaseUnavailable) as unavailable:
        await install(missing_db)
    with pytest.raises(RelayError) as malformed:
        await install("host=localhost password=s3cret-pw port")
    for error in (unavailable.value, malformed.value):
        assert "s3cret-pw" not in str(error)


def test_sql_files_are_found_next_to_the_package() -> None:
    names = {path.name for path in sql_dir().glob("*.sql")}
    assert {"demo_schema.sql", "hold.sql", "roles.sql"} <= names


# -- privileges -------------------------------------------------------------------------------

# What writers' statements call: hold.sql's and each table's hint function.
WRITERS_FUNCTIONS = [
    "system_stability_hint",
    "system_stability_notify",
    *(
        hint_rows_function(table).split(".")[1]
        for table in ("public.import_job", "worker.command_registry", "worker.tasks")
    ),
]


async def test_relay_functions_pin_their_search_path(conn: Conn) -> None:
    cursor = await conn.execute(
        """
        SELECT proname, prosecdef, proconfig FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace AND proname = ANY(%s) ORDER BY proname
        """,
        ([*SECURITY_DEFINER_FUNCTIONS, *WRITERS_FUNCTIONS],),
    )
    rows = {name: (secdef, config) for name, secdef, config in await cursor.fetchall()}
    assert set(rows) == {*SECURITY_DEFINER_FUNCTIONS, *WRITERS_FUNCTIONS}
    for name in SECURITY_DEFINER_FUNCTIONS:
        secdef, config = rows[name]
        assert secdef is True, name
        assert config[0] == PINNED_SEARCH_PATH[0], name
        # The hold functions wait at most a second for each other's advisory lock.
        hold_function = name in HOLD_FUNCTIONS
        assert config[1:] == (["lock_timeout=1s"] if hold_function else []), name
    # Deliberately neither: both cost every writer's every statement (the benchmark cited in
    # sql/hold.sql). It runs with the writer's rights and qualifies every name instead.
    for name in WRITERS_FUNCTIONS:
        assert rows[name] == (False, None), name


@pytest.fixture
async def login_role(conn: Conn) -> AsyncIterator[Callable[[bool], Awaitable[str]]]:
    """Create login roles, in or out of stability_relay; drop them afterwards."""
    created: list[str] = []

    async def create(relay_member: bool) -> str:
        name = f"relay_test_{uuid.uuid4().hex[:12]}"
        membership = sql.SQL("IN ROLE stability_relay" if relay_member else "")
        await conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN {}").format(sql.Identifier(name), membership)
        )
        created.append(name)
        return name

    yield create
    for name in created:
        role = sql.Identifier(name)
        await conn.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(role, role))


async def _table_writer(conn: Conn, login_role: Callable[[bool], Awaitable[str]]) -> str:
    """A login role that may write tasks and import jobs, and nothing more."""
    user = await login_role(False)
    role = sql.Identifier(user)
    await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA worker TO {}").format(role))
    await conn.execute(
        sql.SQL(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON worker.tasks, public.import_job TO {}"
        ).format(role)
    )
    return user


async def test_a_writer_with_only_table_privileges_can_write_held_or_not(
    db_dsn: str,
    conn: Conn,
    hints_after: HintsAfter,
    login_role: Callable[[bool], Awaitable[str]],
) -> None:
    """It needs no grant on the flag or the registry; it reads the flag as PUBLIC may."""
    writer_dsn = psycopg.conninfo.make_conninfo(db_dsn, user=await _table_writer(conn, login_role))
    writes = [
        (
            "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')",
            TASKS_HINT,
        ),
        ("UPDATE worker.tasks SET state = 'processing'", TASKS_HINT),
        ("DELETE FROM worker.tasks", TASKS_HINT),
        (
            "INSERT INTO public.import_job (slug, state) VALUES ('a', 'preparing_data')",
            IMPORT_JOB_HINT,
        ),
        ("UPDATE public.import_job SET state = 'processing_data'", IMPORT_JOB_HINT),
        ("DELETE FROM public.import_job", IMPORT_JOB_HINT),
    ]
    async with await psycopg.AsyncConnection.connect(writer_dsn, autocommit=True) as writer:
        for statement, hint in writes:
            assert await hints_after(statement, on=writer) == [hint], statement
        await _request_hold(conn)
        for statement, hint in writes:
            assert await hints_after(statement, on=writer) == [hint], statement
        assert await _confirm_hold(conn) is True
        for statement, _ in writes:
            assert await hints_after(statement, on=writer) == [], statement


async def test_a_writer_that_cannot_read_the_flag_still_hints(
    db_dsn: str,
    conn: Conn,
    hints_after: HintsAfter,
    login_role: Callable[[bool], Awaitable[str]],
) -> None:
    """Without the PUBLIC grant the flag reads as NULL: a hint too many, never one lost."""
    await conn.execute("REVOKE SELECT ON SEQUENCE public.system_stability_hold FROM PUBLIC")
    await _take_hold(conn)
    writer_dsn = psycopg.conninfo.make_conninfo(db_dsn, user=await _table_writer(conn, login_role))
    async with await psycopg.AsyncConnection.connect(writer_dsn, autocommit=True) as writer:
        assert await _hold_flag(writer) is None
        assert await hints_after(
            "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')",
            on=writer,
        ) == [TASKS_HINT]
        assert await hints_after(
            "INSERT INTO public.import_job (slug, state) VALUES ('a', 'approved')", on=writer
        ) == [IMPORT_JOB_HINT]


async def test_relay_role_can_call_the_functions_and_listen_but_not_read_tables(
    db_dsn: str, login_role: Callable[[bool], Awaitable[str]]
) -> None:
    user = await login_role(True)
    relay_dsn = psycopg.conninfo.make_conninfo(db_dsn, user=user)
    async with await psycopg.AsyncConnection.connect(relay_dsn, autocommit=True) as relay:
        assert await is_stable(relay) is True
        assert await json_rows(relay, "get_analytics_tasks_in_progress") == []
        assert await json_rows(relay, "get_import_jobs_in_progress") == []
        await relay.execute(f"LISTEN {CHANNEL}")
        await relay.execute("SELECT pg_notification_queue_usage(), pg_listening_channels()")
        await _request_hold(relay)
        assert await _hold_flag(relay) == REQUESTED
        assert await _confirm_hold(relay) is True
        assert await _hold_flag(relay) == HELD
        await _release_hold(relay)
        assert await _hold_flag(relay) == NO_HOLD
        for table in ("public.import_job", "worker.tasks", "worker.command_registry"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await relay.execute(
                    sql.SQL("SELECT 1 FROM {}").format(sql.Identifier(*table.split(".")))
                )


async def test_other_roles_cannot_call_the_functions_or_set_the_flag(
    db_dsn: str, conn: Conn, login_role: Callable[[bool], Awaitable[str]]
) -> None:
    user = await login_role(False)
    other_dsn = psycopg.conninfo.make_conninfo(db_dsn, user=user)
    async with await psycopg.AsyncConnection.connect(other_dsn, autocommit=True) as other:
        for function in SECURITY_DEFINER_FUNCTIONS:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await other.execute(
                    sql.SQL("SELECT * FROM {}()").format(sql.Identifier("public", function))
                )
        for value in (HELD, REQUESTED):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await other.execute("SELECT setval('public.system_stability_hold', %s)", (value,))
        assert await _hold_flag(other) == NO_HOLD
    assert await _hold_flag(conn) == NO_HOLD
