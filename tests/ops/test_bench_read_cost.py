"""The read-cost benchmark (bench/read_cost.py) at a tiny size, so that its code cannot rot:
the seed profile's truth read over 2,000 finished tasks, without and with the suggested
index (no figure is asserted: the plan and the section are)."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from bench import report
from bench.read_cost import describe, run_read_cost


def test_read_cost_bench_at_tiny_size(pg_admin_dsn: str, tmp_path: Path) -> None:
    name = f"bench_readcost_{uuid.uuid4().hex}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        result = run_read_cost(
            psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=name),
            rows=2_000,
            reads_without=5,
            reads_with=5,
        )
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    assert result.rows == 2_000 and result.warned is None  # too small to warn about
    assert result.create_index.startswith('CREATE INDEX CONCURRENTLY "tasks_analytics_active_idx"')
    without, with_index = result.phases["without"], result.phases["with"]
    assert "tasks" in without.plan and "tasks_analytics_active_idx" in with_index.plan
    assert without.reads == with_index.reads == 5
    assert 0 < without.p50_ms <= without.p99_ms <= without.max_ms
    assert len(describe(result)) == 5
    text = report.write({"readcost": result}, "python -m bench --only readcost", tmp_path)
    assert "## 8. Reads as tables grow" in text.read_text()
    assert result.create_index in text.read_text()
