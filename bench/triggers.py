"""Trigger cost: worker churn under pgbench with no triggers, the seed's, and ours.

Churn: each pgbench client runs a worker's task life (insert ``pending`` → ``processing`` →
``completed``, each its own transaction; half analytics commands, half not) and, one time in
ten, an import job's (start → progress → finish). Every variant runs with the same consumer
attached: one real relay (``bench.serve_relay``, default settings, its own process) LISTENing
on the bench database, as in production. It matters for ours: under churn the relay takes the
hold, writers stop notifying and the relay polls ``is_system_stable()`` instead, and that
polling is part of the cost measured. Rounds alternate the variants so drift on a shared
machine hits all of them alike; the figure is the median per variant. Per variant, the
relay's ``/metrics`` give the notifications it received, its reads and the holds it took.
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from bench.common import Child, Database, cpu_seconds, median, server_cpu_seconds
from relay.devtools.embedded import pgbench_path

SQL = Path(__file__).parent / "sql"
# Each variant: the triggers enabled, and which relay listens (None: no relay at all).
# - "ours-idle": our triggers with no relay running, the flag parked as a stopping relay (or
#   db install) leaves it; "ours-idle-unparked": the same with the flag clear, which is how
#   writers paid before relays parked it.
# - "statbus": statbus's own row-level notifications, none of ours; the relay listens to
#   statbus's channels (as the statbus profile does) instead of ours.
# - "plain": the previous release's hint, a plain statement trigger per table that fires for
#   every statement; "rows": row triggers filtered by WHEN, what a partitioned table gets
#   (bench/sql/hint_variants.sql). "ours" is the statement triggers over transition tables
#   that a plain table gets.
VARIANTS = ("none", "seed", "ours", "ours-idle", "ours-idle-unparked", "statbus", "plain", "rows")
TRIGGERS_OF = {
    "none": "none",
    "seed": "seed",
    "ours": "ours",
    "ours-idle": "ours",
    "ours-idle-unparked": "ours",
    "statbus": "statbus",
    "plain": "plain",
    "rows": "rows",
}
STATBUS_CHANNELS = "import_job,worker_task_changed,worker_tasks"
RELAY_OF: dict[str, str | None] = {
    "none": "ours",
    "seed": "ours",
    "ours": "ours",
    "ours-idle": None,
    "ours-idle-unparked": None,
    "statbus": "statbus",
    "plain": "ours",
    "rows": "ours",
}
TABLES = ("public.import_job", "worker.tasks")
TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.MULTILINE)
IMPORT_JOBS = 8  # one per pgbench client at most (pgbench -c ≤ 8)
# What is read from the relay's /metrics around each run: (sample name, labels).
COUNTERS = {
    "notifications": ("relay_notifications_total", {}),  # every channel it listens to
    "reads": ("relay_stability_queries_total", {}),
    "holds": ("relay_hold_changes_total", {"action": "taken"}),
}


@dataclass
class TriggerResult:
    clients: int
    seconds: float
    rounds: int
    tps: dict[str, list[float]] = field(default_factory=dict)
    notifications: dict[str, int] = field(default_factory=dict)  # received by the relay
    reads: dict[str, int] = field(default_factory=dict)  # the relay's is_system_stable() reads
    holds: dict[str, int] = field(default_factory=dict)  # holds the relay took
    # PostgreSQL's and the relay's CPU per task life, per run: less noisy than throughput on
    # a shared machine (the neighbours slow a run down without adding to its CPU time).
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)

    def median_cpu_ms(self, variant: str) -> float:
        return median(self.cpu_ms[variant])

    def cpu_ratio(self, variant: str) -> float:
        """No-trigger CPU per task life over the variant's: the throughput a CPU-bound
        machine would keep."""
        return self.median_cpu_ms("none") / self.median_cpu_ms(variant)

    def per_second(self, counts: dict[str, int], variant: str) -> float:
        return counts[variant] / (self.rounds * self.seconds)

    def median_tps(self, variant: str) -> float:
        return median(self.tps[variant])

    def ratio(self, variant: str) -> float:
        return self.median_tps(variant) / self.median_tps("none")


def add_import_jobs(conn: psycopg.Connection[Any]) -> None:
    """The demo schema's tables as the pgbench scripts find them: the index a production queue
    table has (without it the seed's triggers scan the whole table on every statement and fare
    far worse than shown here), and ``IMPORT_JOBS`` finished import jobs, ids 1 to N."""
    conn.execute("CREATE INDEX IF NOT EXISTS tasks_state_idx ON worker.tasks (state)")
    for n in range(1, IMPORT_JOBS + 1):
        conn.execute(
            "INSERT INTO public.import_job (id, slug, state, total_rows) "
            "VALUES (%s, %s, 'finished', 1000000) ON CONFLICT (id) DO NOTHING",
            (n, f"bench-job-{n}"),
        )


def set_up(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute((SQL / "seed_triggers.sql").read_text())
        conn.execute((SQL / "statbus_triggers.sql").read_text())
        conn.execute((SQL / "hint_variants.sql").read_text())
        add_import_jobs(conn)
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('public.import_job', 'id'), "
            "(SELECT max(id) FROM public.import_job))"
        )


def install_for(dsn: str, kind: str) -> None:
    """The relay's SQL as the relay of ``kind`` reads it: the seed's activities, hinted by our
    triggers (ours) or by statbus's channels (statbus)."""
    import asyncio

    from bench.serve_relay import channel_hinted_seed
    from relay.config.activities import Activity
    from relay.source.install import install

    activities = None
    if kind == "statbus":
        hinted = channel_hinted_seed(STATBUS_CHANNELS.split(","))
        activities = [Activity.model_validate(a) for a in hinted]
    asyncio.run(install(dsn, activities=activities, park=False))


