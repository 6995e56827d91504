"""Read cost: the seed profile's truth read as ``worker.tasks`` grows, without and with the index
that ``db install`` suggests.

The relay's one read, ``SELECT public.system_stability_activities()``, runs on every hint and
every reconcile. For the seed's analytics activity it is ``EXISTS`` over the active rows of
``worker.tasks``; finished tasks are never active but stay in the table. Here ``rows`` finished
tasks are loaded (``INSERT ... SELECT generate_series``, with ``session_replication_role =
replica`` so the foreign key to the command registry is not checked per row; the figure is the
load's wall time), then ``active`` analytics tasks in ``pending`` (appended last, as new tasks
are: a scan that stops at the first active row still reads the whole table first), then
``VACUUM ANALYZE``. The read is timed ``reads`` times on one connection (after 5 unmeasured),
then again after ``CREATE INDEX CONCURRENTLY`` of the suggested index. p50 and p99 of the
client's wall time per read (loopback; the round trip is part of it).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from bench.common import median, percentile
from relay.config.profiles import load_profile
from relay.source.activities.readcost import READ_SCAN_ROWS, read_query, read_scans
from relay.source.install import install

TRUTH = "SELECT public.system_stability_activities()"
PINNED = "SET search_path = pg_catalog, pg_temp"


@dataclass
class Phase:
    """The reads with or without the index."""

    plan: str
    reads: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class ReadCostResult:
    rows: int
    active: int
    load_s: float
    vacuum_s: float
    index_s: float
    table_mb: float
    index_mb: float
    warned: str | None  # what db install's check names, at this size (None: no warning)
    create_index: str
    phases: dict[str, Phase] = field(default_factory=dict)


def _plan(conn: psycopg.Connection[Any], query: str) -> str:
    """The plan's scan of worker.tasks, as EXPLAIN says it (the first line naming it)."""
    conn.execute(PINNED)
    lines = [str(row[0]) for row in conn.execute(f"EXPLAIN {query}".encode())]
    named = [line.strip().lstrip("-> ").strip() for line in lines if "tasks" in line]
    return (named[0] if named else lines[0]).split("  (")[0]


def _timed(conn: psycopg.Connection[Any], reads: int) -> tuple[float, float, float]:
    for _ in range(5):
        conn.execute(TRUTH).fetchone()
    times = []
    for _ in range(reads):
        started = time.perf_counter()
        row = conn.execute(TRUTH).fetchone()
        times.append(1000 * (time.perf_counter() - started))
        assert row is not None and row[0]["analytics"] is True, row
    return median(times), percentile(times, 99), max(times)


def run_read_cost(
    dsn: str,
    *,
    rows: int = 10_000_000,
    active: int = 3,
    reads_without: int = 100,
    reads_with: int = 1_000,
) -> ReadCostResult:
    """``dsn``: an empty database; the demo schema and the seed profile are installed in it."""
    activities = load_profile("seed").activities
    asyncio.run(install(dsn, activities=activities, demo_schema=True, park=False))
    [analytics] = [activity for activity in activities if activity.name == "analytics"]
    query = read_query(analytics)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TRIGGER IF EXISTS import_job_progress_notify ON public.import_job")
        started = time.monotonic()
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(
                "INSERT INTO worker.tasks (command, state, created_at, processed_at) "
                "SELECT 'derive_reports', 'completed', now(), now() "
                "FROM generate_series(1, %s)",
                (rows,),
            )
        load_s = time.monotonic() - started
        conn.execute(
            "INSERT INTO worker.tasks (command, state) "
            "SELECT 'derive_statistical_unit', 'pending' FROM generate_series(1, %s)",
            (active,),
        )
        started = time.monotonic()
        conn.execute("VACUUM ANALYZE worker.tasks")
        vacuum_s = time.monotonic() - started
        scans = asyncio.run(_scans(dsn, analytics))
        warned = scans[0].plan if scans else None
        statement = scans[0].create_index if scans else _suggested(analytics)
        result = ReadCostResult(
            rows=rows,
            active=active,
            load_s=load_s,
            vacuum_s=vacuum_s,
            index_s=0.0,
            table_mb=_size_mb(conn, "worker.tasks"),
            index_mb=0.0,
            warned=warned,
            create_index=statement,
        )
        timed = _timed(conn, reads_without)
        result.phases["without"] = Phase(_plan(conn, query), reads_without, *timed)
        started = time.monotonic()
        conn.execute(statement.encode())
        result.index_s = time.monotonic() - started
        result.index_mb = _size_mb(conn, "worker.tasks_analytics_active_idx")
        timed = _timed(conn, reads_with)
        result.phases["with"] = Phase(_plan(conn, query), reads_with, *timed)
    return result


async def _scans(dsn: str, analytics: Any) -> list[Any]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return list(await read_scans(conn, [analytics]))


def _suggested(analytics: Any) -> str:
    from relay.source.activities.indexes import suggested_index

    return suggested_index(analytics, with_filter=False)


def _size_mb(conn: psycopg.Connection[Any], relation: str) -> float:
    row = conn.execute(
        "SELECT pg_catalog.pg_relation_size(%s::pg_catalog.regclass)", (relation,)
    ).fetchone()
    return (int(row[0]) if row else 0) / 2**20


def describe(r: ReadCostResult) -> list[str]:
    lines = [
        f"{r.rows:,} finished tasks + {r.active} active: loaded in {r.load_s:.1f} s, "
        f"VACUUM ANALYZE {r.vacuum_s:.1f} s, table {r.table_mb:.0f} MiB",
        "db install's check: "
        + (f"warns ({r.warned})" if r.warned else f"no warning (at most {READ_SCAN_ROWS:,} rows)"),
    ]
    for name, phase in r.phases.items():
        lines.append(
            f"{name} the index: {phase.plan}; {phase.reads} reads, p50 {phase.p50_ms:.2f} ms, "
            f"p99 {phase.p99_ms:.2f} ms, max {phase.max_ms:.2f} ms"
        )
    lines.append(f"index built in {r.index_s:.1f} s, {r.index_mb:.2f} MiB")
    return lines
