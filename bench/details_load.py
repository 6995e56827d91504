"""Details under load: 1,000 concurrent ``/api/system-status/details`` requests.

Counts the database work they cause two ways: the relay's ``relay_details_queries_total``
and, where the server has it, ``pg_stat_statements`` (calls of the details statement).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import psycopg

from bench.common import Database, percentile
from bench.fanout import start_server

DETAILS = "/api/system-status/details"


@dataclass
class DetailsResult:
    requests: int
    bursts: int
    ok: int
    relay_queries: float
    statement_calls: int | None
    p50_ms: float
    p99_ms: float
    max_ms: float
    wall_s: float


def statement_calls(dsn: str) -> int | None:
    """Executions of the details statement so far, or None without pg_stat_statements."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            row = conn.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                "WHERE query LIKE '%get_import_jobs_in_progress()%' "
                "AND query NOT LIKE '%pg_stat_statements%'"
            ).fetchone()
        except psycopg.Error:
            return None
        return int(row[0]) if row else 0


def seed_activity(dsn: str) -> None:
    """Something to report: a few active import jobs and analytics tasks."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(5):
            conn.execute(
                "INSERT INTO public.import_job (slug, state, total_rows, imported_rows) "
                "VALUES (%s, 'processing_data', 1000, %s) ON CONFLICT (slug) DO NOTHING",
                (f"details-job-{n}", n * 100),
            )
            conn.execute(
                "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')"
            )


async def burst(url: str, n: int) -> tuple[list[float], int]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> tuple[float, bool]:
            started = time.monotonic()
            async with session.get(url) as response:
                await response.read()
                return (time.monotonic() - started) * 1000, response.status == 200

        results = await asyncio.gather(*(one() for _ in range(n)))
    return [ms for ms, _ in results], sum(1 for _, ok in results if ok)


def run_details(db: Database, *, requests: int = 1000, bursts: int = 3) -> DetailsResult:
    seed_activity(db.dsn)
    server, port = start_server("relay", db.dsn, "relay-details")
    try:
        url = f"http://127.0.0.1:{port}{DETAILS}"
        calls_before = statement_calls(db.dsn)
        queries_before = float(server.ask({"cmd": "queries"})["details_queries"])
        latencies: list[float] = []
        ok = 0
        started = time.monotonic()
        for b in range(bursts):
            if b:
                time.sleep(1.2)  # past the 1 s cache window: each burst may cost one round
            lat, good = asyncio.run(burst(url, requests))
            latencies += lat
            ok += good
        wall = time.monotonic() - started
        queries = float(server.ask({"cmd": "queries"})["details_queries"]) - queries_before
        calls_after = statement_calls(db.dsn)
        calls = None
        if calls_before is not None and calls_after is not None:
            calls = calls_after - calls_before
        return DetailsResult(
            requests * bursts,
            bursts,
            ok,
            queries,
            calls,
            percentile(latencies, 50),
            percentile(latencies, 99),
            max(latencies),
            wall,
        )
    finally:
        server.close()


def as_dict(result: DetailsResult) -> dict[str, Any]:
    return dict(result.__dict__)
