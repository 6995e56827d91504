"""Many tabs, one stream: the tabs of one origin share one live stream through a leader tab (Web
Locks and BroadcastChannel), another tab takes over when it closes, and hidden pages let go of
the stream. Real Chromium tabs (pages of one browser context: one profile), a real relay, a real
PostgreSQL; the relay's own count of its clients says how many streams are open.

Headless Chromium reports every page as visible; the tests that hide pages emulate it in the page
(``set_hidden``: ``document.visibilityState`` and the ``visibilitychange`` event).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

from aiohttp import web
from playwright.sync_api import Browser, expect

from relay.app import Relay
from tests.browser.helpers import (
    Background,
    Tab,
    browser_config,
    live_clients,
    new_context,
    relay_in_background,
    run_sql,
    set_hidden,
    tab_in,
    url_of,
    wait_until,
)
from tests.ops_support import PROCESSING, STABLE
from tests.support import serve_on_loopback

pytestmark = pytest.mark.timeout(120)

TABS = 10
GRACE_S = 1.0
LIVE = "/api/system-status/live"

# An app's page on the relay's origin (answered by the browser context's route; the script and
# the streams are the relay's own): a badge in the header and one in the page, one without `src`
# and one with the page's origin written out: the same stream, so one leader for both.
APP_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>an app</title>
<script src="/static/system-status.js" defer></script></head><body>
<header><system-status id="header" hidden-grace="{grace}"></system-status></header>
<main><system-status id="main" src="{origin}" hidden-grace="{grace}"></system-status></main>
</body></html>"""

NO_LOCKS = "delete Navigator.prototype.locks;"
NO_BROADCAST_CHANNEL = "delete window.BroadcastChannel;"


@contextmanager
def app_tabs(
    browser: Browser, relay: Relay, count: int, init_script: str = ""
) -> Iterator[list[Tab]]:
    """``count`` tabs of the app's page on the relay's origin, opened one after the other in one
    browser profile."""
    origin = url_of(relay)
    body = APP_PAGE.format(origin=origin, grace=GRACE_S)
    with browser_tabs(browser, count, origin + "/app", body, init_script) as tabs:
        yield tabs


@contextmanager
def browser_tabs(
    browser: Browser, count: int, url: str, body: str = "", init_script: str = ""
) -> Iterator[list[Tab]]:
    """``count`` tabs of ``url`` (answered with ``body`` when given) in one browser profile."""
    context = new_context(browser)
    try:
        if init_script:
            context.add_init_script(init_script)
        if body:
            context.route(
                url, lambda route: route.fulfill(status=200, content_type="text/html", body=body)
            )
        tabs = []
        for _ in range(count):
            tab = tab_in(context)
            tab.page.goto(url)
            tabs.append(tab)
        yield tabs
        assert [problem for tab in tabs for problem in tab.problems] == []
    finally:
        context.close()


@dataclass
class App:
    """Another app's web server, whose page shows the badges of two relays."""

    body: str = ""
    url: str = ""

    async def page(self, _request: web.Request) -> web.Response:
        return web.Response(text=self.body, content_type="text/html")


@asynccontextmanager
async def serving(app: App) -> AsyncIterator[App]:
    server = web.Application()
    server.router.add_get("/app", app.page)
    async with serve_on_loopback(server) as port:
        app.url = f"http://127.0.0.1:{port}"
        yield app


def expect_state(tabs: list[Tab], state: str, timeout: float = 10.0) -> None:
    """Every <system-status> of every tab shows ``state``."""
    for tab in tabs:
        for badge in tab.page.locator("system-status").all():
            expect(badge).to_have_attribute("state", state, timeout=timeout * 1000)


def streams_opened(tabs: list[Tab]) -> int:
    """How many live streams these tabs have asked the relay for, in all."""
    return sum(tab.requested(LIVE) for tab in tabs)


def leader_of(tabs: list[Tab]) -> Tab:
    readers = [tab for tab in tabs if tab.requested(LIVE)]
    assert len(readers) == 1, f"{len(readers)} tabs read the stream"
    return readers[0]


