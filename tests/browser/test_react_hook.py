"""useSystemStability, the React hook in clients/react, in headless Chromium.

The example page (clients/react/example: the indicator, the details modal and what the hook
returns) is bundled by esbuild from npm's React and served as the web app behind the real Caddy
(deploy/Caddyfile), which sends /api/system-status* to a real relay on the same origin, as in
production. What a real relay and Caddy do is what the hook meets: a restart (the stream ends,
EventSource reconnects by itself), an outage longer than Caddy's retries (Caddy answers 502 or
503 and EventSource gives up for good), a database the relay cannot reach (``stable: null``),
an expired JWT (``event: unauthorized``, then 401).

The page records, before any of its scripts run, every EventSource made and what each heard,
and every text the badge showed with the last ``stable`` heard at that moment: the badge must
say what the stream said, never "Processing Data" for a state it does not know.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

import jwt
import psycopg
from aiohttp import web
from playwright.sync_api import Page, expect
from psycopg import sql

from relay.app import Relay
from tests.browser.helpers import Background, Tab, browser_config, relay_in_background, run_sql
from tests.ops_support import Caddy, require_tool, running_caddy
from tests.support import serve_on_loopback

pytestmark = pytest.mark.timeout(120)

REACT = Path(__file__).resolve().parents[2] / "clients" / "react"
# What the web app serves: the bundle's files ("/" is the page).
PAGE_FILES = {name: name for name in ("index.html", "main.js", "example.css")} | {"": "index.html"}
JWT_SECRET = "a-test-secret-of-at-least-32-bytes!!"
# The app's session cookie carries a JWT; no leeway, so an expiry is seen when it happens.
JWT_COOKIE = {"auth": {"jwt": {"secret": JWT_SECRET, "cookie": "session", "leeway": "0s"}}}

STABLE, PROCESSING, UNAVAILABLE = "System Stable", "Processing Data", "Status Unavailable"
SIGN_IN = "Sign In to See Status"
START = (
    "INSERT INTO public.import_job (slug, state, total_rows, imported_rows, "
    "import_completed_pct) VALUES ('census-2026', 'processing_data', 1000, 250, 25) "
    "ON CONFLICT (slug) DO UPDATE SET state = 'processing_data'"
)
FINISH = "UPDATE public.import_job SET state = 'finished' WHERE slug = 'census-2026'"

# Runs before the page's own scripts: a spy on EventSource (the hook sees the real one's
# behaviour: the spy only listens) and a record of the badge's texts.
RECORD = """(() => {
  const Real = window.EventSource;
  const log = (window.__es = { made: 0, events: [] });
  window.__lastStable = "none";
  window.EventSource = class extends Real {
    constructor(url, init) {
      super(url, init);
      const id = ++log.made;
      this.addEventListener("open", () => log.events.push(["open", id]));
      this.addEventListener("message", (event) => {
        window.__lastStable = JSON.parse(event.data).stable;
        log.events.push(["message", id, window.__lastStable]);
      });
      this.addEventListener("unauthorized", (event) => {
        log.events.push(["unauthorized", id, event.data]);
      });
      this.addEventListener("error", () => log.events.push(["error", id, this.readyState]));
    }
  };
  window.__badges = [];
  const record = () => {
    const badge = document.querySelector(".system-status-badge");
    if (badge === null) return;
    const last = window.__badges[window.__badges.length - 1];
    if (last === undefined || last[0] !== badge.textContent) {
      window.__badges.push([badge.textContent, window.__lastStable]);
    }
  };
  new MutationObserver(record).observe(document, {
    subtree: true, childList: true, characterData: true });
})();"""


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example page, bundled from the current sources into a directory of this run's own
    (``make clients`` installs the packages with ``npm ci`` and typechecks)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the React hook's test bundles with esbuild")
    if not (REACT / "node_modules" / ".installed").exists():
        pytest.skip("clients/react's packages are not installed: run `make clients` (npm ci)")
    out = tmp_path_factory.mktemp("react-example")
    built = subprocess.run(
        [node, "build.mjs", str(out)], cwd=REACT, capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def app_serving(directory: Path) -> web.Application:
    """The web app: the example's files, and nothing else."""

    async def page_file(request: web.Request) -> web.StreamResponse:
        name = PAGE_FILES.get(request.match_info["name"])
        if name is None:
            raise web.HTTPNotFound()
        return web.FileResponse(directory / name, headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/{name:[^/]*}", page_file)
    return app


@asynccontextmanager
async def edge(
    tmp_path: Path, relay_port: int, example: Path, read_timeout: str = "60s"
) -> AsyncIterator[Caddy]:
    """Caddy (deploy/Caddyfile) in front of the app and the relay. Health checks every 300 ms,
    so a relay that comes back is used at once."""
    async with (
        serve_on_loopback(app_serving(example)) as app_port,
        running_caddy(
            tmp_path,
            [relay_port],
            app_port=app_port,
            health_interval="300ms",
            read_timeout=read_timeout,
        ) as caddy,
    ):
        yield caddy


class Relays:
    """The relay behind Caddy, one at a time, on one port: stopped and started again."""

    def __init__(self, dsn: str, **sections: Any) -> None:
        self.dsn = dsn
        self.sections = sections
        self.port = 0
        self._running: Background[Relay] | None = None

    def start(self) -> Relay:
        assert self._running is None
        running = relay_in_background(browser_config(self.dsn, port=self.port, **self.sections))
        relay = running.__enter__()
        self._running = running
        self.port = relay.port
        return relay

    def stop(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.__exit__(None, None, None)


@pytest.fixture
def relays(db_dsn: str, request: pytest.FixtureRequest) -> Iterator[Relays]:
    """The relay, with the config sections a test parametrizes it with (indirect)."""
    relays = Relays(db_dsn, **getattr(request, "param", {}))
    relays.start()
    try:
        yield relays
    finally:
        relays.stop()


@pytest.fixture
def front(
    relays: Relays, example: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Caddy]:
    """Caddy, with the options a test parametrizes it with (indirect)."""
    require_tool("caddy", "caddy")
    options = getattr(request, "param", {})
    edge_of = lambda: edge(tmp_path, relays.port, example, **options)  # noqa: E731
    with Background(edge_of, name="caddy") as caddy:
        yield caddy


def open_example(tab: Tab, front: Caddy) -> Page:
    page = tab.page
    page.add_init_script(RECORD)
    page.goto(front.app_url + "/")
    page.evaluate("window.__notReloaded = true")
    return page


def badge(page: Page) -> Any:
    return page.locator(".system-status-badge")


def field(page: Page, name: str) -> Any:
    return page.locator(f".hook-state [data-field={name}] dd")


def eventsources(page: Page) -> dict[str, Any]:
    return dict(page.evaluate("window.__es"))


def gave_up(page: Page) -> int:
    """How many times an EventSource stopped for good (readyState CLOSED in its error)."""
    return sum(
        1 for event in eventsources(page)["events"] if event[:1] == ["error"] and event[2] == 2
    )


def assert_badge_said_what_the_stream_said(page: Page) -> list[str]:
    """Every text the badge showed agrees with the last ``stable`` heard when it showed it;
    returns the texts in order."""
    shown: list[list[Any]] = page.evaluate("window.__badges")
    for text, heard in shown:
        if text == PROCESSING:
            assert heard is False, shown
        elif text == STABLE:
            assert heard is True, shown
        else:
            assert text in ("Connecting…", UNAVAILABLE, SIGN_IN), shown
    assert page.evaluate("window.__notReloaded") is True  # recovered without a reload
    return [text for text, _ in shown]


def test_follows_commits_and_recovers_by_itself_after_a_relay_restart(
    relays: Relays, front: Caddy, tab: Tab, db_dsn: str
) -> None:
    page = open_example(tab, front)
    expect(badge(page)).to_have_text(STABLE)
    expect(field(page, "loading")).to_have_text("false")

    run_sql(db_dsn, START)
    expect(badge(page)).to_have_text(PROCESSING)
    expect(badge(page)).to_have_attribute(
        "title", "Data is currently being processed. In progress: Importing data"
    )

    # The modal lists the running import job, and follows the stream while open: the job
    # finishes, the stream's seq passes the details' seq, and the details are fetched again.
    page.get_by_role("button", name="Details").click()
    dialog = page.get_by_role("dialog", name="System Status Details")
    expect(dialog.locator("[data-activity=importing] li .name")).to_have_text("census-2026")
    expect(dialog.locator("[data-activity=importing] .rows")).to_have_text(
        "250 of 1,000 rows (25%)"
    )
    expect(dialog.locator("[data-activity=importing] .pill")).to_have_text("Active")
    run_sql(db_dsn, FINISH)
    expect(badge(page)).to_have_text(STABLE)
    expect(dialog.locator(".verdict.ok")).to_have_text(
        "System Stable: All data processing complete."
    )
    expect(dialog.locator("li")).to_have_count(0)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name="Details")).to_be_focused()

    # A restart while processing; the job ends while no relay runs.
    run_sql(db_dsn, START)
    expect(badge(page)).to_have_text(PROCESSING)
    relays.stop()
    expect(field(page, "connection")).to_have_text("reconnecting")
    expect(field(page, "error")).to_contain_text("lost; reconnecting")
    run_sql(db_dsn, FINISH)
    relays.start()
    expect(badge(page)).to_have_text(STABLE, timeout=15_000)
    expect(field(page, "error")).to_have_text("null")
    expect(field(page, "stale")).to_have_text("false")
    # EventSource reconnected by itself (Caddy held its request until the new relay was up):
    # the hook kept it rather than making another.
    assert eventsources(page)["made"] == 1
    assert gave_up(page) == 0

    # The relay loses its database: "stable": null is unknown, never processing. The job ends
    # meanwhile; the relay reads the truth again when it is let back in.
    run_sql(db_dsn, START)
    expect(badge(page)).to_have_text(PROCESSING)
    with database_unreachable(db_dsn) as kept:
        expect(badge(page)).to_have_text(UNAVAILABLE)
        expect(field(page, "isStable")).to_have_text("null")
        expect(field(page, "error")).to_have_text("null")  # the stream itself is fine
        expect(badge(page)).to_have_attribute(
            "title", "The status service cannot reach the database: the state is unknown"
        )
        kept.execute(FINISH)
    expect(badge(page)).to_have_text(STABLE, timeout=15_000)

    shown = assert_badge_said_what_the_stream_said(page)
    assert shown[:2] == ["Connecting…", STABLE]
    assert shown[-3:] == [PROCESSING, UNAVAILABLE, STABLE]


