"""statbus's three SSE routes, served by the relay's statbus profile, as a browser gets them
(issue 19: "a browser consuming each route sees what statbus's route would send").

Headless Chromium (Debian's) opens ``EventSource``s on /api/sse/worker_status,
/api/sse/import-jobs and /api/sse/worker-tasks through the real Caddy (deploy/Caddyfile) on
the web app's origin, the way statbus's client code consumes them: ``onmessage`` for the
unnamed messages and ``addEventListener`` for ``connected`` and ``heartbeat``. The page script
is our own; it records every event (its data and ``lastEventId``) and every error with the
source's ``readyState``; ``resync`` (which statbus never sends and its client does not listen
for) is recorded too, to see when the relay sends it.

The statbus fixture (tests/fixtures/statbus.sql) is driven with statbus's own writes
(tests/statbus_driver.py): import jobs created, moved through states and deleted, progress
steps, worker hooks, task state changes with parent ids. What the page got is compared with
what statbus's route would send for the same writes (/tmp/spec/statbus-routes.md): the data
strings are compared byte for byte where the route's output is fixed, with the parts a server
makes up (timestamps, connection ids) matched by pattern. "Nothing else" is shown by a later
event (a sentinel) arriving next on the same stream, never by waiting.

The reconnects: Caddy stops (the streams end, the browser's retries are refused) while the
writes go on, and starts again on the same address: each EventSource's own reconnect carries
Last-Event-ID and gets statbus's greeting, then exactly the events it missed. The relay stops
and starts again on the same port: the ids it gave are of another run, so each stream gets its
greeting and ``event: resync``, then the live events.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

import psycopg
from aiohttp import web
from playwright.sync_api import Page, Request
from psycopg import sql

from relay.app import Relay
from relay.config import Config
from relay.config.profiles import load_profile
from relay.devtools.embedded import EmbeddedPostgres
from relay.state.stability import State
from tests import statbus_driver as sb
from tests.browser.helpers import Background, Tab, run_async, wait_until
from tests.ops_support import (
    Caddy,
    background,
    caddyfile_for_test,
    free_port,
    require_tool,
    wait_for_http,
)
from tests.raw_sse import CID, STR, TS, expect_frame, js_stringify
from tests.statbus_messages import (
    deleted_message,
    established,
    job_message,
    reshaped_progress,
)
from tests.support import relay_config, running_relay, serve_on_loopback

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")

PROFILE = load_profile("statbus")
WORKER_STATUS = "/api/sse/worker_status"
IMPORT_JOBS = "/api/sse/import-jobs"
WORKER_TASKS = "/api/sse/worker-tasks"
DEFAULT_SCOPE = "updates_and_all_inserts"
IDS_ONLY = "updates_for_ids_only"
ISO_MS_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
# The row's progress as import_job_progress's trigger sends it (json_build_object of NEW).
PROGRESS_OF = """
SELECT json_build_object('job_id', id, 'state', state, 'total_rows', total_rows,
    'analysis_completed_pct', analysis_completed_pct,
    'analysis_rows_per_sec', analysis_rows_per_sec, 'imported_rows', imported_rows,
    'import_completed_pct', import_completed_pct, 'import_rows_per_sec', import_rows_per_sec,
    'error_count', error_count, 'warning_count', warning_count)::text
