"""<system-status> behind a proxy that buffers whole responses (tests/buffering_proxy.py): a real
relay on a real PostgreSQL, the page and everything it asks for through the proxy, in Debian's
Chromium. The stream answers nothing there, so the component falls back to polling (the
snapshot and /wait), says so, flips on a commit, and returns to the stream once the proxy passes
bytes on again; without the proxy it keeps streaming.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

from playwright.sync_api import ConsoleMessage, Page, expect

from relay.app import Relay
from tests.browser.helpers import (
    Background,
    Tab,
    live_clients,
    run_sql,
    tab_in,
    url_of,
    wait_until,
)
from tests.buffering_proxy import BufferingProxy, buffering_proxy
from tests.ops_support import PROCESSING, STABLE

pytestmark = pytest.mark.timeout(120)

LIVE = "/api/system-status/live"
SNAPSHOT = "/api/system-status"
WAIT = "/api/system-status/wait"
NOTE = "so the status is checked by polling"
# Each change event's wall-clock time in the page (the test's commits are timed on the same
# clock), beside the history that tests/browser/helpers.py records.
STAMP_CHANGES = (
    "window.__changes = [];"
    "document.addEventListener('system-status-change', (event) => {"
    " window.__changes.push({state: event.detail.state, at: Date.now()}); });"
)


@pytest.fixture
def proxy(relay: Relay) -> Iterator[BufferingProxy]:
    with Background(lambda: buffering_proxy(url_of(relay)), name="buffering-proxy") as running:
        yield running


@pytest.fixture
def console(tab: Tab) -> list[str]:
    """What the page wrote to its console: "warning: ...", "info: ..."."""
    lines: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        lines.append(f"{message.type}: {message.text}")

    tab.page.on("console", on_console)
    return lines


def stamped(tab: Tab) -> Tab:
    tab.page.context.add_init_script(STAMP_CHANGES)
    return tab


def polls(proxy: BufferingProxy) -> int:
    return sum(1 for path in proxy.requests if path in (SNAPSHOT, WAIT))


def flip_after_commit(page: Page, dsn: str, statement: str, state: str) -> float:
    """Commits ``statement``; the seconds from just before the commit (its connection included:
    the figure errs long) to the change event that shows ``state``."""
    before = time.time() * 1000
    run_sql(dsn, statement)
    found = "([state, after]) => window.__changes.find((c) => c.state === state && c.at >= after)"
    page.wait_for_function(found, arg=[state, before], timeout=10_000)
    shown = page.evaluate(f"(args) => ({found})(args).at", [state, before])
    return (float(shown) - before) / 1000


def test_behind_a_buffering_proxy_it_polls_says_so_and_flips_on_a_commit(
    relay: Relay, proxy: BufferingProxy, db_dsn: str, tab: Tab, console: list[str]
) -> None:
    page = stamped(tab).page
    host = page.locator("system-status")
    started = time.monotonic()
    page.goto(proxy.url + "/")
    expect(host).to_have_attribute("polling", "", timeout=15_000)
    expect(host).to_have_attribute("state", "stable")
    detected = time.monotonic() - started
    print(f"\nbuffering detected and the first polled state shown {detected:.2f} s after loading")
    assert tab.history() == ["connecting", "stable"]
    expect(page.locator("system-status .tip")).to_contain_text("All data processing is complete.")
    expect(page.locator("system-status .tip")).to_contain_text(NOTE)
    warnings = [line for line in console if line.startswith("warning: system-status")]
    assert len(warnings) == 1 and "delivered nothing in 5 s" in warnings[0]
    assert f"{url_of(relay)}" not in warnings[0] and proxy.url in warnings[0]
    # The held-back stream is let go of (the proxy hangs up upstream with it).
    wait_until(lambda: live_clients(relay) == 0, "the held-back stream ends", 3, page=page)

    # The component's detection is done: from here on, each flip is one commit away.
    to_processing = flip_after_commit(page, db_dsn, PROCESSING, "processing")
    expect(page.locator("system-status .tip")).to_contain_text(NOTE)
    to_stable = flip_after_commit(page, db_dsn, STABLE, "stable")
    print(f"commit to badge, polling: {to_processing:.3f} s, then {to_stable:.3f} s (stable)")
    assert to_processing < 2 and to_stable < 2
    assert tab.history() == ["connecting", "stable", "processing", "stable"]

    # Another tab of the profile follows the leader: the state and the note, no polls of its own.
    follower = tab_in(page.context)
    follower.page.goto(proxy.url + "/")
    expect(follower.page.locator("system-status")).to_have_attribute("state", "stable")
    expect(follower.page.locator("system-status")).to_have_attribute("polling", "")
    to_processing = flip_after_commit(follower.page, db_dsn, PROCESSING, "processing")
    print(f"commit to badge, a follower tab: {to_processing:.3f} s")
    assert to_processing < 2
    assert follower.requested(WAIT) == 0 and follower.requested(LIVE) == 0
    assert follower.problems == []

    # A long poll holds while nothing changes: no round ends in these seconds (each waits 20 s).
    before, since = tab.requested(WAIT), time.monotonic()
    page.wait_for_timeout(4000)
    print(f"/wait rounds in {time.monotonic() - since:.1f} s idle: {tab.requested(WAIT) - before}")
    assert tab.requested(WAIT) == before


def test_without_the_proxy_it_keeps_streaming(
    relay: Relay, db_dsn: str, tab: Tab, console: list[str]
) -> None:
    page = stamped(tab).page
    host = page.locator("system-status")
    page.goto(url_of(relay) + "/")
    expect(host).to_have_attribute("state", "stable")
    page.wait_for_timeout(6500)  # past the 5 s in which a held-back stream is noticed
    to_processing = flip_after_commit(page, db_dsn, PROCESSING, "processing")
    print(f"\ncommit to badge, streaming: {to_processing:.3f} s")
    expect(host).not_to_have_attribute("polling", "")
    assert tab.requested(LIVE) == 1
    assert tab.requested(WAIT) == 0 and tab.requested(SNAPSHOT) == 0
    assert live_clients(relay) == 1
    assert not [line for line in console if "system-status" in line]


def test_returns_to_the_stream_when_the_proxy_stops_buffering(
    relay: Relay, proxy: BufferingProxy, db_dsn: str, tab: Tab, console: list[str]
) -> None:
    page = stamped(tab).page
    host = page.locator("system-status")
    page.goto(proxy.url + "/")
    expect(host).to_have_attribute("polling", "", timeout=15_000)

    proxy.buffering = False  # the proxy fixed: the next try of the stream (5-10 s on) works
    expect(host).not_to_have_attribute("polling", "", timeout=30_000)
    expect(page.locator("system-status .tip")).to_have_text("All data processing is complete")
    assert [line for line in console if line.startswith("info: system-status")] != []
    wait_until(lambda: live_clients(relay) == 1, "one stream through the proxy", 5, page=page)

    to_processing = flip_after_commit(page, db_dsn, PROCESSING, "processing")
    print(f"\ncommit to badge, back on the stream: {to_processing:.3f} s")
    assert to_processing < 2
    done = polls(proxy)
    page.wait_for_timeout(3000)
    assert polls(proxy) == done  # no more polls: the stream carries the state
    assert tab.history() == ["connecting", "stable", "processing"]
