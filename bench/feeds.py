"""Feeds: statbus's enriched ``/api/sse/import-jobs`` under a burst, and replay after a gap.

One real relay process (``python -m relay run --config FILE``: the statbus profile's three
feeds and a plain channel feed, ``/bench/replay``) on a database holding the statbus fixture
(tests/fixtures/statbus.sql), installed as the README says (``db install --profile statbus``,
which generates ``public.system_stability_enrich_import_job(jsonb)``).

- **Burst** (``run_burst``): N clients in their own process (``python -m bench.feeds swarm``)
  on ``/api/sse/import-jobs``, every other one with ``?ids=<job>``; one ``DO`` block commits
  ``updates`` UPDATEs of the job's ``imported_rows`` (1, 2, ...), each its own transaction, as
  statbus's import worker reports progress, and notes ``clock_timestamp()`` right after each
  COMMIT. Counted: the relay's enrich calls (``relay_feed_enrich_calls_total``) and, where the
  server has it, ``pg_stat_statements``' calls of the enrich function. Latency is wall-clock
  (CLOCK_REALTIME, read by PostgreSQL and by the clients on the same machine): from a row's
  commit to a client's reading of the event that carries it; for the final row, the first
  such event per client. Checked: every client's last event carries the final row, and the
  rows it got never go backwards.
- **Replay** (``run_replay``): one client on ``/bench/replay`` (in this process) while
  payloads carrying a sequence number are NOTIFYed at ``rate`` a second (each its own commit)
  for ``seconds``; at ``disconnect_at`` it disconnects, ``gap`` later it reconnects with
  ``Last-Event-ID``. Reported: the payloads committed while it was away, the events the relay
  replayed (``relay_feed_replayed_total``), any ``event: resync``, the time from sending the
  reconnecting request to holding every payload committed before it, and the payloads lost or
  received twice over the whole run (by their sequence numbers).

Loops are bounded in count and time; everything is on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import psycopg
from psycopg import sql

from bench.common import LOGS, ROOT, Child, emit, percentile, raise_nofile, stdin_lines
from bench.sse_clients import EventStream, connect_clients

IMPORT_JOBS = "/api/sse/import-jobs"
REPLAY_PATH = "/bench/replay"
REPLAY_CHANNEL = "bench_replay"
# A plain channel feed: `event: bench_replay`, the stability snapshot on connect, the default
# replay ring (1,000 events, 1 MiB).
REPLAY_FEED = {"path": REPLAY_PATH, "channels": [REPLAY_CHANNEL]}
# About the size of statbus's pipeline_progress payloads (200 bytes).
PAD = (
    '"type":"pipeline_progress","phases":[{"phase":"is_deriving_statistical_units",'
    '"active":true,"step":"derive_statistical_unit","total":1200,"completed":600}]'
)
FIXTURE = ROOT / "tests" / "fixtures" / "statbus.sql"
DEFINITION = "fixture_legal_unit"  # the fixture's built-in import definition

ENRICH_CALLS = """
SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND query LIKE '%system_stability_enrich_%' AND query NOT LIKE '%pg_stat_statements%'
"""


# --- the database and the relay ---------------------------------------------------------------


def set_up_statbus(dsn: str) -> None:
    """The statbus fixture in an empty database, pg_stat_statements where the server has it,
    and the relay installed by the tables' owner with the statbus profile."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(FIXTURE.read_bytes())
        with contextlib.suppress(psycopg.Error):
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    done = subprocess.run(
        [sys.executable, "-m", "relay", "db", "install", "--dsn", dsn, "--profile", "statbus"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"db install failed: {done.stderr[-2000:]}")


def enrich_statement_calls(dsn: str) -> int | None:
    """Calls of the enrich function(s) in this database so far, or None without
    pg_stat_statements."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            row = conn.execute(ENRICH_CALLS).fetchone()
        except psycopg.Error:
            return None
    return int(row[0]) if row else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def relay_config(dsn: str, port: int) -> dict[str, Any]:
    """The statbus profile with its own three feeds (listed, since a config that lists feeds
    replaces the profile's) and the replay feed."""
    from relay.config.profiles import load_profile

    return {
        "profile": "statbus",
        "database": {"dsn": dsn},
        "http": {"listen": f"127.0.0.1:{port}"},
        "logging": {"level": "warning", "format": "json"},
        "feeds": [*load_profile("statbus").feeds, REPLAY_FEED],
    }


class RelayProcess:
    """``python -m relay run --config FILE`` in a child process, ready when /readyz says so."""

    def __init__(self, dsn: str, name: str = "feeds-relay") -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = LOGS / f"{name}.yaml"
        config.write_text(json.dumps(relay_config(dsn, self.port), indent=1) + "\n")
        config.chmod(0o600)
        self._log: IO[bytes] = (LOGS / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            self._ready(60.0)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the relay exited ({self.proc.returncode}); see {LOGS}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.base + "/readyz", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"the relay was not ready within {timeout:g} s; see {LOGS}")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.base + "/metrics", timeout=10) as answer:
            text = answer.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def wait_metric(self, name: str, value: float, timeout: float, **labels: str) -> float:
        deadline = time.monotonic() + timeout
        while True:
            now = self.metric(name, **labels)
            if now == value or time.monotonic() >= deadline:
                return now
            time.sleep(0.1)

    def close(self) -> None:
        """SIGTERM (the relay's own shutdown), then wait; kill only this process if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# --- 1. the enriched feed under a burst -------------------------------------------------------


@dataclass
class BurstResult:
    clients: int
    connected: int
    connect_s: float
    updates: int
    burst_s: float  # first commit to last, in the DO block
    notified: float  # import_job notifications the relay received during the burst
    enrich_calls: float  # relay_feed_enrich_calls_total
    statement_calls: int | None  # pg_stat_statements' calls of the enrich function
    events: float  # relay_feed_events_total: events sent on the feed (each to every client)
    merged: float  # relay_feed_coalesced_total: identical payloads merged while waiting
    events_per_client: list[int]  # min, median, max
    got_final: int  # clients that received the final row
    ended_on_final: int  # clients whose last event carries the final row
    ordered: int  # clients whose rows never went backwards
    final_p50_ms: float | None
    final_p99_ms: float | None
    final_max_ms: float | None
    event_p50_ms: float | None  # every event of every client, from its row's commit
    event_p99_ms: float | None

    @property
    def queries_per_payload(self) -> float:
        calls = self.statement_calls if self.statement_calls is not None else self.enrich_calls
        return calls / self.updates


def _burst_statement(job: int, updates: int) -> sql.Composed:
    """One DO block: ``updates`` UPDATEs of the job, each committed on its own; then a NOTICE
    with the clock_timestamp() right after each COMMIT (epoch seconds)."""
    return sql.SQL(
        "DO $burst$ DECLARE stamps float8[] := '{{}}'; BEGIN"
        " FOR i IN 1..{updates} LOOP"
        " UPDATE public.import_job SET imported_rows = i WHERE id = {job};"
        " COMMIT;"
        " stamps := stamps || extract(epoch FROM clock_timestamp())::float8;"
        " END LOOP;"
        " RAISE NOTICE 'bench-commits %', array_to_string(stamps, ',');"
        " END $burst$"
    ).format(updates=sql.Literal(updates), job=sql.Literal(job))


def commit_burst(dsn: str, job: int, updates: int) -> list[float]:
    """Run the burst; the commit time of row ``i`` (imported_rows = i) at index ``i - 1``."""
    notices: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute(_burst_statement(job, updates))
    for notice in notices:
        if notice.startswith("bench-commits "):
            return [float(x) for x in notice.removeprefix("bench-commits ").split(",")]
    raise RuntimeError(f"the burst sent no commit times: {notices[:3]}")


def new_job(dsn: str, updates: int) -> int:
    """A job being processed (the importing activity is active, as during a real import)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO public.import_job (slug, state, total_rows, definition_id) "
            "VALUES (%s, 'processing_data', %s, "
            "(SELECT id FROM public.import_definition WHERE slug = %s)) RETURNING id",
            (f"bench-burst-{time.time_ns()}", updates, DEFINITION),
        ).fetchone()
    assert row is not None
    return int(row[0])