FROM public.import_job WHERE id = %s
"""

# The page's own consumer, statbus's way: onmessage for unnamed messages, listeners for the
# named events its client code listens to (and `resync`, to see it). Each source's record is
# [kind, data, lastEventId] per event, ["open"] per open, ["error", readyState] per error.
OPEN = """([name, url]) => {
  window.__sse = window.__sse || {};
  window.__sources = window.__sources || {};
  const seen = (window.__sse[name] = []);
  const source = new EventSource(url);
  window.__sources[name] = source;
  const record = (kind) => (event) => seen.push([kind, event.data, event.lastEventId]);
  source.onopen = () => seen.push(["open"]);
  source.onmessage = record("message");
  source.addEventListener("connected", record("connected"));
  source.addEventListener("heartbeat", record("heartbeat"));
  source.addEventListener("resync", record("resync"));
  source.onerror = () => seen.push(["error", source.readyState]);
}"""

PAGE = b"<!doctype html><meta charset=utf-8><title>statbus (test)</title><body>statbus"


# --- the database, its writer, the relay, the edge -------------------------------------------


@pytest.fixture
def statbus_dsn(pg_server: EmbeddedPostgres | None, pg_admin_dsn: str) -> Iterator[str]:
    """A fresh database of statbus's shape, with the relay installed by the tables' owner as
    the README says (``stability-relay db install --profile statbus``). Made synchronously:
    Playwright's sync API holds this thread's loop."""
    dbname = f"test_browser_statbus_{uuid.uuid4().hex}"
    name = sql.Identifier(dbname)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
    dsn = psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=dbname)
    try:
        run_async(sb.apply_statbus_fixture(dsn))
        done = subprocess.run(
            [sys.executable, "-m", "relay", "db", "install", "--dsn", dsn, "--profile", "statbus"],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ),
            cwd=Path(__file__).resolve().parents[2],
            check=False,
        )
        assert done.returncode == 0, done.stderr
        yield dsn
    finally:
        if pg_server is not None:
            pg_server.start()
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))


class Driver:
    """statbus's writes (tests/statbus_driver.py) on one autocommit connection (the tables'
    owner, as statbus's worker), run on an event loop of their own in a thread: each call
    commits, and notifies, before it returns."""

    def __init__(self, dsn: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="statbus-driver", daemon=True
        )
        self._thread.start()
        self.conn: sb.AsyncConn = self._wait(psycopg.AsyncConnection.connect(dsn, autocommit=True))

    def _wait(self, coroutine: Awaitable[T]) -> T:
        async def run() -> T:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def __call__(self, step: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``step(conn, *args, **kwargs)``, as the driver's functions are called."""
        return self._wait(step(self.conn, *args, **kwargs))

    def sql(self, query: str, *params: Any) -> Any:
        """The first column of the first row (None without one)."""

        async def one(conn: sb.AsyncConn) -> Any:
            cur = await conn.execute(query, params or None)
            row = await cur.fetchone() if cur.description else None
            return None if row is None else row[0]

        return self(one)

    def close(self) -> None:
        try:
            self._wait(self.conn.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


@pytest.fixture
def driver(statbus_dsn: str) -> Iterator[Driver]:
    writer = Driver(statbus_dsn)
    yield writer
    writer.close()


def statbus_config(dsn: str, port: int, feeds: dict[str, dict[str, Any]] | None) -> Config:
    """The statbus profile's config; ``feeds`` overrides settings of its feeds by path."""
    listed = [{**feed, **(feeds or {}).get(feed["path"], {})} for feed in PROFILE.feeds]
    return relay_config(dsn, profile="statbus", feeds=listed, http={"listen": f"127.0.0.1:{port}"})


class StatbusRelay:
    """The relay with the statbus profile behind Caddy, on its own thread and loop; stopped
    and started again on the same port."""

    def __init__(self, dsn: str, feeds: dict[str, dict[str, Any]] | None = None) -> None:
        self.dsn = dsn
        self.feeds = feeds
        self.port = 0
        self.relay: Relay | None = None
        self._running: Background[Relay] | None = None

    def start(self) -> Relay:
        assert self._running is None
        config = statbus_config(self.dsn, self.port, self.feeds)
        running = Background(lambda: running_relay(config), name="statbus-relay")
        relay = running.__enter__()
        self._running, self.relay, self.port = running, relay, relay.port
        wait_until(lambda: relay.stability.current.state is not State.UNKNOWN, "relay settled")
        return relay

    def stop(self) -> None:
        running, self._running, self.relay = self._running, None, None
        if running is not None:
            running.__exit__(None, None, None)

    def last_number(self, path: str) -> int:
        """The number of the last event the feed at ``path`` sent (its ring's)."""
        assert self.relay is not None
        [feed] = [f for f in self.relay.feeds.feeds if f.config.path == path]
        return feed.ring.last

    def clients(self) -> int:
        """Streams the relay's feeds are sending to."""
        return 0 if self.relay is None else len(self.relay.feeds)


def blank_app() -> web.Application:
    """The web app behind Caddy: one blank page, the origin the EventSources are made on."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    return app


class Edge:
    """deploy/Caddyfile's Caddy (tests/ops_support.py's test options) in front of the relay
    and the blank web app, on addresses that stay the same when Caddy stops and starts."""

    def __init__(self, tmp_path: Path, relay_port: int, app_port: int) -> None:
        require_tool("caddy", "caddy")
        self.home = tmp_path / f"caddy-{uuid.uuid4().hex[:8]}"
        self.home.mkdir()
        self.config = self.home / "Caddyfile"
        # Health checks every 300 ms: a relay that comes back is used at once.
        self.config.write_text(
            caddyfile_for_test(read_timeout="60s", health_interval="300ms", idle="2m")
        )
        app_address, status_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        self.app_url, self.status_url = f"http://{app_address}", f"http://{status_address}"
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "XDG_DATA_HOME": str(self.home / "data"),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "RELAY_UPSTREAMS": f"127.0.0.1:{relay_port}",
            "APP_ADDRESS": self.app_url,
            "STATUS_ADDRESS": self.status_url,
            "APP_UPSTREAM": f"127.0.0.1:{app_port}",
        }
        self._runs = 0
        self._process: ExitStack | None = None

    def start(self) -> Caddy:
        assert self._process is None
        self._runs += 1
        log = self.home / f"caddy-{self._runs}.log"
        args = ["caddy", "run", "--config", str(self.config), "--adapter", "caddyfile"]
        stack = ExitStack()
        process = stack.enter_context(background(args, log, env=self.env, cwd=self.home))
        self._process = stack
        try:
            run_async(wait_for_http(self.status_url + "/healthz", process, log))
        except BaseException:
            self.stop()
            raise
        return Caddy(self.app_url, self.status_url, process, log)

    def stop(self) -> None:
        """SIGTERM: Caddy ends its open streams after the grace period (500 ms here)."""
        stack, self._process = self._process, None
        if stack is not None:
            stack.close()


@pytest.fixture
def app_port() -> Iterator[int]:
    with Background(lambda: serve_on_loopback(blank_app()), name="web-app") as port:
        yield port


@pytest.fixture
def statbus(statbus_dsn: str, request: pytest.FixtureRequest) -> Iterator[StatbusRelay]:
    """The relay, with feed overrides a test parametrizes it with (indirect)."""
    relay = StatbusRelay(statbus_dsn, getattr(request, "param", None))
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture
def edge(statbus: StatbusRelay, app_port: int, tmp_path: Path) -> Iterator[Edge]:
    front = Edge(tmp_path, statbus.port, app_port)
    front.start()
    try:
        yield front
    finally:
        front.stop()


# --- the page --------------------------------------------------------------------------------


class Sources:
    """The page's EventSources, by name, and what each received; the requests they made."""

    def __init__(self, tab: Tab, edge: Edge) -> None:
        self.page: Page = tab.page
        self.requests: list[Request] = []  # the EventSources' requests, in order
        self.page.on("request", self._request)
        self.page.goto(edge.app_url + "/")
        self.origin = edge.app_url

    def _request(self, request: Request) -> None:
        if request.resource_type == "eventsource":
            self.requests.append(request)

    def open(self, name: str, url: str) -> None:
        self.page.evaluate(OPEN, [name, url])

    def log(self, name: str) -> list[list[Any]]:
        return list(self.page.evaluate("(name) => window.__sse[name]", name))

    def events(self, name: str, *kinds: str) -> list[list[Any]]:
        """[kind, data, lastEventId] of the events of these kinds (every kind: none given)."""
        return [e for e in self.log(name) if len(e) == 3 and (not kinds or e[0] in kinds)]

    def data(self, name: str, kind: str = "message") -> list[str]:
        return [data for _, data, _ in self.events(name, kind)]

    def ready_state(self, name: str) -> int:
        return int(self.page.evaluate("(name) => window.__sources[name].readyState", name))

    def wait_for(self, name: str, kind: str, count: int, timeout: float = 15.0) -> None:
        """Until the source has ``count`` records of ``kind`` (an event kind, open or error)."""
        self.page.wait_for_function(
            "([name, kind, count]) => (window.__sse[name] || [])"
            ".filter((e) => e[0] === kind).length >= count",
            arg=[name, kind, count],
            timeout=timeout * 1000,
        )

    def wait_for_data(self, name: str, data: str, timeout: float = 15.0) -> None:
        """Until the source has an unnamed message with exactly this data."""
        self.page.wait_for_function(
            "([name, data]) => (window.__sse[name] || [])"
            ".some((e) => e[0] === 'message' && e[1] === data)",
            arg=[name, data],
            timeout=timeout * 1000,
        )

    def wait_for_match(self, name: str, template: str, timeout: float = 15.0) -> list[str]:
        """Until an unnamed message matches ``template`` (tests/raw_sse.py's markers); the data
        of every message up to and including it."""
        pattern = template_regex(template)
        self.page.wait_for_function(
            "([name, pattern]) => (window.__sse[name] || [])"
            ".some((e) => e[0] === 'message' && new RegExp(pattern, 's').test(e[1]))",
            arg=[name, pattern],
            timeout=timeout * 1000,
        )
        got = self.data(name)
        last = next(i for i, d in enumerate(got) if re.fullmatch(pattern, d, re.DOTALL))
        return got[: last + 1]

    def reconnects(self, path: str) -> list[str | None]:
        """The Last-Event-ID of each request to ``path`` (with its query) that was answered,
        in order, as the browser sent it (the headers read from the network: the page's view
        of a request leaves Last-Event-ID out). Refused attempts are left out: the network
        has no headers of theirs to show."""
        url = self.origin + path
        return [
            r.all_headers().get("last-event-id")
            for r in self.requests
            if r.url == url and r.response() is not None
        ]


