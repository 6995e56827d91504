"""Helpers for the real-browser tests: a relay on a thread of its own, tabs, SQL, screenshots.

The relay under test runs on its own event loop in a thread (:class:`Background`), so the
tests can drive the browser with Playwright's synchronous API.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import psycopg

from relay.app import Relay
from relay.config import Config
from relay.source.install import install
from tests.support import relay_config, running_relay

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page

CHROMIUM = Path(os.environ.get("RELAY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 360, "height": 740}

T = TypeVar("T")


class Background(Generic[T]):
    """Runs an async context manager on its own event loop in a thread, until ``__exit__``."""

    def __init__(self, factory: Callable[[], AbstractAsyncContextManager[T]], name: str) -> None:
        self._factory = factory
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._value: T | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> T:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError(f"{self._thread.name} did not start within 30 s")
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        if self._thread.is_alive():
            raise TimeoutError(f"{self._thread.name} did not stop within 30 s")
        if self._error is not None and exc is None:
            raise self._error

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with self._factory() as value:
                self._value = value
                self._ready.set()
                await self._stop.wait()
        except BaseException as error:
            self._error = error
        finally:
            self._ready.set()


def browser_config(dsn: str, port: int = 0, **sections: Any) -> Config:
    """A relay for the browser: progress relayed, fast heartbeats, and a short ``retry:``.
    ``http`` and ``details`` sections are merged into these defaults."""
    http = {"listen": f"127.0.0.1:{port}", "heartbeat": "1s", "retry": "0.5s"}
    http.update(sections.pop("http", {}))
    details = {"statement_timeout": "2s", "cache": "0.2s"}
    details.update(sections.pop("details", {}))
    return relay_config(
        dsn, http=http, channels=["import_job_progress"], details=details, **sections
    )


def relay_in_background(config: Config) -> Background[Relay]:
    return Background(lambda: running_relay(config), name="relay-under-test")


def relay_of_activities(
    dsn: str, activities: list[dict[str, Any]], signals: dict[str, Any]
) -> Background[Relay]:
    """A relay of the ``custom`` profile with these activities (installed on ``dsn`` first, no
    hold parked) and this ``signals`` section."""
    config = browser_config(dsn, profile="custom", activities=activities, signals=signals)
    run_async(install(dsn, activities=config.activities, park=False))
    return relay_in_background(config)


def url_of(relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.port}"


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh loop in another thread."""
    with ThreadPoolExecutor(1, thread_name_prefix="run-async") as pool:
        return pool.submit(asyncio.run, coroutine).result(60)


def answer_details_with(page: Page, details: dict[str, Any]) -> None:
    """The page's details requests get ``details`` (a shape no live relay state gives)."""
    body = json.dumps(details)
    page.route(
        "**/api/system-status/details",
        lambda route: route.fulfill(status=200, content_type="application/json", body=body),
    )


def run_sql(dsn: str, *statements: str) -> None:
    """Run statements in one committed transaction."""
    with psycopg.connect(dsn) as conn:
        for statement in statements:
            conn.execute(statement)


@dataclass
class Tab:
    """A page plus what the browser reported while it was open."""

    page: Page
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def requested(self, path: str) -> int:
        return sum(1 for url in self.requests if url.split("?")[0].endswith(path))

    def history(self) -> list[str]:
        """The states the component has shown, in order."""
        return list(self.page.evaluate("window.__statusHistory"))

    def running_seen(self) -> list[list[str]]:
        """What each ``system-status-change`` event said was running, in order."""
        return list(self.page.evaluate("window.__statusEvents.map((detail) => detail.running)"))

    def wait_for_state_seen(self, state: str, timeout: float = 10.0) -> None:
        """Waits until the component has shown ``state`` at least once (even if only briefly)."""
        self.page.wait_for_function(
            "(state) => window.__statusHistory.includes(state)", arg=state, timeout=timeout * 1000
        )

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        target = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(target))
        return target


def open_tab(browser: Browser, viewport: dict[str, int] = DESKTOP) -> Tab:
    return tab_in(new_context(browser, viewport))


def new_context(browser: Browser, viewport: dict[str, int] = DESKTOP) -> BrowserContext:
    """A fresh browser profile (cookies, storage, locks: one origin's tabs share them) whose
    pages record the states the component shows (see :meth:`Tab.history`)."""
    context = browser.new_context(
        viewport={"width": viewport["width"], "height": viewport["height"]},
        locale="en-US",
        reduced_motion="reduce",  # no transitions: what the test reads is what is drawn
    )
    # Every state the component passes through, however briefly, and every event's detail (a
    # change of what is running fires one in the same state). Init scripts are not subject to
    # the page's CSP.
    context.add_init_script(
        "window.__statusHistory = []; window.__statusEvents = [];"
        "document.addEventListener('system-status-change', (event) => {"
        " window.__statusEvents.push(event.detail);"
        " const history = window.__statusHistory;"
        " if (history[history.length - 1] !== event.detail.state)"
        " history.push(event.detail.state); });"
    )
    return context


def tab_in(context: BrowserContext) -> Tab:
    """A new tab of ``context``; what it reports (script errors, CSP, requests) is recorded."""
    page = context.new_page()
    page.set_default_timeout(10_000)
    tab = Tab(page)

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            tab.problems.append(f"CSP: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: tab.problems.append(f"page error: {error}"))
    page.on("request", lambda request: tab.requests.append(request.url))
    return tab


def wait_until(
    check: Callable[[], bool], what: str, timeout: float = 10.0, page: Page | None = None
) -> float:
    """Polls ``check`` (every 20 ms) until it holds; returns the seconds it took. For what the
    page cannot wait for by itself, such as the relay's count of clients. With ``page``, it
    waits through Playwright, which meanwhile delivers the browser's events (the requests that
    :meth:`Tab.requested` counts): a plain sleep would not."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        if page is not None:
            page.wait_for_timeout(20)
        else:
            time.sleep(0.02)
    return time.monotonic() - started


def live_clients(relay: Relay) -> int:
    """How many browsers hold the relay's live stream (/api/system-status/live) open."""
    return len(relay.hub)


# Headless Chromium says every page is visible, whatever is in front, and offers no CDP command
# to say otherwise: the page's document reports the state given here (visibilityState, hidden)
# and gets the `visibilitychange` event a browser fires when a tab goes to the background.
EMULATE_VISIBILITY = """(hidden) => {
  Object.defineProperty(document, "visibilityState", {
    configurable: true, get: () => (hidden ? "hidden" : "visible") });
  Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def set_hidden(page: Page, hidden: bool) -> None:
    """As if the tab went to the background (``True``) or came to the front again."""
    page.evaluate(EMULATE_VISIBILITY, hidden)