def select_variant(dsn: str, variant: str) -> None:
    """Enable the variant's triggers on the churned tables and disable all others."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger "
            "WHERE NOT tgisinternal AND tgrelid IN ("
            "'public.import_job'::regclass, 'worker.tasks'::regclass)"
        ).fetchall()
        for table, name in rows:
            prefixes = {"ours": "system_stability_", "seed": "bench_seed_"}
            prefixes.update(statbus="bench_statbus_", plain="bench_plain_", rows="bench_rows_")
            on = variant in prefixes and name.startswith(prefixes[variant])
            schema, _, rel = table.rpartition(".")
            conn.execute(
                sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(
                    sql.Identifier(schema or "public", rel),
                    sql.SQL("ENABLE" if on else "DISABLE"),
                    sql.Identifier(name),
                )
            )


def reset(dsn: str) -> None:
    """The same starting point for every run: an empty queue, every import job finished, the
    hold flag clear.

    The writes run as a replica session, so no trigger fires and the relay gets no burst of
    hints (which could make it take a hold) from the reset itself. The flag is cleared last:
    a hold left by the previous run (the relay keeps it until the state has held still for
    ``stability.hold_release_after``) would otherwise silence ours at the start of the run.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("TRUNCATE worker.tasks")
        conn.execute("UPDATE public.import_job SET state = 'finished', imported_rows = 0")
        conn.execute("RESET session_replication_role")
        conn.execute("VACUUM ANALYZE worker.tasks, public.import_job")
        conn.execute("SELECT public.system_stability_release_hold()")


def hold_flag(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_sequence_last_value('public.system_stability_hold'::regclass) = 1"
        ).fetchone()
    return bool(row and row[0])