def template_regex(template: str) -> str:
    """A regular expression (Python's and JavaScript's alike) for a data template."""
    parts = {TS: r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", CID: "[0-9a-z]{8}"}
    pattern = ""
    for piece in re.split(f"({TS}|{CID}|{STR})", template):
        if piece in parts:
            pattern += parts[piece]
        elif piece == STR:
            pattern += r'(?:[^"\\]|\\.)*'
        else:
            pattern += re.escape(piece).replace(r"\ ", " ")
    return "^" + pattern + "$"


def matches(data: str, template: str) -> dict[str, list[str]]:
    """``data`` (a message as the browser got it) is what ``template`` says, byte for byte
    but for the made-up parts; what those were."""
    return expect_frame(f"data: {data}\n\n".encode(), "data: " + template + "\n\n")


# --- what statbus's routes send (/tmp/spec/statbus-routes.md) ---------------------------------


def row_of(driver: Driver, job: int) -> str:
    enriched = driver(sb.enriched_import_job, job)
    assert enriched is not None, f"no import job {job}"
    return str(enriched)


def job_before_any_client(driver: Driver, statbus: StatbusRelay, slug: str, **cols: Any) -> int:
    """A job made before the page opens its streams: its INSERT sent (to nobody) first, so
    no stream opened afterwards gets it live."""
    number = statbus.last_number(IMPORT_JOBS)
    job = int(driver(sb.add_import_job, slug, **cols))
    wait_until(lambda: statbus.last_number(IMPORT_JOBS) > number, f"job {slug}'s INSERT sent")
    return job


def progress_of(driver: Driver, job: int) -> str:
    """statbus's reshaped progress message for the job's row as it is now."""
    return reshaped_progress(str(driver.sql(PROGRESS_OF, job)))


def task(job_id: int, parent_id: int | None) -> str:
    return js_stringify({"id": float(job_id), "parent_id": parent_id and float(parent_id)})


# --- worker_status ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statbus", [{WORKER_STATUS: {"heartbeat_interval": "0.5s"}}], indirect=True, ids=["beat"]
)
def test_worker_status_connected_hooks_and_one_reshaped_progress_per_job(
    statbus: StatbusRelay, edge: Edge, tab: Tab, driver: Driver
) -> None:
    """statbus's worker_status route: ``connected`` (true), the worker's hooks per type (the
    last of each), each job's progress steps as one reshaped message with the last values,
    and the named JSON heartbeat (its interval shortened here from statbus's 30 s)."""
    page = Sources(tab, edge)
    page.open("status", WORKER_STATUS)
    page.wait_for("status", "connected", 1)
    assert page.events("status", "connected") == [["connected", "true", ""]]
    page.wait_for("status", "heartbeat", 1)
    beat = json.loads(page.data("status", "heartbeat")[0])
    assert list(beat) == ["type", "timestamp"] and beat["type"] == "heartbeat"
    assert ISO_MS_Z.fullmatch(beat["timestamp"]), beat

    a = driver(sb.add_import_job, "a")
    b = driver(sb.add_import_job, "b")
    # A burst as statbus's import procedure makes it, each step its own commit, one after the
    # other: job a from upload to analysis with two progress steps and an error, job b
    # uploaded; the import hooks around a's last step.
    driver(
        sb.set_import_state, a, "upload_completed", total_rows=1000,
        total_analysis_steps_weighted=3000,
    )  # fmt: skip
    driver(sb.set_import_state, a, "preparing_data")
    driver(sb.set_import_state, b, "upload_completed", total_rows=10)
    driver(sb.set_import_state, a, "analysing_data")
    driver(sb.report_progress, a, completed_analysis_steps_weighted=1000)
    driver.sql("CALL worker.notify_is_importing_start()")
    driver(sb.report_progress, a, completed_analysis_steps_weighted=2000, error_count=2)
    driver.sql("CALL worker.notify_is_importing_stop()")
    last_a, last_b = progress_of(driver, a), progress_of(driver, b)
    # The sentinel: a type of its own, sent last, so its window ends last.
    driver.sql("CALL worker.derive_units_phase('{}'::jsonb)")
    sentinel = '{"type":"is_deriving_statistical_units","status":true}'
    page.wait_for_data("status", sentinel)

    # b's last step came before a's last, and is_importing's stop after a's: each key's last
    # payload, in the order their windows ended, then the sentinel. Nothing else.
    assert page.data("status") == [
        last_b,
        last_a,
        '{"type":"is_importing","status":true}',  # the stop hook says true: a is analysing
        sentinel,
    ]
    assert last_a == (
        f'{{"type":"import_job_progress","job_id":{a},"state":"analysing_data",'
        '"total_rows":1000,"analysis_completed_pct":66.67,"imported_rows":0,'
        '"import_completed_pct":0,"error_count":2,"warning_count":0}'
    )
    assert last_b == (
        f'{{"type":"import_job_progress","job_id":{b},"state":"upload_completed",'
        '"total_rows":10,"analysis_completed_pct":0,"imported_rows":0,'
        '"import_completed_pct":0,"error_count":0,"warning_count":0}'
    )
    ids = [last for _, _, last in page.events("status", "message")]
    assert all(ids) and len(set(ids)) == len(ids), ids  # every message has an id of its own
    assert [kind for kind, *_ in page.log("status") if kind in ("open", "error")] == ["open"]


