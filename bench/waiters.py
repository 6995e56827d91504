"""Waiters: 1,000 open long polls plus 100 fresh reads a second, against one relay.

The relay runs in its own process (``bench.serve_relay``); the clients here, on aiohttp. While
an import job runs, 1,000 clients wait on ``/api/system-status/wait?until=stable`` and fresh
reads (``?fresh=1``) arrive at 100 a second; then the job's end is committed. Reported: the
fresh reads the relay issued to the database (``relay_fresh_reads_total``: shared by the
requests in line) against the requests made, the fresh reads' latency, and how long after the
end's commit the waiters were answered.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench.common import Child, Database, percentile

START = "INSERT INTO public.import_job (slug, state) VALUES ('bench-wait', 'processing_data')"
FINISH = "UPDATE public.import_job SET state = 'finished' WHERE slug = 'bench-wait'"


@dataclass
class WaitersResult:
    waiters: int
    fresh_rate: float
    seconds: float
    fresh_requests: int
    fresh_reads_issued: int
    fresh_p50_ms: float
    fresh_p99_ms: float
    released: int
    release_p50_ms: float
    release_p99_ms: float


async def _metric(http: aiohttp.ClientSession, base: str, name: str) -> float:
    async with http.get(base + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return 0.0


async def _run(dsn: str, port: int, waiters: int, rate: float, seconds: float) -> WaitersResult:
    base = f"http://127.0.0.1:{port}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM public.import_job WHERE slug = 'bench-wait'")
        conn.execute(START)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        answered: list[float] = []

        async def wait() -> None:
            url = base + "/api/system-status/wait?until=stable&timeout=120s"
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=180)) as response:
                await response.read()
                if response.status == 200:
                    answered.append(time.monotonic())

        async def fresh(latencies: list[float]) -> None:
            started = time.monotonic()
            async with http.get(base + "/api/system-status?fresh=1") as response:
                await response.read()
            latencies.append(1000 * (time.monotonic() - started))

        waiting = [asyncio.create_task(wait()) for _ in range(waiters)]
        deadline = asyncio.get_running_loop().time() + 60
        while (held := await _metric(http, base, "relay_waiters")) < waiters:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"the relay holds {held:.0f} of {waiters} waiters after 60 s")
            await asyncio.sleep(0.1)
        issued_before = await _metric(http, base, "relay_fresh_reads_total")
        latencies: list[float] = []
        reads = []
        started = time.monotonic()
        for k in range(round(rate * seconds)):
            lag = started + k / rate - time.monotonic()
            if lag > 0:
                await asyncio.sleep(lag)
            reads.append(asyncio.create_task(fresh(latencies)))
        await asyncio.gather(*reads)
        issued = await _metric(http, base, "relay_fresh_reads_total") - issued_before
        with psycopg.connect(dsn, autocommit=True) as conn:
            finished = time.monotonic()
            conn.execute(FINISH)
        await asyncio.gather(*waiting)
    release = [1000 * (t - finished) for t in answered]
    return WaitersResult(
        waiters=waiters,
        fresh_rate=rate,
        seconds=seconds,
        fresh_requests=len(latencies),
        fresh_reads_issued=round(issued),
        fresh_p50_ms=percentile(latencies, 50),
        fresh_p99_ms=percentile(latencies, 99),
        released=len(answered),
        release_p50_ms=percentile(release, 50) if release else float("nan"),
        release_p99_ms=percentile(release, 99) if release else float("nan"),
    )


def run_waiters(
    db: Database, *, waiters: int = 1000, rate: float = 100, seconds: float = 5
) -> WaitersResult:
    child = Child("waiters-relay", "bench.serve_relay", "--dsn", db.dsn)
    try:
        port = int(child.read(60)["port"])
        result = asyncio.run(_run(db.dsn, port, waiters, rate, seconds))
    finally:
        child.close()
    print(
        f"  {result.waiters:,} waiters, {result.fresh_requests} fresh reads in "
        f"{result.seconds:g} s: {result.fresh_reads_issued} database reads issued, fresh p50 "
        f"{result.fresh_p50_ms:.1f} ms / p99 {result.fresh_p99_ms:.1f} ms; {result.released:,} "
        f"released after the end's commit: p50 {result.release_p50_ms:.0f} ms, "
        f"p99 {result.release_p99_ms:.0f} ms"
    )
    return result
