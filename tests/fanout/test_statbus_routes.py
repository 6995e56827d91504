"""statbus's three SSE routes, served by the relay's statbus profile (issue 19).

The contract is statbus's own routes (/tmp/spec/statbus-routes.md, from statbus's
app/src/lib/db-listener.ts and app/src/app/api/sse/*/route.ts): the relay must send what they
send, byte for byte, so statbus can delete its listener. Every test drives the fixture
(tests/fixtures/statbus.sql) with the writes statbus's own code makes, so its triggers send
what statbus's do (or, where a write cannot say it, pg_notify with the triggers' own shapes),
reads the relay's streams over real HTTP as exact bytes (tests/raw_sse.py), and compares each
frame with what statbus's route would write for the same notification:

- the expected bytes are computed from the notification as it was sent (captured by a
  listener of our own) or from the row as statbus's listener reads it
  (``statbus_driver.ENRICHED_IMPORT_JOB``), written as JavaScript's JSON.stringify writes it;
- ``id:`` lines are allowed on any frame and must grow; they are left out of comparisons;
- debounces are TRAILING: a burst that keeps arriving within the window is one event (its
  last payload). No assertion is about wall-clock time: "nothing else" is shown by a later
  event (a sentinel) arriving next, or by a heartbeat stamped after the last event.

A relay's ``retry:`` line before a greeting statbus does not send is the subject of the
first-bytes tests only; the other tests read past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg import sql

from relay.app import Relay
from relay.config import Config
from relay.config.profiles import load_profile
from relay.state.stability import State
from tests import statbus_driver as sb
from tests.raw_sse import (
    CID,
    TS,
    RawFrame,
    RawStream,
    expect_frame,
    js_json,
    open_raw,
)
from tests.statbus_messages import (
    deleted_message,
    established,
    job_message,
    reshaped_progress,
)
from tests.support import (
    base_url,
    eventually,
    fresh_database,
    listening,
    relay_config,
    running_relay,
    sample,
)

PROFILE = load_profile("statbus")
WORKER_STATUS = "/api/sse/worker_status"
IMPORT_JOBS = "/api/sse/import-jobs"
WORKER_TASKS = "/api/sse/worker-tasks"
ROUTES = (WORKER_STATUS, IMPORT_JOBS, WORKER_TASKS)

CONNECTED = b"event: connected\ndata: true\n\n"
RETRY_3000 = b"retry: 3000\n\n"
INVALID_IDS = b'{"error":"Invalid job ID format"}'
DEFAULT_SCOPE = "updates_and_all_inserts"
IDS_ONLY = "updates_for_ids_only"
# Heartbeats fast enough to see several in a test (the real ones are 30 s, 10 s, 30 s).
FAST_BEAT = {"heartbeat_interval": "0.3s"}


# --- the database, the relay, the clients ----------------------------------------------------


@pytest.fixture
async def statbus_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    """statbus's shape, with the relay installed by the tables' owner the way the README
    says: ``stability-relay db install --profile statbus`` (it also creates what the feeds
    read). pg_stat_statements, where the server has it, counts the relay's reads."""
    async with fresh_database(pg_admin_dsn, "statbus") as dsn:
        await sb.apply_statbus_fixture(dsn)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            with contextlib.suppress(psycopg.Error):  # not there: the burst test says so
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        done = await asyncio.to_thread(_cli, "db", "install", "--dsn", dsn, "--profile", "statbus")
        assert done.returncode == 0, done.stderr
        yield dsn


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )


@pytest.fixture
async def owner(statbus_dsn: str) -> AsyncIterator[sb.AsyncConn]:
    """The superuser that applied the fixture: the tables' owner, as statbus's worker."""
    async with await psycopg.AsyncConnection.connect(statbus_dsn, autocommit=True) as conn:
        yield conn


def routes_config(
    dsn: str, *, feeds: dict[str, dict[str, Any]] | None = None, **sections: Any
) -> Config:
    """The statbus profile's config; ``feeds`` overrides settings of its feeds by path (the
    profile's feeds are the config's unless it lists its own, so they are listed here)."""
    listed = []
    for feed in PROFILE.feeds:
        listed.append({**feed, **(feeds or {}).get(feed["path"], {})})
    return relay_config(dsn, profile="statbus", feeds=listed, **sections)


@asynccontextmanager
async def statbus_relay(dsn: str, **options: Any) -> AsyncIterator[Relay]:
    async with running_relay(routes_config(dsn, **options)) as relay:
        await eventually(lambda: relay.stability.current.state is not State.UNKNOWN)
        yield relay


async def clients_in(relay: Relay, count: int) -> None:
    """Every stream opened so far is being sent to."""
    await eventually(lambda: len(relay.feeds) == count)


async def past_connected(stream: RawStream) -> None:
    """worker_status and worker-tasks: past their ``event: connected`` greeting."""
    assert stream.response.status == 200, stream.response.status
    frame = await stream.frame()
    while frame.is_retry:
        frame = await stream.frame()
    assert frame.body == CONNECTED, stream.received


def connection_established(job_ids: Iterable[int], scope: str) -> str:
    return f"data: {established(job_ids, scope)}\n\n"


async def past_established(
    stream: RawStream, job_ids: Iterable[int] = (), scope: str = DEFAULT_SCOPE
) -> str:
    """import-jobs: past its ``connection_established`` message; the connection's id."""
    assert stream.response.status == 200, (stream.response.status, stream.received)
    frame = await stream.data_frame()
    return expect_frame(frame, connection_established(job_ids, scope))["cid"][0]


def unnamed(payload_json: str) -> bytes:
    return f"data: {payload_json}\n\n".encode()


def job_event(verb: str, enriched: str) -> str:
    """statbus's import-jobs event for ``enriched`` (the row as its listener read it)."""
    return f"data: {job_message(verb, enriched)}\n\n"


def deleted_event(job_id: int) -> str:
    return f"data: {deleted_message(job_id)}\n\n"


async def frames_until(stream: RawStream, last: bytes | str) -> list[RawFrame]:
    """Data frames up to and including the first whose body is (or matches) ``last``."""
    seen: list[RawFrame] = []
    while True:
        frame = await stream.data_frame()
        seen.append(frame)
        if isinstance(last, bytes) and frame.body == last:
            return seen
        if isinstance(last, str):
            try:
                expect_frame(frame, last)
            except AssertionError:
                continue
            return seen


async def quiet_until_a_beat_after(stream: RawStream, timestamp: str) -> None:
    """Nothing but heartbeats until one stamped after ``timestamp`` (an event's own stamp, or
    later): whatever the relay sent this client before then has been read, and it was no
    event."""
    while True:
        frame = await stream.frame(timeout=30)
        if frame.is_retry:
            continue
        assert frame.is_heartbeat, f"unexpected frame {frame}"
        if frame.json()["timestamp"] > timestamp:
            return