# --- import-jobs -----------------------------------------------------------------------------


def test_import_jobs_greeting_enriched_rows_ids_and_scope_and_the_400(
    statbus: StatbusRelay, edge: Edge, tab: Tab, driver: Driver
) -> None:
    """Three clients of statbus's import-jobs route on one page: every job, one job's ids
    (default scope: its updates and every new job), and two ids with updates_for_ids_only.
    Each gets connection_established first, then the enriched rows it is owed, in order. Bad
    ids are a 400: the EventSource gives up (readyState 2). One 10 s heartbeat names the
    client's connection and counts its ids."""
    custom = driver(
        sb.add_import_definition, "hr_informal", name='HR "informal" ø',
        mode="establishment_informal", custom=True,
    )  # fmt: skip
    a = job_before_any_client(driver, statbus, "a", definition_id=custom, description="Census 2026")
    b = job_before_any_client(driver, statbus, "b")
    page = Sources(tab, edge)
    every, mine, only = IMPORT_JOBS, f"{IMPORT_JOBS}?ids={a}", f"{IMPORT_JOBS}?ids={a},{b}"
    only += f"&scope={IDS_ONLY}"
    page.open("every", every)
    page.open("mine", mine)
    page.open("only", only)
    page.open("bad", f"{IMPORT_JOBS}?ids={a},abc")
    for name in ("every", "mine", "only"):
        page.wait_for(name, "message", 1)
    wait_until(lambda: statbus.clients() == 3, "three streams open", page=page.page)
    greetings = {
        "every": matches(page.data("every")[0], established([], DEFAULT_SCOPE)),
        "mine": matches(page.data("mine")[0], established([a], DEFAULT_SCOPE)),
        "only": matches(page.data("only")[0], established([a, b], IDS_ONLY)),
    }
    cids = {name: found["cid"][0] for name, found in greetings.items()}
    assert len(set(cids.values())) == 3, cids  # a connection id each

    # Bad ids: statbus's 400 (the body a fetch sees), and EventSource gives up for good.
    page.wait_for("bad", "error", 1)
    assert page.log("bad") == [["error", 2]]
    answer = page.page.evaluate(
        "async (url) => { const r = await fetch(url);"
        " return [r.status, r.headers.get('content-type'), await r.text()]; }",
        f"{IMPORT_JOBS}?ids=abc",
    )
    assert answer == [400, "application/json", '{"error":"Invalid job ID format"}']

    # One write at a time; the next once the client that gets everything has the last (the
    # relay reads the row when it is told, as statbus's listener does).
    expected: dict[str, list[str]] = {"every": [], "mine": [], "only": []}

    def step(verb: str, job: int, *who: str) -> None:
        template = (
            deleted_message(job) if verb == "DELETE" else job_message(verb, row_of(driver, job))
        )
        got = page.wait_for_match("every", template)
        assert len(got) == 2 + len(expected["every"]), got  # the greeting, then one each
        for name in ("every", *who):
            expected[name].append(template)

    driver(
        sb.set_import_state, a, "upload_completed", total_rows=1000,
        total_analysis_steps_weighted=5000,
    )  # fmt: skip
    step("UPDATE", a, "mine", "only")
    c = driver(sb.add_import_job, "c", definition_id=None)  # no definition: its four are null
    step("INSERT", c, "mine")
    assert (
        '"import_definition":{"mode":null,"name":null,"slug":null,"custom":null}'
        in (page.data("every")[-1])
    )
    driver(sb.update_import_job, b, note="b's note")
    step("UPDATE", b, "only")
    driver(sb.set_import_state, a, "preparing_data")
    step("UPDATE", a, "mine", "only")
    driver(sb.set_import_state, a, "analysing_data")
    step("UPDATE", a, "mine", "only")
    driver(sb.report_progress, a, completed_analysis_steps_weighted=2000)  # 40.00
    step("UPDATE", a, "mine", "only")
    assert '"analysis_completed_pct":40,' in page.data("every")[-1]
    driver(sb.delete_import_job, c)
    step("DELETE", c)
    driver(sb.delete_import_job, b)
    step("DELETE", b, "only")
    driver(sb.update_import_job, a, note="the sentinel")
    step("UPDATE", a, "mine", "only")

    for name in ("mine", "only"):  # the sentinel is the last: what came before is all
        page.wait_for_match(name, expected[name][-1])
    for name, templates in expected.items():
        got = page.data(name)[1:]
        assert len(got) == len(templates), (name, got)
        for data, template in zip(got, templates, strict=True):
            matches(data, template)
    row = json.loads(page.data("mine")[-1])["import_job"]
    assert row["import_definition"] == {
        "mode": "establishment_informal",
        "name": 'HR "informal" ø',
        "slug": "hr_informal",
        "custom": True,
    }
    assert (row["id"], row["slug"], row["description"], row["note"]) == (
        a,
        "a",
        "Census 2026",
        "the sentinel",
    )
    assert (row["state"], row["total_rows"], row["analysis_completed_pct"]) == (
        "analysing_data",
        1000,
        40,
    )
    for name in expected:  # every event has an id of its own; the greeting has none
        ids = [last for _, _, last in page.events(name, "message")]
        assert ids[0] == "" and all(ids[1:]) and len(set(ids[1:])) == len(ids) - 1, ids

    # statbus's 10 s heartbeat, once: named, with this client's connection id and id count.
    page.wait_for("mine", "heartbeat", 1, timeout=15)
    beat = page.data("mine", "heartbeat")[0]
    matches(
        beat,
        f'{{"type":"heartbeat","timestamp":"{TS}","jobCount":1,"connectionId":"{cids["mine"]}"}}',
    )
    for name in expected:
        assert [e for e in page.log(name) if e[0] in ("open", "error")] == [["open"]], name


