"""The feeds benchmark (bench/feeds.py) at a tiny size, so that its code cannot rot: a real
relay process on the statbus fixture, 3 clients of /api/sse/import-jobs through a burst of 20
commits, and a replay client away for a moment from a feed at 50 payloads a second."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from bench import report
from bench.feeds import describe, run_feeds


def test_feeds_bench_at_tiny_size(pg_admin_dsn: str, tmp_path: Path) -> None:
    name = f"bench_feeds_{uuid.uuid4().hex}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        result = run_feeds(
            psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=name),
            clients=(3,),
            updates=20,
            rate=50.0,
            seconds=2.0,
            disconnect_at=0.6,
            gap=0.6,
        )
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    (burst,) = result.bursts
    assert (burst.connected, burst.ended_on_final, burst.ordered) == (3, 3, 3), burst
    assert burst.notified >= 20
    assert 1 <= burst.enrich_calls <= 20, burst
    assert burst.statement_calls is None or abs(burst.statement_calls - burst.enrich_calls) <= 1
    assert burst.final_p50_ms is not None and burst.final_p50_ms >= 0
    replay = result.replay
    assert replay.sent == 100
    assert (replay.lost, replay.duplicated, replay.out_of_order, replay.resyncs) == (0, 0, 0, 0)
    assert replay.before > 0 and replay.missed > 0 and replay.replayed > 0, replay
    assert replay.caught_up_ms is not None
    assert len(describe(result)) == 2
    text = report.write({"feeds": result}, "python -m bench --only feeds", tmp_path).read_text()
    assert "## 7. Feeds" in text and "| 3 |" in text
