"""What an idle worker costs the relay: ``python -m bench.idle_workers [--seconds N]``.

A real worker of each queue (pgqueuer's QueueManager, procrastinate's worker; their packages
make their schemas) runs with nothing to do, with their default settings, beside a relay of
the queue's profile (in this process, default settings but the heartbeat and the reconcile,
set an hour apart: each reads every 5 s by default whatever the writers do); its reads
are counted over ``--seconds`` after both have started and the relay's start-up poll is over.
Two hint setups each:

* ``before``: the previous release's, a plain statement trigger per table that hints on every
  statement, whether it changed a row or not (pgqueuer: on UPDATE, beside pgqueuer's own
  channel ch_pgqueuer, as its profile had it);
* ``after``: this release's triggers, which hint only for a statement that changed a row an
  activity can see (pgqueuer: every statement, ch_pgqueuer no longer listened to).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import sql

from bench.common import database

PLAIN_TRIGGER = (
    "CREATE OR REPLACE TRIGGER bench_plain_hint AFTER {events} ON {table} "
    "FOR EACH STATEMENT EXECUTE FUNCTION public.system_stability_hint({hint})"
)


def _activities(queue: str, variant: str) -> list[dict[str, Any]]:
    from relay.config.profiles import load_profile

    activities = [a.model_dump(exclude_none=True) for a in load_profile(queue).activities]
    if queue == "pgqueuer" and variant == "before":
        for activity in activities:
            activity["hints"] = {"channels": ["ch_pgqueuer"], "triggers": ["update"]}
    return activities


async def _prepare(dsn: str, queue: str, variant: str) -> None:
    """Our SQL for the variant's activities; for ``before``, ours disabled and the previous
    release's plain statement trigger in their place."""
    from relay.config.activities import Activity
    from relay.source.install import install

    activities = [Activity.model_validate(a) for a in _activities(queue, variant)]
    await install(dsn, activities=activities, park=False)
    table = activities[0].table
    assert table is not None
    bare = table.split(".")[1]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP TRIGGER IF EXISTS bench_plain_hint ON {}").format(
                sql.Identifier(*table.split("."))
            )
        )
        await conn.execute(
            sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(sql.Identifier(*table.split(".")))
        )
        if variant == "before":
            events = "UPDATE" if queue == "pgqueuer" else "INSERT OR UPDATE OR DELETE OR TRUNCATE"
            await conn.execute(
                sql.SQL(PLAIN_TRIGGER).format(
                    events=sql.SQL(events),
                    table=sql.Identifier(*table.split(".")),
                    hint=sql.Literal(f'{{"table":"{bare}"}}'),
                )
            )
            cursor = await conn.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass"
                " AND tgname LIKE 'system\\_stability\\_hint\\_%%'",
                [table],
            )
            for (name,) in await cursor.fetchall():
                await conn.execute(
                    sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(
                        sql.Identifier(*table.split(".")), sql.Identifier(name)
                    )
                )


@contextlib.asynccontextmanager
async def _idle_worker(queue: str, dsn: str) -> AsyncIterator[None]:
    if queue == "pgqueuer":
        from pgqueuer import Job, PsycopgDriver, Queries, QueueManager

        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            manager = QueueManager(Queries(PsycopgDriver(conn)))

            @manager.entrypoint("bench.idle")
            async def idle(job: Job) -> None:
                return None

            task = asyncio.create_task(manager.run(), name="bench-pgqueuer-worker")
            try:
                yield
            finally:
                manager.shutdown.set()
                await asyncio.wait_for(task, timeout=30)
    else:
        import procrastinate

        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

        @app.task(name="bench.idle")
        async def idle() -> None:
            return None

        async with app.open_async():
            task = asyncio.create_task(
                app.run_worker_async(install_signal_handlers=False), name="bench-procrastinate"
            )
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _schema(queue: str, dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        if queue == "pgqueuer":
            from pgqueuer import PsycopgDriver, Queries

            await Queries(PsycopgDriver(conn)).install()
        else:
            from procrastinate.schema import SchemaManager

            await conn.execute(SchemaManager.get_schema())


async def measure(dsn: str, queue: str, variant: str, seconds: float) -> tuple[float, float]:
    """The relay's reads in ``seconds`` with an idle worker, and the wall time measured."""
    from relay.app import Relay
    from relay.config import Config

    await _prepare(dsn, queue, variant)
    config = Config.model_validate(
        {
            # The heartbeat and the reconcile (each a read every 5 s by default, whatever the
            # writers do) set apart: the reads counted are those the idle worker causes.
            "database": {"dsn": dsn, "heartbeat_interval": "3600s", "heartbeat_timeout": "5s"},
            "http": {"listen": "127.0.0.1:0"},
            "stability": {"reconcile_interval": "3600s"},
            "activities": _activities(queue, variant),
        }
    )
    relay = Relay(config)
    registry = relay.metrics.registry

    def sample(name: str) -> float:
        return registry.get_sample_value(name) or 0.0

    try:
        await relay.start()
        async with _idle_worker(queue, dsn):
            await asyncio.sleep(5)  # both started; the relay's start-up poll is over
            for _ in range(300):  # at most 30 s
                if not sample("relay_polling"):
                    break
                await asyncio.sleep(0.1)
            before, started = sample("relay_stability_queries_total"), time.monotonic()
            await asyncio.sleep(seconds)
            reads = sample("relay_stability_queries_total") - before
            return reads, time.monotonic() - started
    finally:
        await relay.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_workers", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    with database("idle_workers") as db:
        for queue in ("pgqueuer", "procrastinate"):
            dsn = db.server.create_database(f"idle_{queue}")
            asyncio.run(_schema(queue, dsn))
            for variant in ("before", "after"):
                reads, wall = asyncio.run(measure(dsn, queue, variant, args.seconds))
                print(
                    f"  {queue:>13} {variant:>6}: {reads:.0f} relay reads in {wall:.0f} s "
                    f"with an idle worker, {reads / wall:.3f} per second"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