# --- worker-tasks ----------------------------------------------------------------------------


def test_worker_tasks_connected_and_the_last_change_per_parent(
    statbus: StatbusRelay, edge: Edge, tab: Tab, driver: Driver
) -> None:
    """statbus's worker-tasks route: ``connected`` (true), then {id, parent_id} of the last
    state change per parent (root tasks share one key), once each parent's changes pause."""
    p1, kids1 = driver(sb.add_task_family, 2)
    p2, [kid2] = driver(sb.add_task_family, 1, "derive_statistical_unit_facet")
    p3, [kid3] = driver(sb.add_task_family, 1, "derive_statistical_history_facet")
    root = driver(sb.add_task, "derive_reports")
    page = Sources(tab, edge)
    page.open("tasks", WORKER_TASKS)
    page.wait_for("tasks", "connected", 1)
    assert page.events("tasks", "connected") == [["connected", "true", ""]]
    wait_until(lambda: statbus.clients() == 1, "the stream is open", page=page.page)

    driver(sb.set_task_state, kids1[0], "processing")  # p1
    driver(sb.set_task_state, kid2, "processing")  # p2
    driver(sb.set_task_state, kids1[1], "processing")  # p1
    driver(sb.set_task_state, root, "processing")  # no parent
    driver(sb.set_task_state, kids1[0], "completed")  # p1: its last
    driver(sb.set_task_state, p1, "waiting")  # no parent: the last of those
    driver(sb.set_task_state, kid2, "failed", error="boom")  # p2: its last
    driver(sb.set_task_state, kid3, "processing")  # p3: the sentinel
    sentinel = task(kid3, p3)
    page.wait_for_data("tasks", sentinel)
    assert page.data("tasks") == [task(kids1[0], p1), task(p1, None), task(kid2, p2), sentinel]
    assert page.data("tasks")[1] == f'{{"id":{p1},"parent_id":null}}'
    ids = [last for _, _, last in page.events("tasks", "message")]
    assert all(ids) and len(set(ids)) == len(ids), ids
    assert [e for e in page.log("tasks") if e[0] in ("open", "error")] == [["open"]]


