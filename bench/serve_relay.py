"""The relay under test, in its own process: ``python -m bench.serve_relay --dsn DSN``.

Prints ``{"port": N, "pid": P}`` once serving, then answers JSON commands on stdin
(``clients``, ``tracemalloc``); closing stdin stops it the way SIGTERM would.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tracemalloc
from typing import Any

from bench.common import emit, raise_nofile, stdin_lines

_previous: list[tracemalloc.Snapshot] = []


def tracemalloc_report(limit: int = 25) -> dict[str, Any]:
    """What the traced heap holds, and the biggest growths since the previous report."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    top: list[dict[str, Any]] = []
    if _previous:
        for diff in snapshot.compare_to(_previous[-1], "lineno")[:limit]:
            top.append(
                {
                    "where": str(diff.traceback),
                    "kib": round(diff.size_diff / 1024, 1),
                    "count": diff.count_diff,
                }
            )
    _previous[:] = [snapshot]
    return {"traced_kib": round(total / 1024, 1), "top": top}


# The fan-out benchmark's feed: payloads on bench_feed as unnamed events, `event: ready` on
# connect (the swarm's sign that a client is in).
BENCH_FEED = {
    "path": "/bench/feed",
    "channels": ["bench_feed"],
    "events": "unnamed",
    "on_connect": "event",
    "connect_event": "ready",
}


def channel_hinted_seed(channels: list[str]) -> list[dict[str, Any]]:
    """The seed profile's activities (the installed ones), hinted as the statbus profile is:
    by the system's own channels, no trigger of ours."""
    from relay.config.profiles import load_profile

    hints = {"triggers": [], "channels": channels}
    return [
        {**activity.model_dump(exclude_none=True), "hints": hints}
        for activity in load_profile("seed").activities
    ]


async def control(commands: dict[str, Any]) -> None:
    """Answer commands on stdin until it closes."""
    reader = await stdin_lines()
    while line := await reader.readline():
        import json

        request = json.loads(line)
        handler = commands.get(request["cmd"])
        emit(handler() if handler else {"error": f"unknown command {request['cmd']}"})


async def main(args: argparse.Namespace) -> None:
    from relay import logs
    from relay.app import Relay
    from relay.config import Config

    tree: dict[str, Any] = {
        "database": {"dsn": args.dsn, "application_name": args.name},
        "http": {"listen": f"127.0.0.1:{args.port}", "max_clients": 20_000},
        # Every bench client comes from 127.0.0.1: the per-address cap on long polls (100 by
        # default) would hold the waiters bench below its 1,000.
        "wait": {"max_waiters_per_address": None},
        "logging": {"level": "warning", "format": "json"},
    }
    if args.feed:
        feed: dict[str, Any] = dict(BENCH_FEED)
        if args.feed_coalesce:
            feed["coalesce"] = {"window": args.feed_coalesce, "key": "type"}
        tree["feeds"] = [feed]
    if args.hint_channels:
        tree["activities"] = channel_hinted_seed(args.hint_channels.split(","))
    config = Config.model_validate(tree)
    logs.configure(config.logging, config.secrets(), stream=sys.stderr)
    relay = Relay(config)
    await relay.start()
    await relay.listener.connected.wait()
    try:
        emit({"port": relay.port})
        await control(
            {
                "clients": lambda: {"clients": len(relay.hub)},
                "tracemalloc": tracemalloc_report,
                "queries": lambda: {
                    "details_queries": relay.metrics.details_queries._value.get(),
                    "stability_queries": relay.metrics.truth_queries._value.get(),
                },
            }
        )
    finally:
        await relay.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="stability-relay")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--feed", action="store_true", help=f"serve {BENCH_FEED['path']}")
    parser.add_argument("--feed-coalesce", metavar="WINDOW", help='coalesce it by "type"')
    parser.add_argument(
        "--hint-channels",
        metavar="A,B",
        help="the seed's activities, hinted by these channels instead of our triggers",
    )
    arguments = parser.parse_args()
    raise_nofile()
    if arguments.tracemalloc:
        tracemalloc.start(8)
    asyncio.run(main(arguments))
