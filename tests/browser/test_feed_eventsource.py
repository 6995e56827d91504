"""Statbus's client side of /api/sse/worker_status, as its frontend runs it: a real
``EventSource`` in headless Chromium against the relay's feed (no JavaScript of ours)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

from relay.app import Relay
from tests import support
from tests.browser.helpers import Tab, browser_config, relay_in_background, run_sql, url_of

pytestmark = pytest.mark.timeout(60)

STATBUS_FEED = {
    **support.STATBUS_FEED,
    "heartbeat_interval": "0.5s",
    "coalesce": {"window": "300ms", "key": "type"},
}
IMPORT_JOBS_FEED = {
    "path": "/api/sse/import-jobs",
    "channels": ["import_job"],
    "events": "unnamed",
    "on_connect": "event",
    "filter": {"param": "ids", "field": "id"},
}

# What statbus's JotaiAppProvider does with the stream, reduced to a record of what it gets.
OPEN = """(url) => {
  window.__feed = window.__feed || {};
  const seen = (window.__feed[url] = []);
  const source = new EventSource(url);
  source.onmessage = (event) => seen.push(["message", event.data]);
  source.addEventListener("connected", (event) => seen.push(["connected", event.data]));
  source.addEventListener("heartbeat", (event) => seen.push(["heartbeat", event.data]));
  source.onerror = () => seen.push(["error", String(source.readyState)]);
}"""


@pytest.fixture
def feed_relay(db_dsn: str) -> Iterator[Relay]:
    config = browser_config(db_dsn, feeds=[STATBUS_FEED, IMPORT_JOBS_FEED])
    with relay_in_background(config) as running:
        yield running


def received(tab: Tab, url: str, kind: str | None = None) -> list[Any]:
    events: list[list[str]] = tab.page.evaluate(f"window.__feed[{json.dumps(url)}]")
    return [data for what, data in events if kind is None or what == kind]


def wait_until(tab: Tab, url: str, kind: str, count: int) -> None:
    tab.page.wait_for_function(
        "([url, kind, count]) => (window.__feed[url] || [])"
        ".filter(([what]) => what === kind).length >= count",
        arg=[url, kind, count],
        timeout=10_000,
    )


def notify(dsn: str, channel: str, *payloads: str) -> None:
    for payload in payloads:  # each its own commit, as the worker's hooks send them
        run_sql(dsn, f"SELECT pg_notify('{channel}', '{payload}')")


def test_statbus_client_gets_connected_payloads_heartbeats_and_connected_again(
    feed_relay: Relay, tab: Tab, db_dsn: str
) -> None:
    url = "/api/sse/worker_status"
    tab.page.goto(url_of(feed_relay) + "/")
    tab.page.evaluate(OPEN, url)
    wait_until(tab, url, "connected", 1)
    assert received(tab, url, "connected") == ["true"]

    payloads = [
        '{"type":"is_importing","status":true}',
        '{"type":"pipeline_progress","phases":[{"phase":"is_deriving_reports","step":"x"}]}',
        '{"type":"is_deriving_statistical_units","status":false}',
    ]
    notify(db_dsn, "worker_status", *payloads)
    wait_until(tab, url, "message", 3)
    assert received(tab, url, "message") == payloads  # verbatim, in order

    wait_until(tab, url, "heartbeat", 1)
    beat = json.loads(received(tab, url, "heartbeat")[0])
    assert beat["type"] == "heartbeat" and beat["timestamp"].endswith("Z")

    # Coalesced: a burst of one type within the window arrives as its latest payload.
    notify(
        db_dsn,
        "worker_status",
        *(f'{{"type":"is_importing","status":{s}}}' for s in ("true", "false", "true", "false")),
    )
    wait_until(tab, url, "message", 4)
    tab.page.wait_for_timeout(600)  # the window has passed: nothing more is coming
    assert received(tab, url, "message")[3:] == ['{"type":"is_importing","status":false}']

    # The relay's database connection is cut and comes back: the client is told to re-read.
    run_sql(
        db_dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'stability-relay' AND datname = current_database()",
    )
    wait_until(tab, url, "connected", 2)
    assert received(tab, url, "error") == []  # the stream itself never broke
    notify(db_dsn, "worker_status", '{"type":"is_importing","status":true}')
    wait_until(tab, url, "message", 5)


def test_import_job_clients_get_only_the_ids_they_asked_for(
    feed_relay: Relay, tab: Tab, db_dsn: str
) -> None:
    some, every = "/api/sse/import-jobs?ids=3,4", "/api/sse/import-jobs"
    tab.page.goto(url_of(feed_relay) + "/")
    tab.page.evaluate(OPEN, some)
    tab.page.evaluate(OPEN, every)
    wait_until(tab, some, "connected", 1)
    wait_until(tab, every, "connected", 1)
    notify(
        db_dsn,
        "import_job",
        '{"verb":"UPDATE","id":5}',
        '{"verb":"UPDATE","id":3}',
        '{"verb":"INSERT","id":4}',
    )
    wait_until(tab, every, "message", 3)
    wait_until(tab, some, "message", 2)
    assert [json.loads(m)["id"] for m in received(tab, every, "message")] == [5, 3, 4]
    assert [json.loads(m)["id"] for m in received(tab, some, "message")] == [3, 4]
