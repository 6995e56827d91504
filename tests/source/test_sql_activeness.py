"""The generated activeness read against a real PostgreSQL: is_system_stable() over the demo
schema's import jobs and analytics tasks, and the seed's detail functions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.source.sql_support import (
    ACTIVE_IMPORT_STATES,
    ACTIVE_TASK_STATES,
    COMMAND_OF_QUEUE,
    Conn,
    insert_task,
    is_stable,
    json_rows,
)

# The demo schema (sql/demo_schema.sql) takes statbus's import and task states.
from tests.statbus_driver import IMPORT_JOB_STATES, TASK_STATES


async def test_system_is_stable_when_nothing_is_queued(conn: Conn) -> None:
    assert await is_stable(conn) is True


@pytest.mark.parametrize("state", IMPORT_JOB_STATES)
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