def stamp(frame: RawFrame) -> str:
    return str(frame.json()["timestamp"])


async def not_retry(stream: RawStream) -> RawFrame:
    """The next frame that is not a `retry:` line."""
    frame = await stream.frame()
    while frame.is_retry:
        frame = await stream.frame()
    return frame


def copy_of(frame: RawFrame) -> tuple[Any, ...]:
    """What every client's copy of an event shares: its id, its name and its data, its send
    time left out (statbus stamps each client's copy itself)."""
    data = frame.json()
    if isinstance(data, dict):
        data.pop("timestamp", None)
    return (frame.id, frame.event, data)


@dataclass
class Capture:
    """Every notification on some channels, as sent (a listener of our own)."""

    notes: list[tuple[str, str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def payloads(self, channel: str) -> list[str]:
        return [payload for name, payload in self.notes if name == channel]

    async def count(self, channel: str, n: int, timeout: float = 10.0) -> list[str]:
        async with asyncio.timeout(timeout):
            while len(self.payloads(channel)) < n:
                self.arrived.clear()
                await self.arrived.wait()
        return self.payloads(channel)

    def heard(self, note: psycopg.Notify) -> None:
        self.notes.append((note.channel, note.payload))
        self.arrived.set()


@asynccontextmanager
async def captured(dsn: str, *channels: str) -> AsyncIterator[Capture]:
    capture = Capture()
    async with listening(dsn, channels, capture.heard):
        yield capture


async def worker_status_frames(
    statbus_dsn: str, owner: sb.AsyncConn, channel: str, payloads: list[str]
) -> list[RawFrame]:
    """The frames /api/sse/worker_status sends one client for ``payloads`` on ``channel``,
    sent one by one once the client is counted."""
    async with (
        statbus_relay(statbus_dsn) as relay,
        open_raw(base_url(relay) + WORKER_STATUS) as stream,
    ):
        await past_connected(stream)
        await clients_in(relay, 1)
        for payload in payloads:
            await sb.notify_raw(owner, channel, payload)
        return await stream.data_frames(len(payloads))


# --- the fixture's facts these routes rest on -----------------------------------------------


async def test_fixture_has_import_definitions_and_the_channels_the_routes_listen_to(
    owner: sb.AsyncConn, statbus_dsn: str
) -> None:
    cur = await owner.execute("SELECT enum_range(NULL::public.import_mode)::text[]")
    assert tuple((await cur.fetchone() or [()])[0]) == sb.IMPORT_MODES
    cur = await owner.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
        " WHERE attrelid = 'public.import_definition'::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum"
    )
    assert await cur.fetchall() == [
        ("id", "integer", True),
        ("slug", "text", True),
        ("name", "text", True),
        ("note", "text", False),
        ("mode", "import_mode", True),
        ("custom", "boolean", True),
        ("enabled", "boolean", True),
        ("valid", "boolean", True),
        ("created_at", "timestamp with time zone", True),
        ("updated_at", "timestamp with time zone", True),
    ]
    cur = await owner.execute(
        "SELECT confrelid::regclass::text FROM pg_constraint"
        " WHERE conrelid = 'public.import_job'::regclass AND contype = 'f'"
        " AND conkey = ARRAY[(SELECT attnum FROM pg_attribute WHERE attname = 'definition_id'"
        " AND attrelid = 'public.import_job'::regclass)]"
    )
    assert await cur.fetchall() == [("import_definition",)]

    channels = ("import_job", "import_job_progress", "worker_task_changed", "worker_status")
    async with captured(statbus_dsn, *channels) as capture:
        job = await sb.add_import_job(owner, "facts")
        await sb.report_progress(owner, job, imported_rows=1)
        await sb.delete_import_job(owner, job)
        parent, [kid] = await sb.add_task_family(owner, 1)
        await sb.set_task_state(owner, kid, "processing")
        await owner.execute("CALL worker.notify_is_importing_start()")
        await capture.count("worker_status", 1)
    assert [json.loads(p) for p in capture.payloads("import_job")] == [
        {"verb": "INSERT", "id": job},
        {"verb": "UPDATE", "id": job},
        {"verb": "DELETE", "id": job},
    ]
    [progress] = capture.payloads("import_job_progress")
    assert list(json.loads(progress)) == [
        "job_id",
        "state",
        "total_rows",
        "analysis_completed_pct",
        "analysis_rows_per_sec",
        "imported_rows",
        "import_completed_pct",
        "import_rows_per_sec",
        "error_count",
        "warning_count",
    ]
    assert [json.loads(p) for p in capture.payloads("worker_task_changed")] == [
        {"id": kid, "parent_id": parent}
    ]
    # json_build_object's spelling: statbus's routes parse it and write it again, compactly.
    assert capture.payloads("worker_status") == ['{"type" : "is_importing", "status" : true}']


def test_the_profile_serves_the_three_routes_with_statbus_s_intervals() -> None:
    """statbus's intervals, read from the config (not waited for): heartbeats 30 s (event),
    10 s (event), 30 s (comment); debounce 500 ms per type and per progress job, 1 s per
    parent task."""
    config = Config.model_validate({"profile": "statbus"})
    feeds = {feed.path: feed for feed in config.feeds}
    assert set(feeds) == set(ROUTES)
    status, jobs, tasks = feeds[WORKER_STATUS], feeds[IMPORT_JOBS], feeds[WORKER_TASKS]
    assert (status.heartbeat, status.heartbeat_interval) == ("event", 30.0)
    assert (jobs.heartbeat, jobs.heartbeat_interval) == ("event", 10.0)
    assert (tasks.heartbeat, tasks.heartbeat_interval) == ("comment", 30.0)
    status_rules = status.rules("worker_status").coalesce
    progress_rules = status.rules("import_job_progress").coalesce
    task_rules = tasks.rules("worker_task_changed").coalesce
    jobs_rules = jobs.rules("import_job").coalesce
    assert status_rules is not None and (status_rules.window, status_rules.key) == (0.5, "type")
    assert progress_rules is not None and (progress_rules.window, progress_rules.key) == (
        0.5,
        "job_id",
    )
    assert task_rules is not None and (task_rules.window, task_rules.key) == (1.0, "parent_id")
    # statbus's debounces have no cap: a key that keeps arriving waits for a pause
    for rules in (status_rules, progress_rules, task_rules):
        assert rules.max_wait is None
    assert jobs_rules is None  # import_job: no debounce


# --- /api/sse/worker_status -----------------------------------------------------------------


async def test_worker_status_first_bytes_and_headers(statbus_dsn: str) -> None:
    """statbus: the headers, then `event: connected` / `data: true` first (no retry line)."""
    async with statbus_relay(statbus_dsn) as relay:
        async with open_raw(base_url(relay) + WORKER_STATUS) as stream:
            assert stream.response.status == 200
            assert stream.response.headers["Content-Type"] == "text/event-stream"
            assert stream.response.headers["Cache-Control"] == "no-cache, no-transform"
            first = await stream.frame()
            assert first.body == CONNECTED, bytes(stream.received)
            assert bytes(stream.received).startswith(first.raw)


async def test_worker_status_sends_statbus_s_hooks_as_json_stringify_writes_them(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """The worker's own hooks (json_build_object's spelling) arrive compact, unnamed, one
    event per type in the order sent."""
    async with (
        statbus_relay(statbus_dsn) as relay,
        captured(statbus_dsn, "worker_status") as capture,
        open_raw(base_url(relay) + WORKER_STATUS) as stream,
    ):
        await past_connected(stream)
        await clients_in(relay, 1)
        await owner.execute("CALL worker.notify_is_importing_start()")
        await owner.execute("CALL worker.notify_task_progress()")  # idle: two status=false
        sent = await capture.count("worker_status", 3)
        frames = await stream.data_frames(3)
        assert [f.body for f in frames] == [unnamed(js_json(p)) for p in sent]
        assert [f.body for f in frames] == [
            b'data: {"type":"is_importing","status":true}\n\n',
            b'data: {"type":"is_deriving_statistical_units","status":false}\n\n',
            b'data: {"type":"is_deriving_reports","status":false}\n\n',
        ]
        stream.assert_ids_grow()


async def test_worker_status_numbers_and_text_as_json_stringify_writes_them(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """statbus parses each payload and writes it again: 12.50 is 12.5, 40.00 is 40, big and
    small numbers in JavaScript's spelling, integer-like keys first, text as is."""
    payloads = [
        '{"type" : "pct", "a" : 12.50, "b" : 40.00, "c" : -0.0, "d" : 1e2}',
        '{"type":"big","a":12345678901234567890,"b":1e21,"c":1.5e300}',
        '{"type":"small","a":0.000001,"b":0.0000001,"c":0.00001,"d":2.5e-7}',
        '{"type":"text","t":"ø \\u00e6 \\"q\\" \\n \\u0001 \\/","2":1,"10":2}',
    ]
    frames = await worker_status_frames(statbus_dsn, owner, "worker_status", payloads)
    assert [f.body for f in frames] == [unnamed(js_json(p)) for p in payloads]
    assert frames[0].body == b'data: {"type":"pct","a":12.5,"b":40,"c":0,"d":100}\n\n'
    assert frames[2].body == (
        b'data: {"type":"small","a":0.000001,"b":1e-7,"c":0.00001,"d":2.5e-7}\n\n'
    )


async def test_worker_status_debounce_is_trailing_per_type(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """is_importing keeps arriving, 100 ms apart, for 1.2 s (over two 500 ms windows): one
    event, the last payload. A type sent once meanwhile is its own event, sent first (its
    window ended first). A sentinel type sent after the burst comes after it."""
    async with (
        statbus_relay(statbus_dsn) as relay,
        captured(statbus_dsn, "worker_status") as capture,
        open_raw(base_url(relay) + WORKER_STATUS) as stream,
    ):
        await past_connected(stream)
        await clients_in(relay, 1)
        for step in range(12):
            hook = "start" if step % 2 == 0 else "stop"
            await owner.execute(f"CALL worker.notify_is_importing_{hook}()")
            if step == 2:
                await owner.execute("CALL worker.derive_reports_phase('{}'::jsonb)")
            await asyncio.sleep(0.1)
        await owner.execute("CALL worker.derive_units_phase('{}'::jsonb)")  # the sentinel
        sent = await capture.count("worker_status", 14)
        sentinel = unnamed(js_json(sent[-1]))
        frames = await frames_until(stream, sentinel)
        assert [f.body for f in frames] == [
            b'data: {"type":"is_deriving_reports","status":true}\n\n',
            b'data: {"type":"is_importing","status":false}\n\n',  # the last: stop, idle
            b'data: {"type":"is_deriving_statistical_units","status":true}\n\n',
        ]
        stream.assert_ids_grow()


async def test_worker_status_reshapes_import_job_progress_per_job(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """A job's progress steps, in quick succession: one event per job with its last payload,
    reshaped to statbus's keys (the rates dropped); two jobs, two events."""
    async with (
        statbus_relay(statbus_dsn) as relay,
        captured(statbus_dsn, "import_job_progress", "worker_status") as capture,
        open_raw(base_url(relay) + WORKER_STATUS) as stream,
    ):
        await past_connected(stream)
        await clients_in(relay, 1)
        a = await sb.add_import_job(owner, "a")
        b = await sb.add_import_job(owner, "b")
        await sb.set_import_state(
            owner, a, "upload_completed", total_rows=1000, total_analysis_steps_weighted=3000
        )
        await sb.set_import_state(owner, a, "preparing_data")
        await sb.set_import_state(owner, b, "upload_completed", total_rows=10)
        await sb.set_import_state(owner, a, "analysing_data")
        await sb.report_progress(owner, a, completed_analysis_steps_weighted=1000)  # 33.33
        await sb.report_progress(owner, a, completed_analysis_steps_weighted=2000, error_count=2)
        await owner.execute("CALL worker.notify_is_importing_start()")  # the sentinel
        await capture.count("worker_status", 1)
        progress = capture.payloads("import_job_progress")
        assert len(progress) == 6
        last_a = [p for p in progress if json.loads(p)["job_id"] == a][-1]
        last_b = [p for p in progress if json.loads(p)["job_id"] == b][-1]
        sentinel = b'data: {"type":"is_importing","status":true}\n\n'
        frames = await frames_until(stream, sentinel)
        # b's last step came before a's last: its window ended first
        assert [f.body for f in frames] == [
            unnamed(reshaped_progress(last_b)),
            unnamed(reshaped_progress(last_a)),
            sentinel,
        ]
        assert frames[1].body == (
            b'data: {"type":"import_job_progress","job_id":%d,"state":"analysing_data",'
            b'"total_rows":1000,"analysis_completed_pct":66.67,"imported_rows":0,'
            b'"import_completed_pct":0,"error_count":2,"warning_count":0}\n\n' % a
        )


async def test_worker_status_progress_keys_absent_null_and_extra(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """Payloads as other senders could shape them: the counts default to 0 when absent or
    null, other absent keys stay absent, null ones stay null, every other key is dropped, and
    the output order is statbus's whatever the input order."""
    payloads = [
        '{"job_id":901,"state":"analysing_data","total_rows":10,'
        '"analysis_completed_pct":12.50,"analysis_rows_per_sec":3.25,"imported_rows":0,'
        '"import_completed_pct":0.00,"import_rows_per_sec":null,"error_count":null,'
        '"warning_count":null}',
        '{"job_id":902,"state":"finished"}',
        '{"warning_count":4,"extra":"x","imported_rows":5,"job_id":903,"error_count":1,'
        '"total_rows":null}',
        '{"type":"not_this","job_id":904,"analysis_rows_per_sec":1}',
    ]
    frames = await worker_status_frames(statbus_dsn, owner, "import_job_progress", payloads)
    assert [f.body for f in frames] == [unnamed(reshaped_progress(p)) for p in payloads]
    assert [f.body for f in frames] == [
        b'data: {"type":"import_job_progress","job_id":901,"state":"analysing_data",'
        b'"total_rows":10,"analysis_completed_pct":12.5,"imported_rows":0,'
        b'"import_completed_pct":0,"error_count":0,"warning_count":0}\n\n',
        b'data: {"type":"import_job_progress","job_id":902,"state":"finished",'
        b'"error_count":0,"warning_count":0}\n\n',
        b'data: {"type":"import_job_progress","job_id":903,"total_rows":null,'
        b'"imported_rows":5,"error_count":1,"warning_count":4}\n\n',
        b'data: {"type":"import_job_progress","job_id":904,"error_count":0,"warning_count":0}\n\n',
    ]


async def test_worker_status_progress_and_status_debounce_independently(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """A job's progress and the is_importing type interleave: each key its own timer, each
    its last payload; a second job's progress stays apart from the first's."""
    async with (
        statbus_relay(statbus_dsn) as relay,
        open_raw(base_url(relay) + WORKER_STATUS) as stream,
    ):
        await past_connected(stream)
        await clients_in(relay, 1)
        sends = [
            ("import_job_progress", '{"job_id":1,"state":"analysing_data","imported_rows":1}'),
            ("worker_status", '{"type":"is_importing","status":true}'),
            ("import_job_progress", '{"job_id":2,"state":"analysing_data","imported_rows":7}'),
            ("import_job_progress", '{"job_id":1,"state":"analysing_data","imported_rows":2}'),
            ("worker_status", '{"type":"is_importing","status":false}'),
            ("import_job_progress", '{"job_id":1,"state":"processing_data","imported_rows":3}'),
        ]
        for channel, payload in sends:
            await sb.notify_raw(owner, channel, payload)
        await sb.notify_raw(owner, "worker_status", '{"type":"sentinel"}')
        frames = await frames_until(stream, b'data: {"type":"sentinel"}\n\n')
        assert [f.body for f in frames] == [
            unnamed(reshaped_progress(sends[2][1])),
            b'data: {"type":"is_importing","status":false}\n\n',
            unnamed(reshaped_progress(sends[5][1])),
            b'data: {"type":"sentinel"}\n\n',
        ]


async def test_worker_status_heartbeat_is_a_named_json_event(statbus_dsn: str) -> None:
    async with (
        statbus_relay(statbus_dsn, feeds={WORKER_STATUS: FAST_BEAT}) as relay,
        open_raw(base_url(relay) + WORKER_STATUS) as stream,
    ):
        await past_connected(stream)
        for _ in range(2):
            beat = await not_retry(stream)
            expect_frame(
                beat, f'event: heartbeat\ndata: {{"type":"heartbeat","timestamp":"{TS}"}}\n\n'
            )


# --- /api/sse/import-jobs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "job_ids", "scope"),
    [
        ("", [], DEFAULT_SCOPE),
        ("?ids=3,4", [3, 4], DEFAULT_SCOPE),
        ("?ids=3,4&scope=updates_for_ids_only", [3, 4], IDS_ONLY),
        ("?scope=updates_for_ids_only", [], IDS_ONLY),
    ],
    ids=["plain", "ids", "ids-only", "ids-only-without-ids"],
)
async def test_import_jobs_first_bytes_and_headers(
    statbus_dsn: str, query: str, job_ids: list[int], scope: str
) -> None:
    """statbus: connection_established first, then `retry: 3000`, and nothing before them."""
    async with statbus_relay(statbus_dsn) as relay:
        async with open_raw(base_url(relay) + IMPORT_JOBS + query) as stream:
            assert stream.response.status == 200
            headers = stream.response.headers
            assert headers["Content-Type"] == "text/event-stream"
            assert headers["Cache-Control"] == "no-cache, no-transform"
            assert headers["X-Accel-Buffering"] == "no"
            first, second = await stream.frame(), await stream.frame()
            expect_frame(first, connection_established(job_ids, scope))
            assert second.body == RETRY_3000, bytes(stream.received)
            assert bytes(stream.received).startswith(first.raw + second.raw)


# One relay for every spelling (a database and a relay each cost ~2 s of the suite's time).
IDS_SPELLINGS = [
    ("", []),
    ("0", []),
    ("0,,5", [5]),
    ("9,,10", [9, 10]),
    ("5,5", [5, 5]),
    ("6&ids=7", [6]),  # URLSearchParams.get(): the first
    ("12abc", [12]),
    ("1.9,1e3,1_000", [1, 1, 1]),
    ("%2B7", [7]),  # "+7"
    ("+8", [8]),  # the query's "+" is a space: " 8"
    ("%20%207%20", [7]),
    ("%097", [7]),  # a tab, trimmed
    ("%EF%BB%BF9", [9]),  # U+FEFF: JavaScript's trim() removes it
    ("%C2%A010", [10]),  # U+00A0: so does it this
    ("%E3%80%8011", [11]),  # U+3000 too
    (",".join(map(str, range(1, 151))), list(range(1, 151))),  # statbus sets no limit
]
BAD_IDS = [
    "-3",
    "abc",
    "00",  # not "0", so parsed: 0
    "-0",
    "1,abc",
    "4,-1",
    "NaN",
    "Infinity",
    "%D9%A1%D9%A2",  # Arabic-Indic digits: parseInt reads ASCII digits only
    "%1C5",  # U+001C: Python's strip() removes it, JavaScript's trim() does not
    "%C2%855",  # U+0085: likewise
]


async def test_import_jobs_ids_read_as_statbus_reads_them(statbus_dsn: str) -> None:
    async with statbus_relay(statbus_dsn) as relay:
        for ids, job_ids in IDS_SPELLINGS:
            async with open_raw(f"{base_url(relay)}{IMPORT_JOBS}?ids={ids}") as stream:
                try:
                    await past_established(stream, job_ids)
                except AssertionError as failed:
                    raise AssertionError(f"ids={ids!r}: {failed}") from failed


async def test_import_jobs_bad_ids_are_a_400_with_statbus_s_body(statbus_dsn: str) -> None:
    async with statbus_relay(statbus_dsn) as relay, aiohttp.ClientSession() as http:
        for ids in BAD_IDS:
            async with http.get(f"{base_url(relay)}{IMPORT_JOBS}?ids={ids}") as response:
                assert response.status == 400, ids
                assert response.content_type == "application/json", ids
                assert await response.read() == INVALID_IDS, ids


async def test_import_jobs_scope_values_other_than_ids_only_are_the_default(
    statbus_dsn: str,
) -> None:
    async with statbus_relay(statbus_dsn) as relay:
        for scope in ("", "UPDATES_FOR_IDS_ONLY", "updates_and_all_inserts", "x"):
            url = f"{base_url(relay)}{IMPORT_JOBS}?ids=2&scope={scope}"
            async with open_raw(url) as stream:
                await past_established(stream, [2], DEFAULT_SCOPE)


async def test_import_jobs_sends_the_enriched_row(statbus_dsn: str, owner: sb.AsyncConn) -> None:
    """Every column as to_jsonb reads it (jsonb's key order, numbers as JavaScript writes
    them: 40.00 is 40), plus the definition's slug, name, mode and custom; a job without a
    definition has them null. Each write is read by the relay before the next is made."""
    async with (
        statbus_relay(statbus_dsn) as relay,
        open_raw(base_url(relay) + IMPORT_JOBS) as stream,
    ):
        await past_established(stream)
        await clients_in(relay, 1)

        async def sent(verb: str, job: int) -> None:
            frame = await stream.data_frame()
            enriched = await sb.enriched_import_job(owner, job)
            assert enriched is not None
            expect_frame(frame, job_event(verb, enriched))

        custom = await sb.add_import_definition(
            owner, "hr_ø", name='HR "informal" ø', mode="establishment_informal"
        )
        a = await sb.add_import_job(owner, "a", definition_id=custom, description="tab\there")
        await sent("INSERT", a)
        await sb.set_import_state(
            owner, a, "upload_completed", total_rows=1000, total_analysis_steps_weighted=5000
        )
        await sent("UPDATE", a)
        await sb.set_import_state(owner, a, "preparing_data")
        await sent("UPDATE", a)
        await sb.set_import_state(owner, a, "analysing_data")
        await sent("UPDATE", a)
        await sb.report_progress(owner, a, completed_analysis_steps_weighted=2000)  # 40.00
        await sent("UPDATE", a)
        assert b'"analysis_completed_pct":40,' in stream.frames[-1].raw
        await sb.update_import_definition(owner, custom, name="renamed", custom=False)
        await sb.update_import_job(owner, a, note="line\nbreak")
        await sent("UPDATE", a)
        assert b'"name":"renamed"' in stream.frames[-1].raw
        await sb.set_import_state(owner, a, "failed", error='boom "x"')
        await sent("UPDATE", a)
        b = await sb.add_import_job(owner, "b", definition_id=None)
        await sent("INSERT", b)
        assert (
            b'"import_definition":{"mode":null,"name":null,"slug":null,"custom":null}'
            in stream.frames[-1].raw
        )
        c = await sb.add_import_job(owner, "c")  # the built-in definition
        await sent("INSERT", c)
        stream.assert_ids_grow()


async def test_import_jobs_has_no_debounce_each_job_s_change_is_sent_in_order(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """Three jobs changed in quick succession, without waiting: three events, in the order of
    the changes, each with its row."""
    jobs = [await sb.add_import_job(owner, slug) for slug in ("x", "y", "z")]
    async with (
        statbus_relay(statbus_dsn) as relay,
        open_raw(base_url(relay) + IMPORT_JOBS) as stream,
    ):
        await past_established(stream)
        await clients_in(relay, 1)
        for job in jobs:
            await sb.update_import_job(owner, job, note=f"quick {job}")
        rows = [await sb.enriched_import_job(owner, job) for job in jobs]
        frames = await stream.data_frames(3)
        for frame, row in zip(frames, rows, strict=True):
            assert row is not None
            expect_frame(frame, job_event("UPDATE", row))


async def test_import_jobs_timestamps_as_the_database_s_own_sessions_write_them(
    statbus_dsn: str, pg_admin_dsn: str
) -> None:
    """statbus's listener reads with a session of the database's defaults: with the database's
    TimeZone set to Oslo, the timestamps carry +01:00/+02:00, not UTC's +00:00."""
    dbname = psycopg.conninfo.conninfo_to_dict(statbus_dsn)["dbname"]
    async with await psycopg.AsyncConnection.connect(pg_admin_dsn, autocommit=True) as admin:
        await admin.execute(
            sql.SQL("ALTER DATABASE {} SET timezone TO 'Europe/Oslo'").format(
                sql.Identifier(str(dbname))
            )
        )
    async with await psycopg.AsyncConnection.connect(statbus_dsn, autocommit=True) as conn:
        async with (
            statbus_relay(statbus_dsn) as relay,
            open_raw(base_url(relay) + IMPORT_JOBS) as stream,
        ):
            await past_established(stream)
            await clients_in(relay, 1)
            job = await sb.add_import_job(conn, "oslo")
            frame = await stream.data_frame()
            enriched = await sb.enriched_import_job(conn, job)
            assert enriched is not None and "+00:00" not in enriched
            expect_frame(frame, job_event("INSERT", enriched))


async def test_import_jobs_delete_and_rows_gone_before_they_are_read(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """DELETE: {verb, import_job: {id}}, no read. A row deleted before it is read sends
    nothing for its INSERT or UPDATE (statbus's read finds no row); nor does a notification
    about a row that never was."""
    async with (
        statbus_relay(statbus_dsn) as relay,
        open_raw(base_url(relay) + IMPORT_JOBS) as stream,
    ):
        await past_established(stream)
        await clients_in(relay, 1)

        async def added(slug: str) -> tuple[int, str]:
            job = await sb.add_import_job(owner, slug)
            row = await sb.enriched_import_job(owner, job)
            assert row is not None
            return job, job_event("INSERT", row)

        a, a_inserted = await added("a")
        expect_frame(await stream.data_frame(), a_inserted)
        await sb.delete_import_job(owner, a)
        expect_frame(await stream.data_frame(), deleted_event(a))

        async with owner.transaction():  # INSERT b and DELETE b, notified at commit
            b = await sb.add_import_job(owner, "b")
            await sb.delete_import_job(owner, b)
        c, c_inserted = await added("c")
        frames = await frames_until(stream, c_inserted)
        assert len(frames) == 2, frames
        expect_frame(frames[0], deleted_event(b))

        async with owner.transaction():  # UPDATE c and DELETE c
            await sb.update_import_job(owner, c, note="gone")
            await sb.delete_import_job(owner, c)
        await sb.notify_import_job(owner, "UPDATE", 1_000_000)
        await sb.notify_import_job(owner, "INSERT", 1_000_001)
        _, d_inserted = await added("d")  # the sentinel
        frames = await frames_until(stream, d_inserted)
        assert len(frames) == 2, frames
        expect_frame(frames[0], deleted_event(c))
        stream.assert_ids_grow()


async def test_import_jobs_ids_and_scope_decide_who_gets_what(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """Five clients, one step at a time (each read by the client that gets everything before
    the next): with ids, every INSERT and the listed ids' other verbs; updates_for_ids_only,
    the listed ids' events only (an INSERT of one too); updates_for_ids_only without ids,
    nothing at all."""
    a = await sb.add_import_job(owner, "a")
    b = await sb.add_import_job(owner, "b")
    async with statbus_relay(statbus_dsn, feeds={IMPORT_JOBS: FAST_BEAT}) as relay:
        base = base_url(relay) + IMPORT_JOBS
        async with (
            open_raw(base) as every,
            open_raw(f"{base}?ids={a}") as mine,
            open_raw(f"{base}?ids={a},{b}&scope=updates_for_ids_only") as only,
            open_raw(f"{base}?ids={b}&scope=updates_for_ids_only") as only_b,
            open_raw(f"{base}?scope=updates_for_ids_only") as none,
        ):
            await past_established(every)
            await past_established(mine, [a])
            await past_established(only, [a, b], IDS_ONLY)
            await past_established(only_b, [b], IDS_ONLY)
            await past_established(none, [], IDS_ONLY)
            await clients_in(relay, 5)
            expected: dict[str, list[str]] = {
                "every": [],
                "mine": [],
                "only": [],
                "only_b": [],
            }

            async def step(verb: str, job: int, *who: str) -> None:
                frame = await every.data_frame()
                if verb == "DELETE":
                    template = deleted_event(job)
                else:
                    enriched = await sb.enriched_import_job(owner, job)
                    assert enriched is not None
                    template = job_event(verb, enriched)
                expect_frame(frame, template)
                for name in ("every", *who):
                    expected[name].append(template)

            await sb.update_import_job(owner, a, note="1")
            await step("UPDATE", a, "mine", "only")
            await sb.update_import_job(owner, b, note="2")
            await step("UPDATE", b, "only", "only_b")
            c = await sb.add_import_job(owner, "c")
            await step("INSERT", c, "mine")
            await sb.notify_import_job(owner, "INSERT", b)  # an INSERT of a listed id
            await step("INSERT", b, "mine", "only", "only_b")
            await sb.delete_import_job(owner, c)
            await step("DELETE", c)
            await sb.delete_import_job(owner, b)
            await step("DELETE", b, "only", "only_b")
            await sb.update_import_job(owner, a, note="last")
            await step("UPDATE", a, "mine", "only")

            last = stamp(every.frames[-1])
            for name, stream in (("mine", mine), ("only", only), ("only_b", only_b)):
                got = await stream.data_frames(len(expected[name]))
                for frame, template in zip(got, expected[name], strict=True):
                    expect_frame(frame, template)
                await quiet_until_a_beat_after(stream, last)
            await quiet_until_a_beat_after(none, last)
            for stream in (every, mine, only, only_b, none):
                stream.assert_ids_grow()


async def test_import_jobs_heartbeat_names_the_connection_and_counts_its_ids(
    statbus_dsn: str,
) -> None:
    async with statbus_relay(statbus_dsn, feeds={IMPORT_JOBS: FAST_BEAT}) as relay:
        base = base_url(relay) + IMPORT_JOBS
        cases = [("?ids=3,4", [3, 4]), ("", []), ("?ids=0,7", [7]), ("?ids=5,5", [5, 5])]
        for query, job_ids in cases:
            async with open_raw(base + query) as stream:
                cid = await past_established(stream, job_ids)
                for _ in range(2):
                    beat = await not_retry(stream)
                    found = expect_frame(
                        beat,
                        'event: heartbeat\ndata: {"type":"heartbeat",'
                        f'"timestamp":"{TS}","jobCount":{len(job_ids)},'
                        f'"connectionId":"{CID}"}}\n\n',
                    )
                    assert found["cid"] == [cid]


async def test_import_jobs_each_connection_has_its_own_id(statbus_dsn: str) -> None:
    async with statbus_relay(statbus_dsn) as relay:
        url = base_url(relay) + IMPORT_JOBS
        async with open_raw(url) as one, open_raw(url) as two:
            assert await past_established(one) != await past_established(two)


async def test_import_jobs_burst_reads_boundedly_and_every_client_ends_on_the_last_row(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """1,000 UPDATEs of one job, each its own transaction, as fast as the server commits
    them, five clients connected: the row is read far fewer times than notified,
    never once per client; each client's last event is the final row, and the rows it got
    before never go backwards."""
    job = await sb.add_import_job(owner, "burst")
    other = await sb.add_import_job(owner, "other")
    async with statbus_relay(statbus_dsn) as relay:
        base = base_url(relay) + IMPORT_JOBS
        async with (
            open_raw(base) as c1,
            open_raw(base) as c2,
            open_raw(f"{base}?ids={job}") as c3,
            open_raw(f"{base}?ids={job}&scope=updates_for_ids_only") as c4,
            open_raw(f"{base}?ids={other}&scope=updates_for_ids_only") as c5,
        ):
            await past_established(c1)
            await past_established(c2)
            await past_established(c3, [job])
            await past_established(c4, [job], IDS_ONLY)
            await past_established(c5, [other], IDS_ONLY)
            await clients_in(relay, 5)
            reads_before = await enrich_calls(owner)
            notified_before = sample(relay, "relay_notifications_total", channel="import_job")
            # One statement, a thousand transactions: each commits (and notifies) on its own.
            await owner.execute(
                sql.SQL(
                    "DO $burst$ BEGIN FOR i IN 0..999 LOOP"
                    " UPDATE public.import_job SET note = lpad(i::text, 4, '0') WHERE id = {};"
                    " COMMIT; END LOOP; END $burst$"
                ).format(sql.Literal(job))
            )
            final = await sb.enriched_import_job(owner, job)
            assert final is not None and json.loads(final)["note"] == "0999"
            counts = []
            for stream in (c1, c2, c3, c4):
                notes: list[str] = []
                while not notes or notes[-1] != "0999":
                    frame = await stream.data_frame(timeout=30)
                    event = frame.json()
                    assert (event["verb"], event["import_job"]["id"]) == ("UPDATE", job)
                    notes.append(event["import_job"]["note"])
                assert notes == sorted(notes), notes
                expect_frame(stream.frames[-1], job_event("UPDATE", final))
                counts.append(len(notes))
            # The relay is told of every one: an early notification's read already returns the
            # final row, so the clients can have it before the last notifications are counted.
            await eventually(
                lambda: (
                    sample(relay, "relay_notifications_total", channel="import_job")
                    - notified_before
                    >= 1000
                ),
                timeout=30,
            )
            # Sentinels. Until they come, a client may get the final row again (a read of a
            # notification of the burst made after the last commit: statbus reads once per
            # notification, so it sends the final row many times), and nothing else.
            await sb.update_import_job(owner, job, note="after")
            after = await sb.enriched_import_job(owner, job)
            await sb.update_import_job(owner, other, note="other")
            other_row = await sb.enriched_import_job(owner, other)
            assert after is not None and other_row is not None
            for stream in (c1, c2, c3, c4):
                frames = await frames_until(stream, job_event("UPDATE", after))
                for frame in frames[:-1]:
                    expect_frame(frame, job_event("UPDATE", final))
            for stream in (c1, c2):  # the burst's last notification may be read after "after"
                frames = await frames_until(stream, job_event("UPDATE", other_row))
                for frame in frames[:-1]:
                    expect_frame(frame, job_event("UPDATE", after))
            expect_frame(await c5.data_frame(), job_event("UPDATE", other_row))
            reads = await enrich_calls(owner)
            for stream in (c1, c2, c3, c4, c5):
                stream.assert_ids_grow()
    if reads_before is None or reads is None:
        pytest.skip("pg_stat_statements is not loaded: the reads were not counted")
    calls = reads - reads_before
    print(f"burst: 1000 notifications, 5 clients: {calls} enrich calls, events {counts}")
    assert 1 <= calls <= 100, calls


async def greeting_and_resync(stream: RawStream, route: str) -> None:
    """A returning client that cannot be told what it missed: statbus's greeting (every
    connect gets it) and `event: resync`, in either order, and nothing else first."""
    assert stream.response.status == 200, stream.response.status
    greeting = resync = False
    while not (greeting and resync):
        frame = await not_retry(stream)
        if frame.event == "resync":
            assert not resync, stream.frames
            resync = True
        elif route == IMPORT_JOBS:
            expect_frame(frame, connection_established([], DEFAULT_SCOPE))
            greeting = True
        else:
            assert frame.body == CONNECTED, stream.frames
            greeting = True


async def enrich_calls(conn: sb.AsyncConn) -> int | None:
    """Calls of the relay's enrich function(s) in this database so far (pg_stat_statements)."""
    try:
        cur = await conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND query LIKE '%system_stability_enrich_%'"
            " AND query NOT LIKE '%pg_stat_statements%'"
        )
    except psycopg.Error:
        return None
    row = await cur.fetchone()
    return None if row is None else int(row[0])


# --- /api/sse/worker-tasks ------------------------------------------------------------------


async def test_worker_tasks_first_bytes(statbus_dsn: str) -> None:
    async with statbus_relay(statbus_dsn) as relay:
        async with open_raw(base_url(relay) + WORKER_TASKS) as stream:
            assert stream.response.status == 200
            assert stream.response.headers["Content-Type"] == "text/event-stream"
            first = await stream.frame()
            assert first.body == CONNECTED, bytes(stream.received)
            assert bytes(stream.received).startswith(first.raw)


async def test_worker_tasks_debounce_per_parent_trailing(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """State changes of siblings share their parent's key, root tasks share one (null) key;
    each key sends its last payload, {id, parent_id} compact, once its arrivals stop."""
    p1, kids1 = await sb.add_task_family(owner, 2)
    p2, kids2 = await sb.add_task_family(owner, 1, "derive_statistical_unit_facet")
    p3, [kid3] = await sb.add_task_family(owner, 1, "derive_statistical_history_facet")
    root = await sb.add_task(owner, "derive_reports")
    async with (
        statbus_relay(statbus_dsn) as relay,
        captured(statbus_dsn, "worker_task_changed") as capture,
        open_raw(base_url(relay) + WORKER_TASKS) as stream,
    ):
        await past_connected(stream)
        await clients_in(relay, 1)
        await sb.set_task_state(owner, kids1[0], "processing")  # p1
        await sb.set_task_state(owner, kids2[0], "processing")  # p2
        await sb.set_task_state(owner, kids1[1], "processing")  # p1
        await sb.set_task_state(owner, root, "processing")  # null
        await sb.set_task_state(owner, kids1[0], "completed")  # p1: its last
        await sb.set_task_state(owner, p1, "waiting")  # null: its last
        await sb.set_task_state(owner, kids2[0], "completed")  # p2: its last
        await sb.set_task_state(owner, kid3, "processing")  # p3: the sentinel
        sent = await capture.count("worker_task_changed", 8)
        frames = await frames_until(stream, unnamed(js_json(sent[-1])))
        assert [f.body for f in frames] == [
            b'data: {"id":%d,"parent_id":%d}\n\n' % (kids1[0], p1),
            b'data: {"id":%d,"parent_id":null}\n\n' % p1,
            b'data: {"id":%d,"parent_id":%d}\n\n' % (kids2[0], p2),
            b'data: {"id":%d,"parent_id":%d}\n\n' % (kid3, p3),
        ]
        stream.assert_ids_grow()


async def test_worker_tasks_a_burst_longer_than_the_window_is_one_event(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """Children of one parent change state 200 ms apart for 2 s (two 1 s windows): one event,
    the last change."""
    parent, kids = await sb.add_task_family(owner, 4)
    sentinel_parent, [sentinel_kid] = await sb.add_task_family(
        owner, 1, "derive_statistical_unit_facet"
    )
    async with (
        statbus_relay(statbus_dsn) as relay,
        open_raw(base_url(relay) + WORKER_TASKS) as stream,
    ):
        await past_connected(stream)
        await clients_in(relay, 1)
        states = ("processing", "waiting")
        for step in range(10):
            await sb.set_task_state(owner, kids[step % 4], states[(step // 4) % 2])
            await asyncio.sleep(0.2)
        last_kid = kids[9 % 4]
        await sb.set_task_state(owner, sentinel_kid, "processing")
        sentinel = b'data: {"id":%d,"parent_id":%d}\n\n' % (sentinel_kid, sentinel_parent)
        frames = await frames_until(stream, sentinel)
        assert [f.body for f in frames] == [
            b'data: {"id":%d,"parent_id":%d}\n\n' % (last_kid, parent),
            sentinel,
        ]


async def test_worker_tasks_heartbeat_is_a_comment(statbus_dsn: str) -> None:
    async with (
        statbus_relay(statbus_dsn, feeds={WORKER_TASKS: FAST_BEAT}) as relay,
        open_raw(base_url(relay) + WORKER_TASKS) as stream,
    ):
        await past_connected(stream)
        for _ in range(2):
            assert (await not_retry(stream)).raw == b": heartbeat\n\n"


# --- replay with Last-Event-ID ---------------------------------------------------------------


async def test_replay_gives_an_import_jobs_client_what_it_missed_for_its_filter(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """A client with ids leaves; meanwhile events for it and for others; it comes back with the
    last id it saw: statbus's greeting, then exactly the events it missed that are for it (as
    a client that stayed got them: same ids, same data), then the live ones."""
    a = await sb.add_import_job(owner, "a")
    b = await sb.add_import_job(owner, "b")
    async with statbus_relay(statbus_dsn) as relay:
        base = base_url(relay) + IMPORT_JOBS
        async with open_raw(base) as every, open_raw(f"{base}?ids={a}") as stayed:
            await past_established(every)
            await past_established(stayed, [a])
            async with open_raw(f"{base}?ids={a}") as leaver:
                await past_established(leaver, [a])
                await clients_in(relay, 3)
                await sb.update_import_job(owner, a, note="seen")
                seen = await leaver.data_frame()
                assert seen.id is not None
                await every.data_frame()
                assert copy_of(await stayed.data_frame()) == copy_of(seen)
            await clients_in(relay, 2)
            await sb.update_import_job(owner, b, note="not for it")
            await every.data_frame()
            c = await sb.add_import_job(owner, "c")
            await every.data_frame()
            await sb.update_import_job(owner, a, note="missed")
            await every.data_frame()
            await sb.delete_import_job(owner, a)
            await every.data_frame()
            missed = await stayed.data_frames(3)  # INSERT c, UPDATE a, DELETE a
            assert [(f.json()["verb"], f.json()["import_job"]["id"]) for f in missed] == [
                ("INSERT", c),
                ("UPDATE", a),
                ("DELETE", a),
            ]
            async with open_raw(f"{base}?ids={a}", headers={"Last-Event-ID": seen.id}) as back:
                await past_established(back, [a])
                replayed = await back.data_frames(3)
                assert [copy_of(f) for f in replayed] == [copy_of(f) for f in missed]
                for frame in replayed:
                    assert frame.body.startswith(b'data: {"verb":"')
                await sb.update_import_job(owner, c, note="not for it either")
                d = await sb.add_import_job(owner, "d")
                d_row = await sb.enriched_import_job(owner, d)
                assert d_row is not None
                expect_frame(await back.data_frame(), job_event("INSERT", d_row))
                back.assert_ids_grow()


@pytest.mark.parametrize("route", [WORKER_STATUS, WORKER_TASKS])
async def test_replay_gives_a_returning_client_what_it_missed(
    statbus_dsn: str, owner: sb.AsyncConn, route: str
) -> None:
    """The same on the two routes without a filter (their debounce keys kept apart)."""

    async def event(n: int) -> None:
        if route == WORKER_STATUS:
            await sb.notify_raw(owner, "worker_status", f'{{"type":"t{n}"}}')
        else:  # a parent of its own each, so no two share a debounce key
            _, [kid] = await sb.add_task_family(owner, 1)
            await sb.set_task_state(owner, kid, "processing")

    async with statbus_relay(statbus_dsn) as relay:
        url = base_url(relay) + route
        async with open_raw(url) as stayed:
            await past_connected(stayed)
            async with open_raw(url) as leaver:
                await past_connected(leaver)
                await clients_in(relay, 2)
                await event(0)
                seen = await leaver.data_frame()
                assert seen.id is not None
                assert (await stayed.data_frame()).raw == seen.raw
            await clients_in(relay, 1)
            for n in (1, 2, 3):
                await event(n)
            missed = await stayed.data_frames(3)
            async with open_raw(url, headers={"Last-Event-ID": seen.id}) as back:
                await past_connected(back)
                assert [f.raw for f in await back.data_frames(3)] == [f.raw for f in missed]
                await event(4)
                assert (await back.data_frame()).raw == (await stayed.data_frame()).raw
                back.assert_ids_grow()


async def test_replay_beyond_what_is_kept_is_a_resync(
    statbus_dsn: str, owner: sb.AsyncConn
) -> None:
    """The feed keeps 3 events here: a client that missed 5 cannot be told what it missed."""
    async with statbus_relay(
        statbus_dsn, feeds={WORKER_STATUS: {"replay": {"events": 3}}}
    ) as relay:
        url = base_url(relay) + WORKER_STATUS
        async with open_raw(url) as stayed:
            await past_connected(stayed)
            async with open_raw(url) as leaver:
                await past_connected(leaver)
                await clients_in(relay, 2)
                await sb.notify_raw(owner, "worker_status", '{"type":"t0"}')
                seen = await leaver.data_frame()
                assert seen.id is not None
            for n in range(1, 6):
                await sb.notify_raw(owner, "worker_status", f'{{"type":"t{n}"}}')
            await stayed.data_frames(6)
            async with open_raw(url, headers={"Last-Event-ID": seen.id}) as back:
                await greeting_and_resync(back, WORKER_STATUS)
                await sb.notify_raw(owner, "worker_status", '{"type":"live"}')
                assert (await back.data_frame()).body == b'data: {"type":"live"}\n\n'


@pytest.mark.parametrize("route", ROUTES)
async def test_replay_with_an_id_from_before_a_restart_is_a_resync(
    statbus_dsn: str, owner: sb.AsyncConn, route: str
) -> None:
    """The relay restarted: what it sent before is not kept; an unknown id is the same."""
    async with statbus_relay(statbus_dsn) as relay:
        async with open_raw(base_url(relay) + route) as stream:
            if route == IMPORT_JOBS:
                await past_established(stream)
            else:
                await past_connected(stream)
            await clients_in(relay, 1)
            if route == WORKER_STATUS:
                await sb.notify_raw(owner, "worker_status", '{"type":"before"}')
            elif route == IMPORT_JOBS:
                await sb.add_import_job(owner, "before")
            else:
                _, [kid] = await sb.add_task_family(owner, 1)
                await sb.set_task_state(owner, kid, "processing")
            before = await stream.data_frame()
            assert before.id is not None
    async with statbus_relay(statbus_dsn) as relay:
        for last_id in (before.id, "not-an-id", "0"):
            async with open_raw(
                base_url(relay) + route, headers={"Last-Event-ID": last_id}
            ) as stream:
                await greeting_and_resync(stream, route)
