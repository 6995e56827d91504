"""What the tests of the relay's SQL (tests/source/test_sql_*.py) share: the demo schema's
states, the hints and the hold flag's values, the writes that hint, and helpers that read the
functions and drive the hold. Their fixtures are in tests/source/conftest.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any, LiteralString

import psycopg
import pytest

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

ACTIVE_IMPORT_STATES = {
    "upload_completed",
    "preparing_data",
    "analysing_data",
    "approved",
    "processing_data",
}
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


async def received_before_sentinel(conn: Conn, listener: Conn) -> list[str]:
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


# Every kind of write statement, with the hints it sends; run after seed().
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


async def seed(conn: Conn) -> None:
    """An active and an inactive import job; an analytics and a maintenance task, pending."""
    await conn.execute(
        "INSERT INTO public.import_job (slug, state)"
        " VALUES ('active', 'processing_data'), ('done', 'finished');"
        "INSERT INTO worker.tasks (command, state)"
        " VALUES ('derive_reports', 'pending'), ('task_cleanup', 'pending')"
    )


async def request_hold(conn: Conn) -> None:
    await conn.execute("SELECT public.system_stability_request_hold()")


async def confirm_hold(conn: Conn) -> bool:
    cursor = await conn.execute("SELECT public.system_stability_confirm_hold()")
    row = await cursor.fetchone()
    assert row is not None
    confirmed: bool = row[0]
    return confirmed


async def take_hold(conn: Conn) -> None:
    """As a relay takes it: the request, committed (on an autocommit ``conn``), then the
    confirmation in a transaction of its own."""
    await request_hold(conn)
    assert await confirm_hold(conn) is True


async def release_hold(conn: Conn) -> None:
    await conn.execute("SELECT public.system_stability_release_hold()")


async def set_flag(conn: Conn, value: int | None) -> None:
    """Set the flag directly, as its owner; None makes it read NULL (never set)."""
    if value is None:
        await conn.execute("SELECT setval('public.system_stability_hold', 0, false)")
    else:
        await conn.execute("SELECT setval('public.system_stability_hold', %s)", (value,))


async def hold_flag(conn: Conn) -> int | None:
    cursor = await conn.execute(
        "SELECT pg_sequence_last_value('public.system_stability_hold'::regclass)"
    )
    row = await cursor.fetchone()
    assert row is not None
    flag: int | None = row[0]
    return flag