def park(dsn: str) -> None:
    """The flag as a stopping relay leaves it: requested, then confirmed (each committed)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT public.system_stability_request_hold()")
        conn.execute("SELECT public.system_stability_confirm_hold()")


class RelayProbe:
    """The real relay in a child process (as the fan-out benchmark runs it), and its counters."""

    def __init__(self, dsn: str, kind: str = "ours") -> None:
        self._dsn = dsn
        self.kind = kind
        extra = ["--hint-channels", STATBUS_CHANNELS] if kind == "statbus" else []
        self.child = Child("trigger-relay", "bench.serve_relay", "--dsn", dsn, *extra)
        port = int(self.child.read(60)["port"])
        self._url = f"http://127.0.0.1:{port}/metrics"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback

    def metrics(self) -> dict[str, float]:
        """The counters of COUNTERS, and ``polling`` (1 while in a hold or draining one)."""
        with self._opener.open(self._url, timeout=10) as response:
            text = response.read().decode()
        values = dict.fromkeys([*COUNTERS, "polling"], 0.0)
        wanted = [*COUNTERS.items(), ("polling", ("relay_polling", {}))]
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for key, (name, labels) in wanted:
                    if sample.name == name and labels.items() <= sample.labels.items():
                        values[key] += sample.value
        return values

    def settle(self, timeout: float = 15.0) -> None:
        """Wait until the relay is out of any hold (flag clear, drain done) and has read the
        last notifications: not polling, the flag clear, no new notification for 0.3 s."""
        deadline = time.monotonic() + timeout
        previous = None
        while time.monotonic() < deadline:
            now = self.metrics()
            quiet = now["polling"] == 0 and not hold_flag(self._dsn)
            if quiet and previous is not None and now["notifications"] == previous:
                return
            previous = now["notifications"] if quiet else None
            time.sleep(0.3)
        raise TimeoutError(f"the relay did not settle within {timeout:g} s")

    def close(self) -> None:
        self.child.close()


def postmaster_pid(dsn: str) -> int:
    """The server's postmaster: the parent of any backend (the server runs on this machine)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        # Read while the backend lives: it exits as soon as the connection closes.
        stat = Path(f"/proc/{row[0]}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


def pgbench_gone(dsn: str, timeout: float = 10.0) -> None:
    """Wait until pgbench's backends have exited (and a moment more, for the postmaster to
    reap them): only then is their CPU in the server's total (server_cpu_seconds)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'"
            ).fetchone()
            if row is not None and row[0] == 0:
                break
            time.sleep(0.05)
    time.sleep(0.2)


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
    result.reads = dict.fromkeys(VARIANTS, 0)
    result.holds = dict.fromkeys(VARIANTS, 0)
    result.cpu_ms = {v: [] for v in VARIANTS}
    postmaster = postmaster_pid(db.dsn)
    scripts = (f"{SQL / 'worker_task.pgbench'}@9", f"{SQL / 'import_job.pgbench'}@1")
    # One relay for the whole benchmark, every variant: reset() and settle() put it in the
    # same state (no hold, nothing pending) before each run. Under the seed's triggers it
    # receives their {"stable": ...} notifications on the same channel and treats each as a
    # hint; it may take the hold then too (hints come faster than it reads), but the seed's
    # triggers never read the flag and go on notifying: the hold changes nothing for them
    # beyond the relay polling, which it does under ours as well.
    relay: RelayProbe | None = None

    def use(kind: str | None) -> RelayProbe | None:
        """Have exactly the relay this variant wants listening (one at most, as measured)."""
        nonlocal relay
        if relay is not None and relay.kind != kind:
            relay.close()  # ours parks the flag on stop; reset() below clears it
            relay = None
        if relay is None and kind is not None:
            # The relay refuses SQL generated from other activities than its own (their
            # fingerprint): install the ones this relay reads (the triggers are switched
            # after, by select_variant).
            install_for(db.dsn, kind)
            relay = RelayProbe(db.dsn, kind)
        return relay

    def relay_cpu(probe: RelayProbe | None) -> float:
        return cpu_seconds(probe.child.pid) if probe is not None else 0.0

    try:
        for r in range(rounds):
            shift = r % len(VARIANTS)
            order = VARIANTS[shift:] + VARIANTS[:shift]  # rotate: no variant always goes first
            for variant in order:
                probe = use(RELAY_OF[variant])
                select_variant(db.dsn, TRIGGERS_OF[variant])
                reset(db.dsn)
                if variant == "ours-idle":
                    park(db.dsn)
                if probe is not None:
                    probe.settle()
                before = probe.metrics() if probe else dict.fromkeys(COUNTERS, 0.0)
                cpu_before = server_cpu_seconds(postmaster) + relay_cpu(probe)
                tps = pgbench(db.dsn, clients, seconds, *scripts)
                pgbench_gone(db.dsn)
                cpu = server_cpu_seconds(postmaster) + relay_cpu(probe) - cpu_before
                time.sleep(0.3)  # the last commits' notifications reach the relay
                after = probe.metrics() if probe else dict.fromkeys(COUNTERS, 0.0)
                delta = {key: round(after[key] - before[key]) for key in COUNTERS}
                result.tps[variant].append(tps)
                result.cpu_ms[variant].append(1000 * cpu / (tps * seconds))
                result.notifications[variant] += delta["notifications"]
                result.reads[variant] += delta["reads"]
                result.holds[variant] += delta["holds"]
                print(
                    f"  round {r + 1}/{rounds} {variant:>18}: {tps:8.0f} task lives/s, "
                    f"{delta['notifications']:6d} notifications, {delta['reads']:4d} relay "
                    f"reads, {delta['holds']} holds taken, "
                    f"{result.cpu_ms[variant][-1]:.3f} CPU ms per task life"
                )
        for variant in VARIANTS:
            print(
                f"  {variant:>18} over {rounds} runs: median {result.median_tps(variant):.0f} "
                f"task lives/s, ratio {result.ratio(variant):.2f}, "
                f"{result.per_second(result.notifications, variant):.0f} notifications/s, "
                f"{result.per_second(result.reads, variant):.1f} relay reads/s, "
                f"{result.holds[variant]} holds taken, "
                f"{result.median_cpu_ms(variant):.3f} CPU ms per task life "
                f"(CPU ratio {result.cpu_ratio(variant):.2f})"
            )
    finally:
        if relay is not None:
            relay.close()
        select_variant(db.dsn, "ours")
        # A hold the relay kept when it stopped would silence the next benchmark's triggers.
        reset(db.dsn)
    return result