# --- reconnects ------------------------------------------------------------------------------


def open_the_three(page: Sources, statbus: StatbusRelay, jobs_url: str) -> None:
    """The worker's status, the import jobs at ``jobs_url`` and the worker's tasks, each open
    (greeted) and counted by the relay."""
    page.open("status", WORKER_STATUS)
    page.open("jobs", jobs_url)
    page.open("tasks", WORKER_TASKS)
    page.wait_for("status", "connected", 1)
    page.wait_for("jobs", "message", 1)
    page.wait_for("tasks", "connected", 1)
    wait_until(lambda: statbus.clients() == 3, "three streams open", page=page.page)


def first_events(page: Sources, driver: Driver, a: int) -> dict[str, str]:
    """One event on each of the three streams (an EventSource sends Last-Event-ID only once
    it has had an id); the lastEventId each had then."""
    driver(sb.report_progress, a, imported_rows=1)  # import_job UPDATE, import_job_progress
    page.wait_for_data("status", progress_of(driver, a))
    page.wait_for_match("jobs", job_message("UPDATE", row_of(driver, a)))
    parent, [kid] = driver(sb.add_task_family, 1)
    driver(sb.set_task_state, kid, "processing")
    page.wait_for_data("tasks", task(kid, parent))
    return {name: page.events(name, "message")[-1][2] for name in ("status", "jobs", "tasks")}


