"""Writer cost per profile: ``python -m bench.writer_cost [--quick]``.

For each profile, in one run: a database of its own with the profile's schema (the seed's and
statbus's demo tables; the schemas procrastinate's and pgqueuer's PyPI packages create, and
pg-boss's and graphile-worker's npm packages, bench/npm_queues.py; River's and Oban's fixtures
in tests/fixtures/), ``db install`` with the profile's activities, then pgbench clients each
running a job's life on the profile's table (enqueue, fetch, finish, each its own
transaction, and an idle worker's empty fetch: bench/sql/<profile>_job.pgbench; the seed's
is the trigger-cost benchmark's churn) in three variants, rounds alternating so that drift
on a shared machine hits all of them alike:

* ``none``: our triggers disabled (the queue's own triggers, if any, stay on);
* ``ours``: ours enabled, the hold flag clear and no relay listening: every statement that
  changes a visible row notifies (the writer's worst case);
* ``held``: ours enabled, the flag held, as while a relay polls under load: no notification.

Then, per variant, the notifications a listener gets per job life (``hints_per_life``).

statbus's profile installs no trigger of ours (it listens to statbus's own channels): its
``ours`` and ``held`` rows run statbus's own notifying triggers instead (bench/sql/
statbus_triggers.sql), what its writers pay for the hints the profile uses.

pg-boss's jobs go to its partition pgboss.job_common (the parent is partitioned by queue
name), which our row triggers, cloned from pgboss.job, hint. When node or an npm package is
missing, its profile is left out with the reason (``WriterCost.skipped``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from bench import npm_queues
from bench.common import ROOT, database, median, server_cpu_seconds
from bench.triggers import (
    IMPORT_JOBS,
    SQL,
    add_import_jobs,
    pgbench,
    pgbench_gone,
    postmaster_pid,
)
from relay.devtools.embedded import pgbench_path

VARIANTS = ("none", "ours", "held")
MAX_CLIENTS = IMPORT_JOBS  # the seed's import jobs, pg-boss's queues, graphile's tasks
LIVES = 50  # job lives, one client, over which the hints are counted
END = "bench_writer_cost_end"  # the listener's own channel: every hint before it has arrived


@dataclass(frozen=True)
class Profile:
    name: str
    table: str  # the churned table (emptied between runs)
    scripts: tuple[str, ...]  # pgbench -f arguments, relative to bench/sql/
    # Triggers switched per variant: ours (system_stability_hint_*) or, for statbus, its own.
    prefix: str = "system_stability_hint_"
    tables: tuple[str, ...] = ()  # where they are, the churned table's by default
    channels: tuple[str, ...] = ("system_stability",)  # where those triggers notify


PROFILES = (
    Profile(
        "seed",
        "worker.tasks",
        ("worker_task.pgbench@9", "import_job.pgbench@1"),
        tables=("worker.tasks", "public.import_job"),
    ),
    Profile(
        "statbus",
        "worker.tasks",
        ("worker_task.pgbench@9", "import_job.pgbench@1"),
        prefix="bench_statbus_",
        tables=("worker.tasks", "public.import_job"),
        channels=("import_job", "worker_task_changed", "worker_tasks"),
    ),
    Profile("procrastinate", "public.procrastinate_jobs", ("procrastinate_job.pgbench",)),
    Profile("pgqueuer", "public.pgqueuer", ("pgqueuer_job.pgbench",)),
    Profile("river", "public.river_job", ("river_job.pgbench",)),
    Profile("oban", "public.oban_jobs", ("oban_job.pgbench",)),
    # pg-boss names the partition in its statements; ours are switched on the parent, which
    # passes ENABLE / DISABLE on to the clones.
    Profile("pgboss", "pgboss.job_common", ("pgboss_job.pgbench",), tables=("pgboss.job",)),
    Profile("graphile_worker", "graphile_worker._private_jobs", ("graphile_worker_job.pgbench",)),
)
NAMES = tuple(p.name for p in PROFILES)


@dataclass
class WriterCost:
    clients: int
    seconds: float
    rounds: int
    lives: int = LIVES  # over which the hints are counted
    tps: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # profile, variant
    # PostgreSQL's CPU per job life: less noisy than throughput on a shared machine.
    cpu_ms: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # profile: why it could not run
    # Notifications a listener received per job life (LIVES lives, one client), per variant.
    hints: dict[str, dict[str, float]] = field(default_factory=dict)

    def median_tps(self, profile: str, variant: str) -> float:
        return median(self.tps[profile][variant])

    def median_cpu_ms(self, profile: str, variant: str) -> float:
        return median(self.cpu_ms[profile][variant])

    def variants(self, profile: str) -> tuple[str, ...]:
        return tuple(v for v in VARIANTS if self.tps[profile][v])

    def ratio(self, profile: str, variant: str) -> float:
        return self.median_tps(profile, variant) / self.median_tps(profile, "none")


async def _pgqueuer_schema(dsn: str) -> None:
    from pgqueuer import PsycopgDriver, Queries

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await Queries(PsycopgDriver(conn)).install()


def _schema(profile: str, dsn: str) -> None:
    """The profile's tables, as its system makes them, and our SQL for its activities."""
    from relay.config.profiles import load_profile
    from relay.source.install import install

    with psycopg.connect(dsn, autocommit=True) as conn:
        if profile in ("seed", "statbus"):
            pass  # install's demo schema below
        elif profile == "procrastinate":
            from procrastinate.schema import SchemaManager

            conn.execute(SchemaManager.get_schema())
        elif profile == "pgqueuer":
            asyncio.run(_pgqueuer_schema(dsn))
        elif profile == "pgboss":
            queues = tuple(f"bench-{n}" for n in range(MAX_CLIENTS))
            npm_queues.pgboss_schema(dsn, (*queues, "bench-idle"))
        elif profile == "graphile_worker":
            npm_queues.graphile_worker_schema(dsn)
            # The tasks' rows, as a worker's start or a first add_job makes them; the script
            # takes bench-<n>'s id to be n + 1, as a worker looks its tasks' ids up once.
            for n in range(MAX_CLIENTS):
                conn.execute("SELECT graphile_worker.add_job(%s)", (f"bench-{n}",))
            ids = conn.execute(
                "SELECT identifier, id FROM graphile_worker._private_tasks ORDER BY id"
            ).fetchall()
            if ids != [(f"bench-{n}", n + 1) for n in range(MAX_CLIENTS)]:
                raise RuntimeError(f"graphile-worker's task ids are not 1 to 8: {ids}")
        else:
            conn.execute((ROOT / "tests" / "fixtures" / f"{profile}.sql").read_bytes())
    seed_shape = profile in ("seed", "statbus")
    activities = load_profile("seed" if seed_shape else profile).activities
    asyncio.run(install(dsn, activities=activities, demo_schema=seed_shape, park=False))
    if seed_shape:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TRIGGER IF EXISTS import_job_progress_notify ON public.import_job")
            conn.execute((SQL / "statbus_triggers.sql").read_text())
            add_import_jobs(conn)


