"""The writer-cost benchmark (bench/writer_cost.py) at a tiny size, so that its code and its
pgbench scripts cannot rot: every profile, pg-boss's and graphile-worker's schemas made by
their npm packages, one round of 1 s per variant with 2 clients. No figure of speed is
asserted: that each variant ran, the hints it sent, and what the scripts left in the tables."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from bench import npm_queues, report
from bench.writer_cost import NAMES, describe, run_writer_cost

LIVES = 10
# What each profile's table holds after the last job lives (the hint count's, under held):
# every job ended the way its queue ends one (a finished row, or none).
LEFT = {
    "seed": "SELECT state::text, count(*) FROM worker.tasks GROUP BY 1",
    "procrastinate": "SELECT status::text, count(*) FROM public.procrastinate_jobs GROUP BY 1",
    "pgqueuer": "SELECT status::text, count(*) FROM public.pgqueuer GROUP BY 1",
    "river": "SELECT state::text, count(*) FROM public.river_job GROUP BY 1",
    "oban": "SELECT state::text, count(*) FROM public.oban_jobs GROUP BY 1",
    "pgboss": "SELECT state::text, count(*) FROM pgboss.job GROUP BY 1",
    "graphile_worker": "SELECT locked_by, count(*) FROM graphile_worker._private_jobs GROUP BY 1",
}
ENDED = {
    "procrastinate": [("succeeded", LIVES)],
    "pgqueuer": [],
    "river": [("completed", LIVES)],
    "oban": [("completed", LIVES)],
    "pgboss": [("completed", LIVES)],
    "graphile_worker": [],
}


def test_writer_cost_bench_at_tiny_size(pg_admin_dsn: str, tmp_path: Path) -> None:
    prefix = f"bench_{uuid.uuid4().hex[:12]}"
    dsns: dict[str, str] = {}

    def create_database(name: str) -> str:
        full = f"{prefix}_{name}"
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(full)))
        dsns[name.removeprefix("writer_")] = psycopg.conninfo.make_conninfo(
            pg_admin_dsn, dbname=full
        )
        return dsns[name.removeprefix("writer_")]

    try:
        result = run_writer_cost(create_database, rounds=1, seconds=1, clients=2, lives=LIVES)
        left = {}
        for name, query in LEFT.items():
            if name in result.tps:
                with psycopg.connect(dsns[name]) as conn:
                    left[name] = sorted(conn.execute(query).fetchall())
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            for name in dsns:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(f"{prefix}_writer_{name}")
                    )
                )

    # Only an npm queue may be left out, and only when it cannot run here, saying why.
    for name, why in result.skipped.items():
        assert name in npm_queues.PACKAGES and why == npm_queues.missing(name), (name, why)
    assert sorted([*result.tps, *result.skipped]) == sorted(NAMES)
    for name in result.tps:
        expected = ("none", "ours") if name == "statbus" else ("none", "ours", "held")
        assert result.variants(name) == expected, name
        for variant in expected:
            assert len(result.tps[name][variant]) == 1 and result.median_tps(name, variant) > 0
            assert result.median_cpu_ms(name, variant) > 0
        # Each life changes a row the profile sees in three statements (enqueue, fetch,
        # finish), each hinting once unless held; the idle fetch changes none and is silent.
        hints = {"none": 0.0, "ours": 3.0, "held": 0.0}
        assert result.hints[name] == {v: hints[v] for v in expected}, name
    for name, rows in left.items():
        if name == "seed":
            assert {state for state, _ in rows} <= {"completed"}, rows
        else:
            assert rows == ENDED[name], (name, rows)

    lines = describe(result)
    assert len(lines) == 2 + len(NAMES)
    for line, name in zip(lines[2:], NAMES, strict=True):
        assert line.startswith(f"| {name} |"), line
    text = report.write(
        {"writers": result}, "python -m bench --quick --only writers", tmp_path
    ).read_text()
    assert "## 9. Writer cost per profile" in text
    assert "| pgboss |" in text and "| graphile_worker |" in text
    assert '"writers"' in (tmp_path / "benchmarks.json").read_text()