def test_caddy_restart_the_browser_reconnects_with_last_event_id_and_gets_what_it_missed(
    statbus: StatbusRelay, edge: Edge, tab: Tab, driver: Driver
) -> None:
    """Caddy stops: every stream ends, and the browser's retries are refused (it keeps
    trying: readyState stays 0); meanwhile the worker goes on (progress, hooks, import jobs,
    tasks) and the relay numbers and keeps each event, sent to nobody. Caddy starts again on
    the same address: each EventSource's own reconnect carries the last id it saw and gets
    its greeting, then exactly what it missed (import-jobs: what its ids and scope allow),
    then the live events."""
    a = job_before_any_client(driver, statbus, "a")
    b = job_before_any_client(driver, statbus, "b")
    jobs_url = f"{IMPORT_JOBS}?ids={a}"
    page = Sources(tab, edge)
    open_the_three(page, statbus, jobs_url)
    seen = first_events(page, driver, a)
    before = {name: len(page.events(name)) for name in seen}

    edge.stop()
    for name in seen:
        page.wait_for(name, "error", 1)
    wait_until(lambda: statbus.clients() == 0, "the relay's streams ended", page=page.page)

    # What the worker does meanwhile, one write at a time: each waits until the relay has sent
    # (to nobody) and kept what it makes, so the rows it read are the rows as they are now.
    def wrote(write: Callable[[], T], **counts: int) -> T:
        paths = {"status": WORKER_STATUS, "jobs": IMPORT_JOBS, "tasks": WORKER_TASKS}
        numbers = {name: statbus.last_number(paths[name]) for name in counts}
        done = write()
        wait_until(
            lambda: all(
                statbus.last_number(paths[name]) == numbers[name] + count
                for name, count in counts.items()
            ),
            f"the relay sent {counts}",
            page=page.page,
        )
        return done

    missed: dict[str, list[str]] = {"status": [], "jobs": [], "tasks": []}
    # b's state: its progress (worker_status), its UPDATE (not for this import-jobs client)
    wrote(lambda: driver(sb.set_import_state, b, "upload_completed"), status=1, jobs=1)
    missed["status"].append(progress_of(driver, b))
    wrote(lambda: driver(sb.report_progress, a, imported_rows=500), status=1, jobs=1)
    missed["status"].append(progress_of(driver, a))
    missed["jobs"].append(job_message("UPDATE", row_of(driver, a)))
    # a new job: for every client with ids but not updates_for_ids_only
    c = wrote(lambda: driver(sb.add_import_job, "c"), jobs=1)
    missed["jobs"].append(job_message("INSERT", row_of(driver, c)))
    wrote(lambda: driver.sql("CALL worker.notify_is_importing_start()"), status=1)
    missed["status"].append('{"type":"is_importing","status":true}')
    parent, [kid] = driver(sb.add_task_family, 1, "derive_statistical_unit_facet")
    wrote(lambda: driver(sb.set_task_state, kid, "processing"), tasks=1)
    missed["tasks"].append(task(kid, parent))
    for name in seen:
        assert page.events(name)[before[name] :] == [], name  # nothing reached the page
    for name in seen:  # a retry was refused: the browser keeps trying (readyState 0)
        page.wait_for(name, "error", 2)

    edge.start()
    for name, templates in missed.items():
        page.wait_for_match(name, templates[-1])
    wait_until(lambda: statbus.clients() == 3, "three streams open again", page=page.page)

    urls = {"status": WORKER_STATUS, "jobs": jobs_url, "tasks": WORKER_TASKS}
    for name, url in urls.items():
        attempts = page.reconnects(url)
        # The first connect had no id to send; the reconnect that got through, the last seen.
        assert attempts == [None, seen[name]], (name, attempts, seen[name])
        after = page.events(name)[before[name] :]
        errors = [e for e in page.log(name) if e[0] == "error"]
        assert len(errors) >= 2 and all(e == ["error", 0] for e in errors), errors  # kept on
        if name == "jobs":  # connection_established again (a new connection id), the missed
            greeting, *rest = after
            assert greeting[0] == "message"
            matches(greeting[1], established([a], DEFAULT_SCOPE))
        else:
            greeting, *rest = after
            assert greeting == ["connected", "true", seen[name]]  # the id it had, kept
        # A heartbeat may fall among them on a slow machine: it is no missed event.
        rest = [event for event in rest if event[0] != "heartbeat"]
        assert [kind for kind, *_ in rest] == ["message"] * len(missed[name]), after
        for (_, data, _), template in zip(rest, missed[name], strict=True):
            matches(data, template)
        assert seen[name] not in [last for *_, last in rest]  # none sent again

    # And live again.
    driver(sb.report_progress, a, imported_rows=600)
    page.wait_for_data("status", progress_of(driver, a))
    page.wait_for_match("jobs", job_message("UPDATE", row_of(driver, a)))
    driver(sb.set_task_state, kid, "completed")
    page.wait_for_data("tasks", task(kid, parent))