def finish_job(dsn: str, job: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE public.import_job SET state = 'finished' WHERE id = %s", (job,))


def run_burst(
    dsn: str, relay: RelayProcess, swarm: Child, clients: int, updates: int
) -> BurstResult:
    label = {"feed": IMPORT_JOBS}
    job = new_job(dsn, updates)
    time.sleep(0.5)  # the new job's INSERT has reached the relay (and no client yet)
    paths = [IMPORT_JOBS, f"{IMPORT_JOBS}?ids={job}"]
    connect = {"cmd": "connect", "port": relay.port, "paths": paths, "n": clients}
    answer = swarm.ask({**connect, "timeout": 120}, timeout=150)
    if answer["failed"]:
        print(f"  {answer['failed']} connections failed: {answer['failures']}")
    relay.wait_metric("relay_feed_clients", answer["connected"], 30, **label)
    swarm.ask({"cmd": "expect", "final": updates})
    before = {
        "notified": relay.metric("relay_notifications_total", channel="import_job"),
        "calls": relay.metric("relay_feed_enrich_calls_total", **label),
        "events": relay.metric("relay_feed_events_total", **label),
        "merged": relay.metric("relay_feed_coalesced_total", **label),
    }
    statements_before = enrich_statement_calls(dsn)
    commits = commit_burst(dsn, job, updates)
    swarm.ask({"cmd": "wait", "timeout": 60}, timeout=90)
    time.sleep(1.0)  # a read of the burst's last notifications made after its last commit
    statements_after = enrich_statement_calls(dsn)
    notified = relay.metric("relay_notifications_total", channel="import_job")
    calls = relay.metric("relay_feed_enrich_calls_total", **label)
    events = relay.metric("relay_feed_events_total", **label)
    merged = relay.metric("relay_feed_coalesced_total", **label)
    report = swarm.ask({"cmd": "report", "commits": commits}, timeout=120)
    swarm.ask({"cmd": "close"})
    finish_job(dsn, job)
    statements = None
    if statements_before is not None and statements_after is not None:
        statements = statements_after - statements_before
    return BurstResult(
        clients=clients,
        connected=answer["connected"],
        connect_s=answer["seconds"],
        updates=updates,
        burst_s=commits[-1] - commits[0],
        notified=notified - before["notified"],
        enrich_calls=calls - before["calls"],
        statement_calls=statements,
        events=events - before["events"],
        merged=merged - before["merged"],
        events_per_client=report["events_per_client"],
        got_final=report["got_final"],
        ended_on_final=report["ended_on_final"],
        ordered=report["ordered"],
        final_p50_ms=report["final_p50_ms"],
        final_p99_ms=report["final_p99_ms"],
        final_max_ms=report["final_max_ms"],
        event_p50_ms=report["event_p50_ms"],
        event_p99_ms=report["event_p99_ms"],
    )


# The swarm (``python -m bench.feeds swarm``): bare asyncio protocols on bench/sse_clients.py's
# EventStream and connect_clients.

ROW = re.compile(rb'"imported_rows":(\d+)')
GREETING = b'"type":"connection_established"'


class JobSwarm:
    def __init__(self) -> None:
        self.clients: list[JobClient] = []
        self.final = 0  # the row every client must reach
        self.reached = 0  # clients that have it
        self.all_reached = asyncio.Event()

    def arrived(self) -> None:
        self.reached += 1
        if self.reached >= len(self.clients):
            self.all_reached.set()

    async def connect(
        self, port: int, paths: list[str], n: int, concurrency: int, timeout: float
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()

        def make(k: int) -> JobClient:
            path = paths[k % len(paths)]
            request = (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            ).encode()
            return JobClient(self, request, loop.create_future())

        return await connect_clients(self.clients, make, port, n, concurrency, timeout)

    def expect(self, final: int) -> dict[str, Any]:
        self.final = final
        self.reached = sum(1 for c in self.clients if c.rows and max(c.rows) >= final)
        self.all_reached = asyncio.Event()
        if self.reached >= len(self.clients):
            self.all_reached.set()
        return {"reached": self.reached}

    async def wait(self, timeout: float) -> dict[str, Any]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_reached.wait(), timeout)
        return {"reached": self.reached, "clients": len(self.clients)}

    def report(self, commits: list[float]) -> dict[str, Any]:
        """Latencies from each row's commit (``commits[row - 1]``, epoch seconds)."""
        final = self.final
        finals: list[float] = []
        every: list[float] = []
        counts: list[int] = []
        ended = ordered = 0
        for c in self.clients:
            counts.append(len(c.rows))
            for row, t in zip(c.rows, c.times, strict=True):
                if 1 <= row <= len(commits):
                    every.append(1000 * (t - commits[row - 1]))
            first = next((t for row, t in zip(c.rows, c.times, strict=True) if row == final), None)
            if first is not None and 1 <= final <= len(commits):
                finals.append(1000 * (first - commits[final - 1]))
            ended += bool(c.rows) and c.rows[-1] == final
            ordered += all(a <= b for a, b in itertools.pairwise(c.rows))

        def pct(values: list[float], q: float) -> float | None:
            return round(percentile(values, q), 1) if values else None

        return {
            "events_per_client": (
                [min(counts), round(statistics.median(counts)), max(counts)] if counts else []
            ),
            "got_final": len(finals),
            "ended_on_final": ended,
            "ordered": ordered,
            "final_p50_ms": pct(finals, 50),
            "final_p99_ms": pct(finals, 99),
            "final_max_ms": round(max(finals), 1) if finals else None,
            "event_p50_ms": pct(every, 50),
            "event_p99_ms": pct(every, 99),
        }

    def close(self) -> dict[str, Any]:
        count = 0
        for client in self.clients:
            if client.transport is not None and not client.transport.is_closing():
                client.transport.close()
                count += 1
        self.clients.clear()
        self.final = self.reached = 0
        return {"closed": count}


class JobClient(EventStream):
    """One import-jobs stream: notes each event's imported_rows and the wall-clock time its
    bytes were read."""

    __slots__ = ("reached", "rows", "swarm", "times")

    def __init__(self, swarm: JobSwarm, request: bytes, ready: asyncio.Future[None]) -> None:
        super().__init__(request, ready)
        self.swarm = swarm
        self.reached = False
        self.rows: list[int] = []
        self.times: list[float] = []

    def data_received(self, data: bytes) -> None:
        now = time.time()  # CLOCK_REALTIME, as PostgreSQL's clock_timestamp()
        # Up to the last complete event (HTTP chunk framing around it); a row is never in
        # the blank line that ends it.
        complete = self.complete_events(data)
        if complete is None:
            return
        buffer, end = complete
        if not self.ready.done() and GREETING in buffer:
            self.ready.set_result(None)
        for match in ROW.finditer(buffer, 0, end):
            row = int(match.group(1))
            self.rows.append(row)
            self.times.append(now)
            if not self.reached and self.swarm.final and row >= self.swarm.final:
                self.reached = True
                self.swarm.arrived()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before the greeting"))


async def _swarm_main() -> None:
    swarm = JobSwarm()
    reader = await stdin_lines()
    while line := await reader.readline():
        request = json.loads(line)
        cmd = request["cmd"]
        if cmd == "connect":
            emit(
                await swarm.connect(
                    request["port"],
                    request["paths"],
                    request["n"],
                    request.get("concurrency", 200),
                    request.get("timeout", 120.0),
                )
            )
        elif cmd == "expect":
            emit(swarm.expect(request["final"]))
        elif cmd == "wait":
            emit(await swarm.wait(request["timeout"]))
        elif cmd == "report":
            emit(swarm.report(request["commits"]))
        elif cmd == "close":
            emit(swarm.close())
        else:
            emit({"error": f"unknown command {cmd}"})
    swarm.close()


# --- 2. replay after a disconnect -------------------------------------------------------------


@dataclass
class ReplayResult:
    rate: float
    seconds: float
    disconnect_at: float
    gap: float
    sent: int
    send_rate: float  # what the producer achieved
    before: int  # payloads received on the first connection
    missed: int  # committed after the last one received there and before the reconnect
    replayed: float  # relay_feed_replayed_total: events the relay sent again on reconnect
    replayed_seen: int  # events on the second connection committed before the reconnect
    after: int  # payloads received on the second connection
    resyncs: int  # `event: resync` frames the client got
    caught_up_ms: float | None  # reconnect request sent → every payload committed before it
    lost: int  # sent, never received
    duplicated: int  # received more than once
    out_of_order: int  # received after a later one
    last_event_id: str = ""
    notes: list[str] = field(default_factory=list)


async def sse_events(response: Any) -> AsyncIterator[tuple[str | None, str | None, str]]:
    """(event name, id, data) of each event of an aiohttp response (comments skipped)."""
    event: str | None = None
    event_id: str | None = None
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data or event is not None:
                yield event, event_id, "\n".join(data)
            event, event_id, data = None, None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "id":
            event_id = value
        elif name == "data":
            data.append(value)


async def _replay(
    base: str, dsn: str, rate: float, seconds: float, disconnect_at: float, gap: float
) -> ReplayResult:
    import aiohttp

    total = round(rate * seconds)
    committed: list[float] = []  # monotonic time each payload's commit returned, by seq
    arrivals: list[tuple[int, int, float]] = []  # (seq, connection, monotonic time)
    last_id = ""
    resyncs = 0
    took = 0.0

    async def produce() -> None:
        nonlocal took
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            started = time.monotonic()
            for k in range(total):
                lag = started + k / rate - time.monotonic()
                if lag > 0:
                    await asyncio.sleep(lag)
                await conn.execute(
                    "SELECT pg_notify(%s, %s)", (REPLAY_CHANNEL, f'{{"seq":{k},{PAD}}}')
                )
                committed.append(time.monotonic())
            took = time.monotonic() - started

    async def read(response: Any, connection: int, greeted: asyncio.Event | None) -> None:
        nonlocal last_id, resyncs
        async for event, event_id, data in sse_events(response):
            now = time.monotonic()
            if event_id:
                last_id = event_id
            if event == "resync":
                resyncs += 1
            elif event == REPLAY_CHANNEL:
                seq = int(json.loads(data)["seq"])
                arrivals.append((seq, connection, now))
                if seq == total - 1:
                    return
            elif greeted is not None and event == "stability":
                greeted.set()

    url = base + REPLAY_PATH
    headers = {"Accept": "text/event-stream"}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        greeted = asyncio.Event()
        async with session.get(url, headers=headers) as response:
            reading = asyncio.create_task(read(response, 1, greeted))
            await asyncio.wait_for(greeted.wait(), 30)
            producer = asyncio.create_task(produce())
            try:
                await asyncio.wait_for(asyncio.shield(reading), disconnect_at)
            except TimeoutError:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
        # Disconnected: the response is closed, the connection with it (force_close).
        await asyncio.sleep(gap)
        reconnect_at = time.monotonic()
        due = len(committed) - 1  # the last payload committed before the reconnect
        resend = {**headers, "Last-Event-ID": last_id}
        async with session.get(url, headers=resend) as response:
            remaining = max(0.0, seconds - disconnect_at - gap) + 10
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(read(response, 2, None), timeout=remaining)
        await asyncio.wait_for(producer, timeout=max(10.0, seconds))
    first = [seq for seq, conn, _ in arrivals if conn == 1]
    second = [(seq, t) for seq, conn, t in arrivals if conn == 2]
    seen = Counter(seq for seq, _, _ in arrivals)
    last_before = max(first, default=-1)
    caught_up = next((t for seq, t in second if seq >= due), None) if due >= 0 else None
    order = [seq for seq, _, _ in arrivals]
    return ReplayResult(
        rate=rate,
        seconds=seconds,
        disconnect_at=disconnect_at,
        gap=gap,
        sent=total,
        send_rate=total / took if took else 0.0,
        before=len(first),
        missed=max(0, due - last_before),
        replayed=0.0,
        replayed_seen=sum(1 for seq, _ in second if seq <= due),
        after=len(second),
        resyncs=resyncs,
        caught_up_ms=None if caught_up is None else round(1000 * (caught_up - reconnect_at), 1),
        lost=sum(1 for k in range(total) if k not in seen),
        duplicated=sum(n - 1 for n in seen.values() if n > 1),
        out_of_order=sum(1 for a, b in itertools.pairwise(order) if b < a),
        last_event_id=last_id,
    )


def run_replay(
    dsn: str,
    relay: RelayProcess,
    *,
    rate: float = 100.0,
    seconds: float = 15.0,
    disconnect_at: float = 5.0,
    gap: float = 5.0,
) -> ReplayResult:
    label = {"feed": REPLAY_PATH}
    replayed = relay.metric("relay_feed_replayed_total", **label)
    resyncs = relay.metric("relay_feed_resyncs_total", **label)
    result = asyncio.run(_replay(relay.base, dsn, rate, seconds, disconnect_at, gap))
    result.replayed = relay.metric("relay_feed_replayed_total", **label) - replayed
    told = relay.metric("relay_feed_resyncs_total", **label) - resyncs
    if told:
        result.notes.append(f"the relay counted {told:.0f} resync(s) on the feed")
    return result


# --- both ----------------------------------------------------------------------------------


@dataclass
class FeedsResult:
    bursts: list[BurstResult]
    replay: ReplayResult


def run_feeds(
    dsn: str,
    *,
    clients: Sequence[int] = (100,),
    updates: int = 1000,
    rate: float = 100.0,
    seconds: float = 15.0,
    disconnect_at: float = 5.0,
    gap: float = 5.0,
) -> FeedsResult:
    """Both parts on one relay, in an empty database ``dsn`` (the fixture is applied here)."""
    set_up_statbus(dsn)
    relay = RelayProcess(dsn)
    try:
        with Child("feeds-clients", "bench.feeds", "swarm") as swarm:
            bursts = [run_burst(dsn, relay, swarm, n, updates) for n in clients]
        replay = run_replay(
            dsn, relay, rate=rate, seconds=seconds, disconnect_at=disconnect_at, gap=gap
        )
    finally:
        relay.close()
    return FeedsResult(bursts, replay)


def describe(result: FeedsResult) -> list[str]:
    """The figures, one line each, for the console."""
    lines = []
    for b in result.bursts:
        calls = "n/a" if b.statement_calls is None else str(b.statement_calls)
        lines.append(
            f"burst of {b.updates:,} commits in {b.burst_s:.2f} s, {b.connected:,}/{b.clients:,} "
            f"clients: {b.enrich_calls:.0f} enrich calls ({calls} by pg_stat_statements), "
            f"{b.queries_per_payload:.3f} per payload, {b.events:.0f} events; final row p50 "
            f"{b.final_p50_ms} ms, p99 {b.final_p99_ms} ms, max {b.final_max_ms} ms; every "
            f"event p50 {b.event_p50_ms} ms, p99 {b.event_p99_ms} ms; ended on the final row "
            f"{b.ended_on_final:,}/{b.connected:,}, in order {b.ordered:,}"
        )
    r = result.replay
    lines.append(
        f"replay, {r.sent:,} payloads at {r.send_rate:.0f}/s, away {r.gap:g} s: missed "
        f"{r.missed}, replayed {r.replayed:.0f} (seen {r.replayed_seen}), resyncs {r.resyncs}, "
        f"caught up in {r.caught_up_ms} ms; lost {r.lost}, duplicated {r.duplicated}, "
        f"out of order {r.out_of_order}"
    )
    lines += r.notes
    return lines


if __name__ == "__main__":
    if sys.argv[1:] != ["swarm"]:
        sys.exit("usage: python -m bench.feeds swarm (driven by python -m bench --only feeds)")
    raise_nofile()
    try:  # the measuring side should cost little: libuv's loop where it is installed
        import uvloop
    except ImportError:
        asyncio.run(_swarm_main())
    else:
        uvloop.run(_swarm_main())