def _switch(dsn: str, profile: Profile, variant: str) -> None:
    """Enable the variant's triggers on the profile's tables, disable the other switchable
    ones (ours, statbus's); set the hold flag (clear, or held)."""
    tables = profile.tables or (profile.table,)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in tables:
            rows = conn.execute(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = %s::regclass"
                " AND (tgname LIKE 'system\\_stability\\_hint%%' OR tgname LIKE 'bench\\_%%')",
                (table,),
            ).fetchall()
            for (name,) in rows:
                on = variant != "none" and name.startswith(profile.prefix)
                conn.execute(
                    sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(
                        sql.Identifier(*table.split(".")),
                        sql.SQL("ENABLE" if on else "DISABLE"),
                        sql.Identifier(name),
                    )
                )
        conn.execute(
            "SELECT setval('public.system_stability_hold', %s)", (1 if variant == "held" else 0,)
        )


def _reset(dsn: str, profile: Profile) -> None:
    """An empty job table (no trigger fires: a replica session), finished import jobs."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            sql.SQL("TRUNCATE {} CASCADE").format(sql.Identifier(*profile.table.split(".")))
        )
        if profile.name in ("seed", "statbus"):
            conn.execute("UPDATE public.import_job SET state = 'finished', imported_rows = 0")
        conn.execute("RESET session_replication_role")
        conn.execute("VACUUM ANALYZE")


def hints_per_life(dsn: str, profile: Profile, variant: str, lives: int = LIVES) -> float:
    """The notifications on the profile's channels per job life under ``variant``: one
    pgbench client, ``lives`` script runs (the seed's mix with a fixed random seed), one
    session LISTENing (PostgreSQL folds a transaction's identical ones into one)."""
    _switch(dsn, profile, variant)
    _reset(dsn, profile)
    with psycopg.connect(dsn, autocommit=True) as listener:
        for channel in (*profile.channels, END):
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        args = [str(pgbench_path()), "-n", "-c", "1", "-t", str(lives), "--random-seed", "1"]
        for script in profile.scripts:
            args += ["-f", str(SQL / script)]
        done = subprocess.run(
            [*args, dsn], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed: {done.stderr.strip()[-500:]}")
        # Delivered after everything pgbench committed: the count is complete when it comes.
        listener.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(END)))
        for received, notification in enumerate(listener.notifies(timeout=30)):
            if notification.channel == END:
                return received / lives
    raise TimeoutError(f"{profile.name}: the listener's own NOTIFY did not come back in 30 s")


def run_writer_cost(
    create_database: Callable[[str], str],
    *,
    rounds: int,
    seconds: float,
    clients: int = 4,
    only: tuple[str, ...] = (),
    lives: int = LIVES,
) -> WriterCost:
    if not 1 <= clients <= MAX_CLIENTS:
        raise ValueError(f"clients: 1 to {MAX_CLIENTS}, not {clients}")
    profiles = [p for p in PROFILES if not only or p.name in only]
    result = WriterCost(clients, seconds, rounds, lives)
    dsns = {}
    for profile in list(profiles):
        dsns[profile.name] = create_database(f"writer_{profile.name}")
        try:
            _schema(profile.name, dsns[profile.name])
        except npm_queues.QueueUnavailable as e:
            result.skipped[profile.name] = str(e)
            profiles.remove(profile)
            print(f"  {profile.name}: left out, {e}")
            continue
        result.tps[profile.name] = {v: [] for v in VARIANTS}
        result.cpu_ms[profile.name] = {v: [] for v in VARIANTS}
    if not profiles:
        return result
    postmaster = postmaster_pid(next(iter(dsns.values())))
    for r in range(rounds):
        for profile in profiles:
            # statbus's own triggers never read the flag: held would run ours again.
            variants = VARIANTS[:2] if profile.prefix.startswith("bench_") else VARIANTS
            shift = r % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                dsn = dsns[profile.name]
                _switch(dsn, profile, variant)
                _reset(dsn, profile)
                scripts = [str(SQL / script) for script in profile.scripts]
                cpu_before = server_cpu_seconds(postmaster)
                tps = pgbench(dsn, clients, seconds, *scripts)
                pgbench_gone(dsn)
                cpu_ms = 1000 * (server_cpu_seconds(postmaster) - cpu_before) / (tps * seconds)
                result.tps[profile.name][variant].append(tps)
                result.cpu_ms[profile.name][variant].append(cpu_ms)
                print(
                    f"  round {r + 1}/{rounds} {profile.name:>13} {variant:>5}: {tps:8.0f} "
                    f"job lives/s, {cpu_ms:.3f} server CPU ms per life"
                )
    for profile in profiles:
        variants = VARIANTS[:2] if profile.prefix.startswith("bench_") else VARIANTS
        result.hints[profile.name] = {
            v: hints_per_life(dsns[profile.name], profile, v, lives) for v in variants
        }
        _switch(dsns[profile.name], profile, "ours")
    return result


def describe(result: WriterCost) -> list[str]:
    """The report's table, in PROFILES' order: job lives per second and server CPU per life,
    per variant, with their ratios to ``none`` (throughput kept; CPU none/variant, the
    throughput a CPU-bound server would keep), and the hints per life; a profile left out
    says why."""
    lines = [
        "| Profile | no trigger of ours | ours, no relay (every hint sent) | ours, held (a "
        "relay polls) | PostgreSQL CPU ms per job life: none / ours / held "
        "| hints per job life: none / ours / held |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name in (p.name for p in PROFILES):
        if name in result.skipped:
            lines.append(f"| {name} | left out: {result.skipped[name]} | | | | |")
        if name not in result.tps:
            continue
        variants = result.variants(name)
        none = result.median_tps(name, "none")
        cells = [f"{none:,.0f}/s"]
        for variant in ("ours", "held"):
            if variant in variants:
                tps = result.median_tps(name, variant)
                cpu = result.median_cpu_ms(name, "none") / result.median_cpu_ms(name, variant)
                cells.append(f"{tps:,.0f}/s: {tps / none:.2f} (CPU {cpu:.2f})")
            else:
                cells.append("n/a")
        cells.append(" / ".join(f"{result.median_cpu_ms(name, v):.3f}" for v in variants))
        hints = result.hints.get(name, {})
        cells.append(" / ".join(f"{hints[v]:.2f}" for v in variants if v in hints))
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writer_cost", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 4 s (5 of 8 s)")
    parser.add_argument("--rounds", type=int, help="rounds (each runs every variant once)")
    parser.add_argument("--seconds", type=float, help="seconds per pgbench run")
    parser.add_argument("--only", nargs="+", choices=NAMES, default=())
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    args = parser.parse_args(argv)
    rounds, seconds = (3, 4.0) if args.quick else (5, 8.0)
    rounds, seconds = args.rounds or rounds, args.seconds or seconds
    with database("writer_cost") as db:
        result = run_writer_cost(
            db.server.create_database, rounds=rounds, seconds=seconds, only=tuple(args.only)
        )
    for line in describe(result):
        print(line)
    if args.json:
        raw = {"clients": result.clients, "seconds": result.seconds, "rounds": result.rounds}
        figures = {**raw, "tps": result.tps, "cpu_ms": result.cpu_ms, "hints": result.hints}
        figures["skipped"] = result.skipped
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
