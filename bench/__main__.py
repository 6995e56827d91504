"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks, print, write docs/.

Full run (about 10 minutes): fan-out at 1,000 and 10,000 clients, relay then baseline, 20 flips
each; trigger cost, 5 rounds of 8 s; details, 3 bursts of 1,000; three relays with 10,002
clients; NOTIFY with 1, 50 and 200 listeners. ``--quick`` (about 3 minutes): 1,000 clients,
10 flips, 3 rounds of 4 s, three relays with 3,000 clients. ``unhinted``: on statbus's shape,
how long changes that no channel carries take to reach the relay (12 trials, 5 quick).
``feeds``: statbus's enriched /api/sse/import-jobs under a burst of 1,000 commits (100 and
1,000 clients; 100 quick), and a client replayed after 5 s away from a feed at 100 payloads/s.
``readcost``: the seed profile's truth read at 10 million finished tasks (1 million quick),
without and with the index ``db install`` suggests (a database of its own). ``writers``: the
writer's cost per profile (bench/writer_cost.py: every profile's schema in a database of its
own, pg-boss's and graphile-worker's made by their npm packages), 5 rounds of 8 s (3 of 4 s
quick): about 18 minutes more (5 quick: 319 s measured).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import report
from bench.common import ROOT, Child, database, raise_nofile
from bench.details_load import run_details
from bench.fanout import run_fanout, run_feed
from bench.feeds import describe, run_feeds
from bench.read_cost import describe as describe_read_cost
from bench.read_cost import run_read_cost
from bench.scaleout import run_notify_cost, run_three_relays
from bench.triggers import VARIANTS, run_triggers
from bench.unhinted import run_unhinted
from bench.waiters import run_waiters
from bench.writer_cost import describe as describe_writers
from bench.writer_cost import run_writer_cost

PARTS = (
    "fanout",
    "triggers",
    "details",
    "scaleout",
    "notify",
    "unhinted",
    "waiters",
    "feeds",
    "readcost",
    "writers",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 clients, fewer rounds")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where to write")
    args = parser.parse_args(argv)
    limit = raise_nofile()
    quick = args.quick
    clients = (1_000,) if quick else (1_000, 10_000)
    if limit < max(clients) + 200:
        print(f"open-file limit {limit} is too low for {max(clients):,} clients", file=sys.stderr)
        return 2
    command = "python -m bench" + (" --quick" if quick else "")
    if args.only != list(PARTS):
        command += " --only " + " ".join(args.only)
    results: dict[str, Any] = {}
    started = time.monotonic()
    with database() as db, Child("clients", "bench.sse_clients") as swarm:
        with psycopg.connect(db.dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            results["pg_version"] = row[0] if row else "?"
        if "fanout" in args.only:
            print("fan-out")
            results["fanout"] = []
            for n in clients:
                for kind in ("relay", "relay-public", "baseline", "floor"):
                    result = run_fanout(db, swarm, kind, n, 10 if quick else 20)
                    results["fanout"].append(result)
                    s = result.summary()
                    print(
                        f"  {kind:>8} {n:>6,} clients: connect {s['connect_s']:.2f} s, "
                        f"RSS {s['rss_per_client_kib']:.1f} KiB/client, worst flip "
                        f"{100 * s['min_fraction']:.1f}%, p50 {s['p50_ms']} ms, "
                        f"p99 {s['p99_ms']} ms, max {s['max_ms']} ms"
                    )
            top = max(clients)
            print(f"feed under a flood: {top:,} clients, 1,000 payloads/s")
            results["feed"] = []
            for coalesce, sample in ((None, 20), ("100ms", 1)):
                feed = run_feed(
                    db,
                    swarm,
                    top,
                    rate=1000,
                    seconds=3 if quick else 5,
                    sample=sample,
                    coalesce=coalesce,
                )
                results["feed"].append(feed)
                print(
                    f"  coalesce {coalesce}: {feed.connected:,} clients, "
                    f"{100 * feed.delivered:.1f}% delivered ({feed.complete_clients:,} got all "
                    f"{feed.sent:,}, {feed.got_last:,} the last), sent at {feed.send_rate:.0f}/s, "
                    f"p50 {feed.p50_ms} ms, p99 {feed.p99_ms} ms, "
                    f"RSS {feed.rss_per_client_kib:.1f} KiB/client"
                )
        if "triggers" in args.only:
            print("trigger cost")
            t = run_triggers(db, rounds=3 if quick else 5, seconds=4 if quick else 8)
            results["triggers"] = t
            for variant in VARIANTS:
                tps, ratio = t.median_tps(variant), t.ratio(variant)
                print(f"  {variant:>18}: {tps:.0f}/s, ratio {ratio:.2f}")
        if "details" in args.only:
            print("details under load")
            d = run_details(db, requests=1_000, bursts=2 if quick else 3)
            results["details"] = d
            print(
                f"  {d.requests:,} requests: {d.relay_queries:.0f} queries "
                f"({d.statement_calls} statement calls), p50 {d.p50_ms:.0f} ms, "
                f"p99 {d.p99_ms:.0f} ms"
            )
            for f in d.flips:
                print(
                    f"  across a flip, {f.requests:,} requests: {f.states} states, "
                    f"{f.relay_queries:.0f} queries, {f.stale} stale, {f.ahead} ahead, "
                    f"{f.wall_s:.2f} s"
                )
        if "scaleout" in args.only:
            print("three relays")
            s = run_three_relays(db, swarm, clients=3_000 if quick else 10_002, flips=10)
            results["scaleout"] = s
            print(
                f"  {s.clients:,} clients on {s.relays} relays: worst flip "
                f"{100 * s.min_fraction:.1f}%, p50 {s.p50_ms:.1f} ms, p99 {s.p99_ms:.1f} ms"
            )
        if "unhinted" in args.only:
            print("statbus profile: commit to relay, by what carries the change")
            dsn = db.server.create_database("statbus_unhinted")
            results["unhinted"] = run_unhinted(dsn, trials=5 if quick else 12)
        if "waiters" in args.only:
            print("waiters: 1,000 long polls and 100 fresh reads a second")
            results["waiters"] = run_waiters(db, seconds=3 if quick else 5)
        if "feeds" in args.only:
            print("feeds: import-jobs under a burst, replay after a disconnect")
            dsn = db.server.create_database("statbus_feeds")
            results["feeds"] = run_feeds(dsn, clients=(100,) if quick else (100, 1_000))
            for line in describe(results["feeds"]):
                print("  " + line)
        if "readcost" in args.only:
            rows = 1_000_000 if quick else 10_000_000
            print(f"read cost: the seed profile's truth read at {rows:,} finished tasks")
            dsn = db.server.create_database("readcost")
            results["readcost"] = run_read_cost(dsn, rows=rows)
            for line in describe_read_cost(results["readcost"]):
                print("  " + line)
        if "writers" in args.only:
            rounds, seconds = (3, 4.0) if quick else (5, 8.0)
            print(f"writer cost per profile: {rounds} rounds of {seconds:g} s")
            results["writers"] = run_writer_cost(
                db.server.create_database, rounds=rounds, seconds=seconds
            )
            for line in describe_writers(results["writers"]):
                print("  " + line)
        if "notify" in args.only:
            print("NOTIFY cost per listener")
            results["notify"] = run_notify_cost(db, seconds=3 if quick else 5)
    path = report.write(results, command, args.docs)
    print(f"wrote {path} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
