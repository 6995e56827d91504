"""Trigger cost: worker churn under pgbench with no triggers, the seed's, and ours.

Churn: each pgbench client runs a worker's task life (insert ``pending`` → ``processing`` →
``completed``, each its own transaction; half analytics commands, half not) and, one time in
ten, an import job's (start → progress → finish). Every variant runs with one LISTENing
connection draining notifications (the relay, in production). Rounds alternate the variants
so drift on a shared machine hits all of them alike; the figure is the median per variant.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from bench.common import Database, median
from relay.embedded import pgbench_path

SQL = Path(__file__).parent / "sql"
VARIANTS = ("none", "seed", "ours")
TABLES = ("public.import_job", "worker.tasks")
TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.MULTILINE)
IMPORT_JOBS = 8  # one per pgbench client at most (pgbench -c ≤ 8)


@dataclass
class TriggerResult:
    clients: int
    seconds: float
    rounds: int
    tps: dict[str, list[float]] = field(default_factory=dict)
    notifications: dict[str, int] = field(default_factory=dict)

    def median_tps(self, variant: str) -> float:
        return median(self.tps[variant])

    def ratio(self, variant: str) -> float:
        return self.median_tps(variant) / self.median_tps("none")


def set_up(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute((SQL / "seed_triggers.sql").read_text())
        # A production queue table has this index; without it the seed's triggers scan the
        # whole table on every statement and fare far worse than shown here.
        conn.execute("CREATE INDEX IF NOT EXISTS tasks_state_idx ON worker.tasks (state)")
        for n in range(1, IMPORT_JOBS + 1):
            conn.execute(
                "INSERT INTO public.import_job (id, slug, state, total_rows) "
                "VALUES (%s, %s, 'finished', 1000000) ON CONFLICT (id) DO NOTHING",
                (n, f"bench-job-{n}"),
            )
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('public.import_job', 'id'), "
            "(SELECT max(id) FROM public.import_job))"
        )


def select_variant(dsn: str, variant: str) -> None:
    """Enable the variant's triggers on the churned tables and disable all others."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger "
            "WHERE NOT tgisinternal AND tgrelid IN ("
            "'public.import_job'::regclass, 'worker.tasks'::regclass)"
        ).fetchall()
        for table, name in rows:
            ours = name.startswith("system_stability_")
            seed = name.startswith("bench_seed_")
            on = (variant == "ours" and ours) or (variant == "seed" and seed)
            schema, _, rel = table.rpartition(".")
            conn.execute(
                sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(
                    sql.Identifier(schema or "public", rel),
                    sql.SQL("ENABLE" if on else "DISABLE"),
                    sql.Identifier(name),
                )
            )


def reset(dsn: str) -> None:
    """The same starting point for every round: an empty queue, every import job finished."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE worker.tasks")
        conn.execute("UPDATE public.import_job SET state = 'finished', imported_rows = 0")
        conn.execute("VACUUM ANALYZE worker.tasks, public.import_job")


class Drain:
    """A LISTENing connection that reads and counts every notification (the relay's role)."""

    def __init__(self, dsn: str) -> None:
        self.count = 0
        self._stop = threading.Event()
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._conn.execute("LISTEN system_stability")
        self._thread = threading.Thread(target=self._run, name="bench-drain", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in self._conn.notifies(timeout=0.2):
                self.count += 1

    def close(self) -> int:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()
        return self.count


def pgbench(dsn: str, clients: int, seconds: float, *scripts: str) -> float:
    """Run pgbench with the given ``-f`` script arguments; return its tps."""
    args = [str(pgbench_path()), "-n", "-c", str(clients), "-j", str(min(clients, 2))]
    args += ["-T", str(round(seconds))]
    for script in scripts:
        args += ["-f", script]
    completed = subprocess.run(
        [*args, dsn], capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    match = TPS.search(completed.stdout)
    if completed.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed: {completed.stderr.strip()[-500:]}")
    return float(match.group(1))


def run_triggers(db: Database, *, rounds: int, seconds: float, clients: int = 4) -> TriggerResult:
    set_up(db.dsn)
    result = TriggerResult(clients, seconds, rounds, {v: [] for v in VARIANTS})
    result.notifications = dict.fromkeys(VARIANTS, 0)
    scripts = (f"{SQL / 'worker_task.pgbench'}@9", f"{SQL / 'import_job.pgbench'}@1")
    try:
        for r in range(rounds):
            order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]  # rotate, so no variant always goes first
            for variant in order:
                select_variant(db.dsn, variant)
                reset(db.dsn)
                drain = Drain(db.dsn)
                try:
                    tps = pgbench(db.dsn, clients, seconds, *scripts)
                finally:
                    time.sleep(0.3)
                    result.notifications[variant] += drain.close()
                result.tps[variant].append(tps)
                print(f"  round {r + 1}/{rounds} {variant:>4}: {tps:8.0f} task lives/s")
    finally:
        select_variant(db.dsn, "ours")
    return result