@pytest.mark.parametrize(
    ("relays", "front"),
    [({"http": {"heartbeat": "30s"}}, {"read_timeout": "1500ms"})],
    indirect=True,
    ids=["caddy-cuts-quiet-streams"],
)
def test_an_own_reconnect_to_the_same_relay_keeps_the_state_it_already_had(
    relays: Relays, front: Caddy, tab: Tab
) -> None:
    """Caddy ends a stream that stays quiet past its read_timeout (here, shorter than the
    relay's heartbeat). EventSource reconnects with Last-Event-ID naming the current state, and
    the relay sends nothing: the state the hook had is current again, not unknown for good."""
    page = open_example(tab, front)
    expect(badge(page)).to_have_text(STABLE)
    page.wait_for_function(
        "window.__es.events.filter(([kind]) => kind === 'open').length >= 3", timeout=15_000
    )
    page.wait_for_timeout(4_000)  # longer than the 3 s grace
    expect(badge(page)).to_have_text(STABLE)
    expect(field(page, "stale")).to_have_text("false")
    expect(field(page, "connection")).to_have_text("open")
    seen = eventsources(page)
    assert seen["made"] == 1
    assert [event for event in seen["events"] if event[0] == "message"] == [["message", 1, True]]
    assert ["error", 1, 0] in seen["events"]  # ended after a 200: EventSource reconnected
    assert_badge_said_what_the_stream_said(page)


