"""Beyond one machine: three relays on one PostgreSQL, and NOTIFY's cost per listener."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg

from bench.common import Child, Database, percentile
from bench.fanout import flip_states, prepare, start_server
from bench.triggers import SQL, pgbench


@dataclass
class ScaleoutResult:
    relays: int
    clients: int
    connected: int
    connect_s: float
    listen_connections: int
    min_fraction: float
    p50_ms: float
    p99_ms: float
    max_ms: float


def run_three_relays(
    db: Database, swarm: Child, *, clients: int, flips: int, relays: int = 3
) -> ScaleoutResult:
    """`relays` relay processes, `clients` split evenly among them, `flips` commits."""
    prepare(db.dsn)
    names = [f"relay-{i}" for i in range(relays)]
    servers = [start_server("relay", db.dsn, name, "--name", name) for name in names]
    try:
        share = clients // relays
        connected, seconds = 0, 0.0
        for _server, port in servers:
            answer = swarm.ask({"cmd": "connect", "port": port, "n": share, "timeout": 180}, 200)
            connected = answer["connected"]  # the swarm's total so far
            seconds += answer["seconds"]
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name ~ '^relay-[0-9]+$' AND query LIKE '%is_system_stable%'"
            ).fetchone()
            listen_connections = int(row[0]) if row else 0
        marks = flip_states(db.dsn, swarm, flips)
        report = swarm.ask({"cmd": "report", "flips": marks}, timeout=120)
        swarm.ask({"cmd": "close"})
    finally:
        for server, _port in servers:
            server.close()
    lat = [x for f in report["flips"] for x in f["latencies_ms"]]
    return ScaleoutResult(
        relays,
        share * relays,
        connected,
        round(seconds, 3),
        listen_connections,
        min(f["fraction"] for f in report["flips"]),
        percentile(lat, 50),
        percentile(lat, 99),
        max(lat),
    )


@dataclass
class NotifyCost:
    listeners: int
    tps: float
    latency_ms: float
    delivered_per_listener: float


def run_notify_cost(
    db: Database, *, listeners: tuple[int, ...] = (1, 50, 200), seconds: float = 5.0
) -> list[NotifyCost]:
    """Throughput of a notifying transaction (4 pgbench clients) with M LISTENing sessions."""
    results = []
    script = str(SQL / "notify.pgbench")
    for m in listeners:
        args = ("--dsn", db.dsn, "--count", str(m))
        with Child(f"listeners-{m}", "bench.listeners", *args) as child:
            child.read(60)
            tps = pgbench(db.dsn, 4, seconds, script)
            time.sleep(0.5)
            assert child.proc.stdin is not None
            child.proc.stdin.close()
            received = int(child.read(60)["received"])
        results.append(NotifyCost(m, tps, 4 * 1000 / tps, received / m / (tps * seconds)))
        print(f"  NOTIFY with {m:>3} listeners: {tps:8.0f} commits/s")
    return results


def as_dict(obj: Any) -> dict[str, Any]:
    return dict(obj.__dict__)
