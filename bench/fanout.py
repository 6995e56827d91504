"""Fan-out: N SSE clients, K state flips made by real commits, relay vs the naive baseline."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from bench.common import Child, Database, percentile, rss_kib

FLIP_SLUG = "bench-flip"
SERVERS = {
    "relay": "bench.serve_relay",
    # The same relay with its streams kept in their aiohttp handlers (relay/fanout/takeover.py),
    # as on an aiohttp the canary has not passed on.
    "relay-public": "bench.serve_relay",
    "baseline": "bench.baseline_relay",
    "floor": "bench.floor_server",  # one pre-encoded write per client per NOTIFY, nothing else
}


@dataclass
class FanoutResult:
    server: str
    clients: int
    connected: int
    connect_s: float
    rss_before_kib: int
    rss_after_kib: int
    flips: list[dict[str, Any]] = field(default_factory=list)
    rss_clients: int = 0  # connected when the RSS was read

    @property
    def rss_per_client_kib(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / max(1, self.rss_clients)

    @property
    def min_fraction(self) -> float:
        return min((f["fraction"] for f in self.flips), default=0.0)

    def latencies(self) -> list[float]:
        return [x for f in self.flips for x in f["latencies_ms"]]

    def summary(self) -> dict[str, Any]:
        lat = self.latencies()
        return {
            "server": self.server,
            "clients": self.clients,
            "connected": self.connected,
            "connect_s": self.connect_s,
            "rss_per_client_kib": round(self.rss_per_client_kib, 2),
            "flips": len(self.flips),
            "min_fraction": self.min_fraction,
            "p50_ms": round(percentile(lat, 50), 1) if lat else None,
            "p99_ms": round(percentile(lat, 99), 1) if lat else None,
            "max_ms": round(max(lat), 1) if lat else None,
            "per_flip_p99_ms": [round(f["p99_ms"] or -1, 1) for f in self.flips],
        }


def prepare(dsn: str) -> None:
    """Make the system stable (whatever ran before) and create the job the flips toggle."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE public.import_job SET state = 'finished' WHERE state <> 'finished'")
        conn.execute("DELETE FROM worker.tasks WHERE state IN ('pending', 'processing', 'waiting')")
        conn.execute(
            "INSERT INTO public.import_job (slug, state) VALUES (%s, 'finished') "
            "ON CONFLICT (slug) DO UPDATE SET state = 'finished'",
            (FLIP_SLUG,),
        )
        # No hold left by an earlier relay: the baseline does not know holds and would get
        # no hints (a relay ends its hold when it stops; this is for one that was killed).
        conn.execute("SELECT public.system_stability_release_hold()")


def start_server(kind: str, dsn: str, name: str | None = None, *extra: str) -> tuple[Child, int]:
    env = {"RELAY_SSE_TAKEOVER": "off"} if kind == "relay-public" else {}
    child = Child(name or kind, SERVERS[kind], "--dsn", dsn, *extra, env=env)
    port = int(child.read(60)["port"])
    return child, port


def run_fanout(
    db: Database, swarm: Child, kind: str, n: int, flips: int, *, settle: float = 1.0
) -> FanoutResult:
    """One server, n clients, `flips` commits that each flip the state."""
    prepare(db.dsn)
    time.sleep(0.3)  # the stable state from prepare() has landed everywhere
    server, port = start_server(kind, db.dsn)
    try:
        # Warm-up: the first connections import and allocate what every later one shares.
        swarm.ask({"cmd": "connect", "port": port, "n": 20})
        swarm.ask({"cmd": "close"})
        time.sleep(settle)
        before = rss_kib(server.pid)
        connect = swarm.ask({"cmd": "connect", "port": port, "n": n, "timeout": 180}, timeout=200)
        time.sleep(settle)
        after = rss_kib(server.pid)
        # Connecting is timed twice (best of two): one run is at the mercy of the neighbours.
        swarm.ask({"cmd": "close"})
        time.sleep(settle)
        again = swarm.ask({"cmd": "connect", "port": port, "n": n, "timeout": 180}, timeout=200)
        seconds = min(connect["seconds"], again["seconds"])
        result = FanoutResult(kind, n, again["connected"], seconds, before, after)
        result.rss_clients = connect["connected"]
        for answer in (connect, again):
            if answer["failed"]:
                print(f"  {kind}: {answer['failed']} connections failed: {answer['failures']}")
        marks = flip_states(db.dsn, swarm, flips)
        report = swarm.ask({"cmd": "report", "flips": marks}, timeout=120)
        result.flips = report["flips"]
        swarm.ask({"cmd": "close"})
        return result
    finally:
        server.close()