def test_retries_with_backoff_after_eventsource_gives_up_on_a_502_or_503(
    relays: Relays, front: Caddy, tab: Tab, db_dsn: str
) -> None:
    live: list[int] = []
    tab.page.on(
        "response",
        lambda response: live.append(response.status) if response.url.endswith("/live") else None,
    )
    page = open_example(tab, front)
    run_sql(db_dsn, START)
    expect(badge(page)).to_have_text(PROCESSING)

    # Down for longer than Caddy tries upstreams (lb_try_duration 5s): Caddy answers an error,
    # EventSource stops for good, and the hook makes a new one after its backoff.
    relays.stop()
    run_sql(db_dsn, FINISH)
    expect(badge(page)).to_have_text(UNAVAILABLE, timeout=5_000)  # after the 3 s grace
    page.wait_for_function("window.__es.made >= 3", timeout=30_000)
    assert gave_up(page) >= 2
    assert {502, 503} & set(live), live
    expect(field(page, "connection")).to_have_text("retrying")
    expect(field(page, "error")).to_contain_text("refused or cannot be reached; retrying in")
    expect(field(page, "isStable")).to_have_text("null")

    relays.start()
    expect(badge(page)).to_have_text(STABLE, timeout=20_000)
    expect(field(page, "error")).to_have_text("null")
    expect(field(page, "connection")).to_have_text("open")
    assert_badge_said_what_the_stream_said(page)

    # The attempts were spaced by a growing backoff, not made back to back.
    made = eventsources(page)["made"]
    assert 3 <= made <= 6, made