def flashed(tabs: list[Tab]) -> list[list[str]]:
    """The histories of the tabs that showed a state other than stable/processing once shown."""
    histories = [tab.history() for tab in tabs]
    return [h for h in histories if set(h[1:]) - {"stable", "processing"}]


def test_ten_tabs_read_one_stream_and_another_tab_takes_over_when_the_leader_closes(
    relay: Relay, db_dsn: str, browser: Browser
) -> None:
    with app_tabs(browser, relay, TABS) as tabs:
        expect_state(tabs, "stable")
        # Each tab's own stream would be 10 clients (and, over HTTP/1.1, the 7th tab would hang).
        assert live_clients(relay) == 1
        leader = leader_of(tabs)
        assert streams_opened(tabs) == 1
        assert leader.requested(LIVE) == 1
        # The followers showed the state at once, from the leader's answer: no grey in between.
        assert all(tab.history() == ["connecting", "stable"] for tab in tabs)

        run_sql(db_dsn, PROCESSING)
        expect_state(tabs, "processing", timeout=3)
        assert live_clients(relay) == 1

        rest = [tab for tab in tabs if tab is not leader]
        closed = time.monotonic()
        leader.page.close()
        took = wait_until(
            lambda: streams_opened(rest) == 1 and live_clients(relay) == 1,
            "another tab reads the one stream",
            page=rest[0].page,
        )
        print(f"\ntakeover: {took * 1000:.0f} ms from closing the leader's tab")
        assert time.monotonic() - closed < 5
        successor = leader_of(rest)
        expect_state(rest, "processing")

        run_sql(db_dsn, STABLE)
        expect_state(rest, "stable", timeout=3)
        assert live_clients(relay) == 1
        assert streams_opened(rest) == 1 and successor.requested(LIVE) == 1
        assert flashed(rest) == []  # the takeover never showed "Status unavailable"


def test_a_tab_opened_later_shows_the_state_at_once_from_the_leader(
    relay: Relay, db_dsn: str, browser: Browser
) -> None:
    run_sql(db_dsn, PROCESSING)
    with app_tabs(browser, relay, 2) as tabs:
        expect_state(tabs, "processing")
        late = tab_in(tabs[0].page.context)
        late.page.goto(url_of(relay) + "/app")
        expect_state([late], "processing")
        assert late.requested(LIVE) == 0  # from the leader's answer, not a stream of its own
        assert late.history() == ["connecting", "processing"]
        assert live_clients(relay) == 1
        assert late.problems == []


def test_a_followers_details_dialog_moves_with_the_leaders_progress_events(
    relay: Relay, db_dsn: str, browser: Browser
) -> None:
    run_sql(
        db_dsn,
        "INSERT INTO public.import_job (slug, state, total_rows, imported_rows, "
        "import_completed_pct) VALUES ('census-2026', 'processing_data', 1000, 250, 25)",
    )
    with app_tabs(browser, relay, 2) as tabs:
        expect_state(tabs, "processing")
        leader_of(tabs)
        follower = next(tab for tab in tabs if not tab.requested(LIVE))
        follower.page.locator("#main").get_by_role("button", name="Details").click()
        rows = follower.page.locator("#main li[data-job-id] .rows")
        expect(rows).to_have_text("250 of 1,000 rows (25%)")
        run_sql(
            db_dsn, "UPDATE public.import_job SET imported_rows = 600, import_completed_pct = 60"
        )
        expect(rows).to_have_text("600 of 1,000 rows (60%)", timeout=2000)
        # The bar moved with the relayed progress event, not with a second fetch.
        assert follower.requested("/api/system-status/details") == 1
        assert follower.requested(LIVE) == 0