def test_relay_restart_the_browser_gets_its_greeting_and_a_resync_then_live_events(
    statbus: StatbusRelay, edge: Edge, tab: Tab, driver: Driver
) -> None:
    """The relay stops and starts again on the same port behind Caddy, while the worker goes
    on. Each EventSource reconnects by itself with the last id it saw; that id is of the
    relay's previous run, so the stream says so: its greeting and ``event: resync``; then the
    live events."""
    a = job_before_any_client(driver, statbus, "a")
    page = Sources(tab, edge)
    open_the_three(page, statbus, IMPORT_JOBS)
    seen = first_events(page, driver, a)
    before = {name: len(page.events(name)) for name in seen}

    statbus.stop()
    driver(sb.report_progress, a, imported_rows=2)  # while no relay listens: lost
    driver.sql("CALL worker.notify_is_importing_start()")
    statbus.start()
    for name in seen:
        page.wait_for(name, "resync", 1)
    wait_until(lambda: statbus.clients() == 3, "three streams open again", page=page.page)

    for name, url in {"status": WORKER_STATUS, "jobs": IMPORT_JOBS, "tasks": WORKER_TASKS}.items():
        assert page.reconnects(url) == [None, seen[name]], page.reconnects(url)
        after = page.events(name)[before[name] :]
        assert [e for e in page.log(name) if e[0] == "error"] == [["error", 0]], page.log(name)
        greeting, resync = after
        if name == "jobs":
            assert greeting[0] == "message"
            matches(greeting[1], established([], DEFAULT_SCOPE))
        else:
            assert greeting == ["connected", "true", seen[name]]
        assert resync == ["resync", '{"reason":"other_run"}', seen[name]]

    driver(sb.report_progress, a, imported_rows=3)
    page.wait_for_data("status", progress_of(driver, a))
    page.wait_for_match("jobs", job_message("UPDATE", row_of(driver, a)))
    parent, [kid] = driver(sb.add_task_family, 1, "derive_statistical_unit_facet")
    driver(sb.set_task_state, kid, "processing")
    page.wait_for_data("tasks", task(kid, parent))