@pytest.mark.parametrize("relays", [JWT_COOKIE], indirect=True, ids=["jwt-cookie"])
def test_unauthorized_is_an_error_and_the_hook_retries_until_signed_in(
    relays: Relays, front: Caddy, tab: Tab, db_dsn: str
) -> None:
    page = open_example(tab, front)
    # No session cookie: 401. EventSource gives up without saying why; the hook asks, says
    # so, and retries with backoff.
    expect(badge(page)).to_have_text(SIGN_IN)
    expect(field(page, "unauthorized")).to_have_text("authentication required")
    expect(field(page, "error")).to_contain_text(
        "Not authorized to see the system status (authentication required): sign in again;"
        " retrying in"
    )
    page.wait_for_function("window.__es.made >= 3", timeout=10_000)
    assert gave_up(page) >= 2

    # Signed in, with a token that expires in 12 s: the next retry (at most 8 s away, the
    # fourth step of the backoff) finds it valid.
    sign_in(page, front, lifetime=12)
    expect(badge(page)).to_have_text(STABLE, timeout=12_000)
    expect(field(page, "error")).to_have_text("null")

    # It expires: the relay's last event says why, and the badge says so at once.
    expect(badge(page)).to_have_text(SIGN_IN, timeout=15_000)
    expect(field(page, "unauthorized")).to_have_text("token expired")
    expect(field(page, "isStable")).to_have_text("null")
    # EventSource reconnects, gets 401 and gives up; the hook retries and keeps the reason.
    page.wait_for_function(
        "window.__es.events.some(([kind, , state]) => kind === 'error' && state === 2)"
        " && window.__es.events.some(([kind]) => kind === 'unauthorized')",
        timeout=10_000,
    )
    expect(field(page, "error")).to_contain_text("(token expired): sign in again; retrying in")

    run_sql(db_dsn, START)
    sign_in(page, front, lifetime=600)
    expect(badge(page)).to_have_text(PROCESSING, timeout=10_000)
    expect(field(page, "unauthorized")).to_have_text("null")
    expect(field(page, "error")).to_have_text("null")
    assert SIGN_IN in assert_badge_said_what_the_stream_said(page)


def sign_in(page: Page, front: Caddy, lifetime: int) -> None:
    token = jwt.encode({"sub": "someone", "exp": int(time.time()) + lifetime}, JWT_SECRET)
    page.context.add_cookies([{"name": "session", "value": token, "url": front.app_url}])


@contextmanager
def database_unreachable(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """The test's database takes no new connection and the relay's are ended, for the block;
    yields a connection opened before, to commit with meanwhile."""
    dbname = str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])
    name = sql.Identifier(dbname)
    admin_dsn = psycopg.conninfo.make_conninfo(dsn, dbname="postgres")
    with (
        psycopg.connect(dsn, autocommit=True) as kept,
        psycopg.connect(admin_dsn, autocommit=True) as admin,
    ):
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> %s",
                (dbname, kept.info.backend_pid),
            )
            yield kept
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))