def test_hidden_tabs_let_go_of_the_stream_after_the_grace_and_resync_when_shown(
    relay: Relay, db_dsn: str, browser: Browser
) -> None:
    with app_tabs(browser, relay, TABS) as tabs:
        expect_state(tabs, "stable")
        first = leader_of(tabs)

        # The leader goes to the background: after the grace, a visible tab takes the stream.
        hidden_at = time.monotonic()
        set_hidden(first.page, True)
        wait_until(
            lambda: streams_opened(tabs) == 2, "a visible tab takes over", 5, page=tabs[-1].page
        )
        assert time.monotonic() - hidden_at >= GRACE_S
        second = leader_of([tab for tab in tabs if tab is not first])
        wait_until(
            lambda: live_clients(relay) == 1, "the hidden leader's stream closes", page=first.page
        )

        # Every tab hidden: the last leader closes the stream after the grace, and no hidden
        # tab takes it up.
        for tab in tabs:
            if tab is not second:
                set_hidden(tab.page, True)
        hidden_at = time.monotonic()
        set_hidden(second.page, True)
        wait_until(
            lambda: live_clients(relay) == 0, "no stream while every tab is hidden", page=first.page
        )
        assert time.monotonic() - hidden_at >= GRACE_S
        assert streams_opened(tabs) == 2

        # The state changes while nobody listens; the first tab shown again reconnects, and
        # every tab (the hidden ones listen to it) shows the current state.
        run_sql(db_dsn, PROCESSING)
        set_hidden(first.page, False)
        wait_until(
            lambda: live_clients(relay) == 1, "the tab shown again reconnects", page=first.page
        )
        expect_state(tabs, "processing")
        assert first.requested(LIVE) == 2 and streams_opened(tabs) == 3

        # Another tab shown again follows it: no second stream.
        set_hidden(second.page, False)
        run_sql(db_dsn, STABLE)
        expect_state(tabs, "stable", timeout=3)
        assert live_clients(relay) == 1 and streams_opened(tabs) == 3
        assert flashed(tabs) == []


@pytest.mark.parametrize("missing", [NO_LOCKS, NO_BROADCAST_CHANNEL], ids=["locks", "channel"])
def test_without_locks_or_channels_each_tab_reads_its_own_stream(
    relay: Relay, db_dsn: str, browser: Browser, missing: str
) -> None:
    with app_tabs(browser, relay, 3, init_script=missing) as tabs:
        expect_state(tabs, "stable")
        # Two badges per tab, each with a stream of its own, as before sharing existed.
        assert live_clients(relay) == 6
        assert [tab.requested(LIVE) for tab in tabs] == [2, 2, 2]
        run_sql(db_dsn, PROCESSING)
        expect_state(tabs, "processing", timeout=3)

        # A hidden tab still pauses its own streams, and reconnects when shown.
        set_hidden(tabs[0].page, True)
        wait_until(
            lambda: live_clients(relay) == 4, "the hidden tab's streams close", page=tabs[1].page
        )
        run_sql(db_dsn, STABLE)
        expect_state(tabs[1:], "stable", timeout=3)
        set_hidden(tabs[0].page, False)
        expect_state(tabs[:1], "stable")
        wait_until(
            lambda: live_clients(relay) == 6, "the tab shown again reconnects", page=tabs[1].page
        )
        assert tabs[0].requested(LIVE) == 4


def test_each_relay_url_has_a_stream_of_its_own(db_dsn: str, browser: Browser) -> None:
    """Another app's tabs with the badges of two relays: one election, one stream, per relay."""
    with Background(lambda: serving(App()), name="app") as app:
        config = browser_config(db_dsn, cors={"allow_origins": [app.url]})
        with relay_in_background(config) as one, relay_in_background(config) as two:
            app.body = (
                '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>an app</title>'
                f'<script src="{url_of(one)}/static/system-status.js" defer></script></head><body>'
                f'<system-status id="one" src="{url_of(one)}"></system-status>'
                f'<system-status id="two" src="{url_of(two)}"></system-status></body></html>'
            )
            with browser_tabs(browser, 3, app.url + "/app") as tabs:
                expect_state(tabs, "stable")
                assert live_clients(one) == 1 and live_clients(two) == 1
                assert streams_opened(tabs) == 2
                run_sql(db_dsn, PROCESSING)
                expect_state(tabs, "processing", timeout=3)
                assert live_clients(one) == 1 and live_clients(two) == 1