def flip_states(dsn: str, swarm: Child, flips: int) -> list[list[float]]:
    """Commit `flips` state changes; after each, wait until every client has it (or 10 s).

    The clock starts right before the statement is sent: commit-to-client latency includes
    the commit itself, the NOTIFY, the relay's read of the truth and the fan-out.
    """
    marks: list[list[float]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for k in range(1, flips + 1):
            job_state = "processing_data" if k % 2 else "finished"
            t0 = time.monotonic()
            conn.execute(
                "UPDATE public.import_job SET state = %s WHERE slug = %s", (job_state, FLIP_SLUG)
            )
            swarm.ask({"cmd": "wait", "flip": k, "timeout": 10})
            marks.append([k, t0])
            time.sleep(0.2)
    return marks


@dataclass
class FeedResult:
    """A feed under a flood: ``rate`` payloads a second for ``seconds``, to ``clients``."""

    clients: int
    connected: int
    coalesce: str | None  # the feed's coalescing window (by payload type), if any
    rate: float
    seconds: float
    sent: int
    send_rate: float  # what the producer achieved
    delivered: float  # payloads received over payloads sent times clients
    complete_clients: int  # clients that got every payload
    got_last: int  # clients that got the last payload (coalescing keeps it)
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    rss_per_client_kib: float


FEED_PATH = "/bench/feed"
# A payload the size of statbus's pipeline_progress (about 200 bytes).
FEED_PAD = '"type":"pipeline_progress","phases":[{"phase":"is_deriving_statistical_units",' + (
    '"active":true,"step":"derive_statistical_unit","total":1200,"completed":600}]'
)


def run_feed(
    db: Database,
    swarm: Child,
    n: int,
    *,
    rate: float,
    seconds: float,
    sample: int = 20,
    coalesce: str | None = None,
) -> FeedResult:
    """The relay with one feed; n clients on it; payloads NOTIFYed at ``rate`` per second,
    each its own commit. Latency: from just before a payload's statement is sent to its
    arrival at a client, for every ``sample``-th payload (with coalescing, of those that
    survive it)."""
    prepare(db.dsn)
    extra = ["--feed", *(["--feed-coalesce", coalesce] if coalesce else [])]
    server, port = start_server("relay", db.dsn, "feed-relay", *extra)
    try:
        swarm.ask({"cmd": "connect", "port": port, "n": 20, "path": FEED_PATH, "sample": sample})
        swarm.ask({"cmd": "close"})
        time.sleep(1.0)
        before = rss_kib(server.pid)
        connect = {"cmd": "connect", "port": port, "n": n, "timeout": 180}
        answer = swarm.ask({**connect, "path": FEED_PATH, "sample": sample}, timeout=200)
        time.sleep(1.0)
        after = rss_kib(server.pid)
        marks, total, took = produce(db.dsn, rate, seconds, sample)
        time.sleep(3.0)  # the tail reaches every client
        report = swarm.ask({"cmd": "feed_report", "sent": marks, "total": total}, timeout=120)
        swarm.ask({"cmd": "close"})
    finally:
        server.close()
    return FeedResult(
        clients=n,
        connected=answer["connected"],
        coalesce=coalesce,
        rate=rate,
        seconds=seconds,
        sent=total,
        send_rate=total / took,
        delivered=report["delivered"],
        complete_clients=report["complete_clients"],
        got_last=report["got_last"],
        p50_ms=report["p50_ms"],
        p99_ms=report["p99_ms"],
        max_ms=report["max_ms"],
        rss_per_client_kib=(after - before) / max(1, answer["connected"]),
    )


def produce(
    dsn: str, rate: float, seconds: float, sample: int
) -> tuple[list[list[float]], int, float]:
    """NOTIFY ``rate`` payloads a second on the feed's channel; the sampled send times."""
    total = round(rate * seconds)
    marks: list[list[float]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.monotonic()
        for k in range(total):
            lag = started + k / rate - time.monotonic()
            if lag > 0:
                time.sleep(lag)
            t0 = time.monotonic()
            conn.execute("SELECT pg_notify('bench_feed', %s)", (f'{{"k":{k},{FEED_PAD}}}',))
            if k % sample == 0 or k == total - 1:
                marks.append([k, t0])
        took = time.monotonic() - started
    return marks, total, took
