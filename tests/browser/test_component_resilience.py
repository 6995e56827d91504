"""<system-status> never gives up, and embeds in another origin's page.

Failures a real relay does not produce on demand (a 503 during maintenance, a stream that goes
silent, a 401) come from a scripted stand-in server; the embedding test uses a real relay with a
CORS allow-list and JWT cookie authentication.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

import jwt
from aiohttp import web
from playwright.sync_api import Page, expect

from relay.http.routes import PAGE_HEADERS, STATIC
from tests.browser.helpers import (
    Background,
    Tab,
    browser_config,
    relay_in_background,
    run_sql,
    url_of,
)
from tests.support import serve_on_loopback

pytestmark = pytest.mark.timeout(60)

STATE = 'data: {{"stable":{stable},"state":"{state}","since":"2026-01-01T00:00:00Z","seq":1}}\n\n'
JWT_SECRET = "a-test-secret-of-at-least-32-bytes!!"


@dataclass
class Stand:
    """A stand-in relay: each live connection plays the next step of ``plan``."""

    plan: list[str]
    heartbeat_timeout: str = "1"
    connections: int = 0
    open_streams: int = 0
    url: str = ""
    # When set: the page embeds the component from this relay, as another app's page would.
    embed_from: str | None = None

    async def page(self, _request: web.Request) -> web.Response:
        if self.embed_from is not None:
            return self._embedding_page(self.embed_from)
        body = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>stand-in</title>'
            '<script src="/static/system-status.js" defer></script></head><body>'
            f'<system-status heartbeat-timeout="{self.heartbeat_timeout}"></system-status>'
            "</body></html>"
        )
        return web.Response(text=body, content_type="text/html", headers=PAGE_HEADERS)

    def _embedding_page(self, relay: str) -> web.Response:
        body = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>an app</title>'
            f'<script src="{relay}/static/system-status.js" defer></script></head><body>'
            f'<p>An app</p><system-status src="{relay}"></system-status></body></html>'
        )
        csp = f"default-src 'none'; script-src {relay}; connect-src {relay}; style-src 'self'"
        return web.Response(
            text=body, content_type="text/html", headers={"Content-Security-Policy": csp}
        )

    async def script(self, _request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "system-status.js")

    async def live(self, request: web.Request) -> web.StreamResponse:
        self.connections += 1
        step = self.plan.pop(0) if len(self.plan) > 1 else self.plan[0]
        if step in ("503", "401"):
            return web.json_response(
                {"error": "refused"}, status=int(step), headers={"Retry-After": "0"}
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.open_streams += 1
        try:
            stable = step.startswith("stable")
            await response.write(
                STATE.format(
                    stable="true" if stable else "false",
                    state="stable" if stable else "processing",
                ).encode()
            )
            if step.endswith("silent"):
                await asyncio.sleep(3600)  # open, and never another byte: a dead proxy, say
            while True:
                await asyncio.sleep(0.3)
                await response.write(b": ping\n\n")
        finally:
            self.open_streams -= 1


@asynccontextmanager
async def serving(stand: Stand) -> AsyncIterator[Stand]:
    app = web.Application()
    app.router.add_get("/", stand.page)
    app.router.add_get("/static/system-status.js", stand.script)
    app.router.add_get("/api/system-status/live", stand.live)
    async with serve_on_loopback(app, handler_cancellation=True, shutdown_timeout=0.5) as port:
        stand.url = f"http://127.0.0.1:{port}"
        yield stand


@pytest.fixture
def stand(request: pytest.FixtureRequest) -> Iterator[Stand]:
    plan: list[str] = request.param
    with Background(lambda: serving(Stand(list(plan))), name="stand-in") as running:
        yield running


def expect_state(page: Page, state: str, timeout: float = 10.0) -> None:
    expect(page.locator("system-status")).to_have_attribute("state", state, timeout=timeout * 1000)


@pytest.mark.parametrize("stand", [["503", "503", "processing"]], indirect=True)
def test_keeps_reconnecting_after_non_200_answers(stand: Stand, tab: Tab) -> None:
    """EventSource would stop for good after the first 503; the component backs off and retries."""
    page = tab.page
    page.goto(stand.url + "/")
    expect_state(page, "processing", timeout=15)
    expect(page.locator("system-status .label")).to_have_text("Processing data")
    assert tab.history() == ["connecting", "unreachable", "processing"]
    assert stand.connections == 3


@pytest.mark.parametrize("stand", [["stable-silent", "processing"]], indirect=True)
def test_reconnects_when_the_stream_goes_silent_and_not_while_pings_arrive(
    stand: Stand, tab: Tab
) -> None:
    page = tab.page
    page.goto(stand.url + "/")
    expect_state(page, "processing", timeout=5)  # after heartbeat-timeout="1" s of silence
    assert tab.history() == ["connecting", "stable", "processing"]  # no grey flash in between
    time.sleep(2.5)  # pings every 0.3 s keep the second stream: no third connection
    assert stand.connections == 2


@pytest.mark.parametrize("stand", [["401", "processing"]], indirect=True)
def test_says_sign_in_when_refused_and_recovers(stand: Stand, tab: Tab) -> None:
    page = tab.page
    page.goto(stand.url + "/")
    expect_state(page, "processing", timeout=10)
    assert tab.history() == ["connecting", "unauthorized", "processing"]


@pytest.mark.parametrize("stand", [["processing"]], indirect=True)
def test_element_made_by_script_connects_and_closes_its_stream_when_removed(
    stand: Stand, tab: Tab
) -> None:
    page = tab.page
    page.goto(stand.url + "/")
    expect_state(page, "processing")
    page.evaluate(
        "() => { document.querySelector('system-status').remove();"
        " const made = document.createElement('system-status'); made.id = 'made';"
        " made.setAttribute('src', location.origin); document.body.append(made); }"
    )
    expect(page.locator("#made")).to_have_attribute("state", "processing")
    assert stand.connections == 2
    page.evaluate("document.getElementById('made').remove()")
    deadline = time.monotonic() + 5
    while stand.open_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stand.open_streams == 0  # both removed elements let go of their streams
    time.sleep(1.5)  # and neither reconnects: heartbeat-timeout is 1 s
    assert stand.connections == 2


def test_embeds_in_another_origin_with_the_apps_session_cookie(db_dsn: str, tab: Tab) -> None:
    """The README's recipe: the app's page loads the script from the relay, the relay lists the
    app's origin in ``cors.allow_origins`` and reads the app's JWT session cookie."""
    page = tab.page
    with Background(lambda: serving(Stand(["processing"])), name="app") as app:
        config = browser_config(
            db_dsn,
            cors={"allow_origins": [app.url]},
            auth={"jwt": {"secret": JWT_SECRET, "cookie": "session"}},
        )
        with relay_in_background(config) as relay:
            app.embed_from = url_of(relay)
            page.goto(app.url + "/")
            expect_state(page, "unauthorized")  # no session cookie yet: refused, and it says so
            expect(page.locator("system-status .tip")).to_have_text(
                "Sign in to see the system status"
            )

            token = jwt.encode({"sub": "someone", "exp": int(time.time()) + 600}, JWT_SECRET)
            page.context.add_cookies([{"name": "session", "value": token, "url": url_of(relay)}])
            expect_state(page, "stable", timeout=10)
            run_sql(
                db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('x', 'analysing_data')"
            )
            expect_state(page, "processing", timeout=2)
            page.get_by_role("button", name="Details").click()
            expect(page.locator("system-status li[data-job-id] .name")).to_have_text("x")
            expect(page.locator("system-status .badge")).to_have_css("color", "rgb(133, 77, 14)")
