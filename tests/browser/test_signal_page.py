"""Stalled and overdue work on the status page, in real headless Chromium, read by the relay's
own signals reader from a real PostgreSQL: the badge says so in its own colour, the hint says
which work and for how long, and the state stays "processing" until the work ends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

from playwright.sync_api import Page, expect

from relay.app import Relay
from relay.config.profiles import load_profile
from tests.browser.helpers import (
    Tab,
    relay_of_activities,
    run_sql,
    url_of,
)

pytestmark = pytest.mark.timeout(60)

SEED = load_profile("seed").activities
# An import job whose slug starts with "stuck" is stalled; any import runs past 2 s overdue.
IMPORTING = {**SEED[0].model_dump(), "stalled": "t.slug LIKE 'stuck%'", "overdue_after": "2s"}
ACTIVITIES = [IMPORTING, SEED[1].model_dump()]
STUCK = "INSERT INTO public.import_job (slug, state) VALUES ('stuck-1', 'processing_data')"
MOVING = "INSERT INTO public.import_job (slug, state) VALUES ('moving-1', 'processing_data')"
UNSTICK = "UPDATE public.import_job SET slug = 'moving-2' WHERE slug = 'stuck-1'"
FINISH = "UPDATE public.import_job SET state = 'finished'"


@pytest.fixture
def relay(db_dsn: str) -> Iterator[Relay]:
    signals = {"interval": "0.5s", "read_timeout": "0.4s"}
    with relay_of_activities(db_dsn, ACTIVITIES, signals) as running:
        yield running


def badge(page: Page) -> list[Any]:
    return page.evaluate(
        """() => {
          const host = document.querySelector('system-status');
          const root = host.shadowRoot;
          return [root.querySelector('.label').textContent, root.querySelector('.tip').textContent,
                  root.querySelector('.badge').dataset.tone, host.getAttribute('attention')];
        }"""
    )


def test_stalled_then_overdue_work_shows_on_the_page_and_ends_with_the_work(
    relay: Relay, db_dsn: str, tab: Tab
) -> None:
    page = tab.page
    page.goto(url_of(relay) + "/")
    label = page.locator("system-status .label")
    tip = page.locator("system-status .tip")
    expect(label).to_have_text("System stable", timeout=10_000)

    run_sql(db_dsn, STUCK)
    expect(label).to_have_text("Processing stalled", timeout=10_000)
    _text, hint, tone, attention = badge(page)
    assert (tone, attention) == ("stalled", "stalled")
    assert hint.startswith("Importing data has ")
    assert page.locator("system-status").get_attribute("state") == "processing"
    assert page.evaluate("document.querySelector('system-status').stable") is False
    kinds = page.evaluate("document.querySelector('system-status').signals.map(s => s.kind)")
    assert kinds[0] == "stalled"

    # The stalled job moves again; past 2 s of busy the work is overdue (stalled outranks it,
    # so the badge says overdue only once nothing is stalled).
    run_sql(db_dsn, UNSTICK)
    expect(label).to_have_text("Processing overdue", timeout=10_000)
    expect(tip).to_contain_text("Importing data is overdue: running ", timeout=10_000)
    expect(tip).to_contain_text(", expected within 2 s.")
    assert badge(page)[2:] == ["overdue", "overdue"]
    tab.screenshot("signal-overdue")

    run_sql(db_dsn, FINISH)
    expect(label).to_have_text("System stable", timeout=10_000)
    _text, hint, tone, attention = badge(page)
    assert (hint, tone, attention) == ("All data processing is complete", "stable", None)
    assert page.evaluate("document.querySelector('system-status').signals.length") == 0


def test_processing_without_signals_looks_as_before(relay: Relay, db_dsn: str, tab: Tab) -> None:
    page = tab.page
    page.goto(url_of(relay) + "/")
    label = page.locator("system-status .label")
    expect(label).to_have_text("System stable", timeout=10_000)
    run_sql(db_dsn, MOVING)
    expect(label).to_have_text("Processing data", timeout=10_000)
    _text, hint, tone, attention = badge(page)
    assert (hint, tone, attention) == ("In progress: Importing data", "processing", None)
    run_sql(db_dsn, FINISH)
    expect(label).to_have_text("System stable", timeout=10_000)
