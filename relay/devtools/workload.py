"""A simulated workload for the demo: import jobs and analytics tasks moving through states.

Each cycle imports one job (growing ``imported_rows``), then runs the analytics tasks
the real system derives after an import, then stays idle, so the relay flips between
processing and stable every few seconds. Every step is its own committed transaction,
as the real worker's are.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import psycopg

from relay.logs import get_logger

log = get_logger("relay.devtools.workload")

IMPORT_STATES = ("upload_completed", "preparing_data", "analysing_data", "processing_data")
ANALYTICS = ("derive_statistical_unit", "derive_reports", "derive_statistical_history")


async def simulate(dsn: str, period: float = 4.0, *, seed: int | None = None) -> None:
    """Run cycles until cancelled. ``period`` is roughly each phase's length in seconds."""
    rng = random.Random(seed)
    cycle = 0
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cycle += 1
            await _import_one_job(conn, cycle, period, rng)
            await _run_analytics(conn, period, rng)
            await _housekeeping(conn)
            await asyncio.sleep(period)


async def _import_one_job(
    conn: psycopg.AsyncConnection[Any], cycle: int, period: float, rng: random.Random
) -> None:
    total = rng.randrange(20_000, 200_000, 1000)
    slug = f"demo-import-{cycle}"
    await conn.execute(
        "INSERT INTO public.import_job (slug, description, state, total_rows, imported_rows, "
        "priority) VALUES (%s, %s, 'upload_completed', %s, 0, %s)",
        (slug, f"Demo upload #{cycle}", total, cycle),
    )
    for state in IMPORT_STATES[1:]:
        await asyncio.sleep(period / 8)
        await conn.execute("UPDATE public.import_job SET state = %s WHERE slug = %s", (state, slug))
    steps = 10
    for step in range(1, steps + 1):
        await asyncio.sleep(period / 2 / steps)
        imported = total * step // steps
        await conn.execute(
            "UPDATE public.import_job SET imported_rows = %s, "
            "import_completed_pct = round(100.0 * %s / total_rows, 2), updated_at = now() "
            "WHERE slug = %s",
            (imported, imported, slug),
        )
    await conn.execute("UPDATE public.import_job SET state = 'finished' WHERE slug = %s", (slug,))
    log.info("demo_import_finished", slug=slug, rows=total)


async def _run_analytics(
    conn: psycopg.AsyncConnection[Any], period: float, rng: random.Random
) -> None:
    ids = []
    for command in rng.sample(ANALYTICS, k=2):
        cursor = await conn.execute(
            "INSERT INTO worker.tasks (command, state, payload) VALUES (%s, 'pending', '{}') "
            "RETURNING id",
            (command,),
        )
        row = await cursor.fetchone()
        assert row is not None
        ids.append(row[0])
    for task_id in ids:
        await conn.execute("UPDATE worker.tasks SET state = 'processing' WHERE id = %s", (task_id,))
        await asyncio.sleep(period / 4)
        await conn.execute(
            "UPDATE worker.tasks SET state = 'completed', processed_at = now(), "
            "duration_ms = %s WHERE id = %s",
            (round(period / 4 * 1000), task_id),
        )


async def _housekeeping(conn: psycopg.AsyncConnection[Any]) -> None:
    # A maintenance task: not analytics, so it never makes the system "processing".
    await conn.execute(
        "INSERT INTO worker.tasks (command, state) VALUES ('task_cleanup', 'completed')"
    )
    await conn.execute(
        "DELETE FROM worker.tasks WHERE state = 'completed' AND id < "
        "(SELECT max(id) - 50 FROM worker.tasks)"
    )
