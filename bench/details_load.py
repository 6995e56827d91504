"""Details under load: 1,000 concurrent ``/api/system-status/details`` requests.

Counts the database work they cause two ways: the relay's ``relay_details_queries_total``
and, where the server has it, ``pg_stat_statements`` (calls of the details statement).

Then across flips: half of a burst is sent, a commit flips the state, and the other half is
sent once the live stream has said so. Each answer names the state it reflects (``seq``);
the target is one round of queries per state, and no answer to a request sent after the
stream's flip that says the state before it (``stale``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    flips: list[FlipBurst] = field(default_factory=list)


@dataclass
class FlipBurst:
    """One burst across a flip: what the relay read, and what the answers said."""

    requests: int
    states: int  # the states the live stream said during the burst
    relay_queries: float
    stale: int  # answers after the stream's flip that said the state before it
    ahead: int  # answers that said the database had moved past their seq
    wall_s: float


def statement_calls(dsn: str) -> int | None:
    """Executions of the details statement so far, or None without pg_stat_statements."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            row = conn.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                "WHERE query LIKE '%system_stability_details(%' "
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


START = (
    "INSERT INTO public.import_job (slug, state) VALUES ('details-flip', 'processing_data') "
    "ON CONFLICT (slug) DO UPDATE SET state = 'processing_data'"
)
# Every other job and task is finished too, so that the flip is from processing to stable.
FINISH = (
    "UPDATE public.import_job SET state = 'finished'",
    "UPDATE worker.tasks SET state = 'completed'",
)


async def flip_burst(
    dsn: str, base: str, n: int, queries: Callable[[], float], *, to_stable: bool
) -> FlipBurst:
    """n requests: half before a commit that flips the state, half once the stream says so."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.get(base + "/api/system-status/live") as stream,
    ):
        states: dict[int, bool | None] = {}
        first = await _next_state(stream)
        states[first["seq"]] = first["stable"]

        async def one() -> dict[str, Any]:
            async with session.get(base + DETAILS) as response:
                body: dict[str, Any] = await response.json()
                return body

        before_queries = queries()
        started = time.monotonic()
        early = [asyncio.create_task(one()) for _ in range(n // 2)]
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            for statement in FINISH if to_stable else (START,):
                await conn.execute(statement)
        flip = await _next_state(stream)
        states[flip["seq"]] = flip["stable"]
        late = [asyncio.create_task(one()) for _ in range(n - n // 2)]
        answers = await asyncio.gather(*early, *late)
        wall = time.monotonic() - started
        spent = queries() - before_queries
        with contextlib.suppress(TimeoutError):  # any state the burst itself brought on
            while True:
                more = await asyncio.wait_for(_next_state(stream), 0.2)
                states[more["seq"]] = more["stable"]
    after = answers[len(early) :]
    return FlipBurst(
        requests=n,
        states=len(states),
        relay_queries=spent,
        stale=sum(1 for a in after if a.get("system_stable") != flip["stable"]),
        ahead=sum(1 for a in answers if a.get("ahead")),
        wall_s=wall,
    )


async def _next_state(stream: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next stability event's JSON (an unnamed event; comments and retry lines skipped)."""
    while True:
        data, named = "", False
        while line := (await stream.content.readline()).decode().rstrip("\n"):
            if line.startswith("event:"):
                named = True
            elif line.startswith("data:"):
                data += line[5:].strip()
        if data and not named:
            state: dict[str, Any] = json.loads(data)
            return state


def run_details(
    db: Database, *, requests: int = 1000, bursts: int = 3, flips: int = 2
) -> DetailsResult:
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
        result = DetailsResult(
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
        base = f"http://127.0.0.1:{port}"

        def relay_queries() -> float:
            return float(server.ask({"cmd": "queries"})["details_queries"])

        for flip in range(flips):
            time.sleep(1.2)  # a new cache window
            across = flip_burst(db.dsn, base, requests, relay_queries, to_stable=flip % 2 == 0)
            result.flips.append(asyncio.run(across))
        return result
    finally:
        server.close()


def as_dict(result: DetailsResult) -> dict[str, Any]:
    return {**result.__dict__, "flips": [dict(f.__dict__) for f in result.flips]}
