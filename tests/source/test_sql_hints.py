"""The hint triggers against a real PostgreSQL: which write statements hint, and how often."""

from __future__ import annotations

from typing import LiteralString

import pytest

from tests.source.sql_support import (
    COMMAND_REGISTRY_HINT,
    IMPORT_JOB_HINT,
    TASKS_HINT,
    WRITES,
    Conn,
    HintsAfter,
    seed,
)

# Triggers on each table hint after a write statement that changed a row an activity can see:
# of an activity's table, a row in one of its active states before or after the change (its
# filter left out); of any other table it reads, any row. The relay answers a hint by reading
# is_system_stable(), so a spurious hint costs one cheap query and a missed one a wrong answer;
# a statement that changed no visible row (an idle worker's poll) costs nothing.

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


@pytest.mark.parametrize(("statement", "expected"), WRITES)
async def test_every_write_statement_sends_its_tables_hint(
    conn: Conn, hints_after: HintsAfter, statement: LiteralString, expected: list[str]
) -> None:
    """Whatever it changes: tasks of any queue, any state, any column."""
    await seed(conn)
    assert sorted(await hints_after(statement)) == sorted(expected)


@pytest.mark.parametrize(("statement", "expected"), NO_ROW_WRITES)
async def test_a_statement_that_changes_no_row_sends_no_hint(
    conn: Conn, hints_after: HintsAfter, statement: LiteralString, expected: str
) -> None:
    """An idle worker's poll (an UPDATE or DELETE of nothing) keeps the relay idle too; the
    same statement that does change a row of the table hints."""
    await seed(conn)
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
