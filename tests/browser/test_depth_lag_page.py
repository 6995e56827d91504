"""Depth and lag in the details dialog (issue 20, item 3), in real headless Chromium, against a
real relay whose signals reader reads a real PostgreSQL: each active activity says how many
items wait or run (the database's count, "N+" past the cap) and how old the oldest is, with
its stalled rows and overdue bound; the figures go when the work ends, and a read the relay
refuses says why, as text."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

from playwright.sync_api import Locator, Page, expect

from relay.app import Relay
from relay.config.profiles import load_profile
from tests.browser.helpers import (
    Tab,
    answer_details_with,
    browser_config,
    relay_in_background,
    relay_of_activities,
    run_sql,
    url_of,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

SEED = load_profile("seed").activities
# The seed's activities declare age_column created_at; importing also counts stalled jobs (a
# slug starting with "stuck") and has an overdue bound no test reaches.
IMPORTING = {**SEED[0].model_dump(), "stalled": "t.slug LIKE 'stuck%'", "overdue_after": "1h"}
ACTIVITIES = [IMPORTING, SEED[1].model_dump()]
DEPTH_CAP = 5
# Reads every 0.5 s: what the test waits for is a read or two away.
SIGNALS = {"interval": "0.5s", "read_timeout": "0.4s", "depth_cap": DEPTH_CAP}

IMPORTING_ACTIVE = (
    "SELECT count(*) FROM public.import_job WHERE state IN "
    "('upload_completed', 'preparing_data', 'analysing_data', 'approved', 'processing_data')"
)
ANALYTICS_ACTIVE = (
    "SELECT count(*) FROM worker.tasks AS t JOIN worker.command_registry AS cr "
    "USING (command) WHERE cr.queue = 'analytics' AND t.state IN ('pending', 'processing', "
    "'waiting')"
)
FINISH = (
    "UPDATE public.import_job SET state = 'finished'",
    "UPDATE worker.tasks SET state = 'completed'",
)


def jobs(slugs: list[str], age: str) -> str:
    values = ", ".join(f"('{slug}', 'processing_data', now() - interval '{age}')" for slug in slugs)
    return f"INSERT INTO public.import_job (slug, state, created_at) VALUES {values}"


def tasks(count: int, age: str) -> str:
    return (
        "INSERT INTO worker.tasks (command, state, created_at) "
        f"SELECT 'derive_reports', 'pending', now() - interval '{age}' "
        f"FROM generate_series(1, {count})"
    )


def count(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def details(relay: Relay) -> dict[str, Any]:
    with urllib.request.urlopen(url_of(relay) + "/api/system-status/details", timeout=5) as got:
        body: dict[str, Any] = json.load(got)
    return body


@pytest.fixture
def signals_relay(db_dsn: str) -> Iterator[Relay]:
    with relay_of_activities(db_dsn, ACTIVITIES, SIGNALS) as running:
        yield running


def figures(page: Page, activity: str) -> Locator:
    return page.locator(f"system-status dialog section[data-activity='{activity}'] .figures")


def open_details(page: Page) -> None:
    page.get_by_role("button", name="Details").click()
    expect(page.locator("system-status dialog section[data-activity]")).to_have_count(2)


def test_the_dialog_shows_depth_and_lag_of_the_active_work_until_it_ends(
    signals_relay: Relay, db_dsn: str, tab: Tab
) -> None:
    page, relay = tab.page, signals_relay
    page.goto(url_of(relay) + "/")
    label = page.locator("system-status .label")
    expect(label).to_have_text("System stable")

    run_sql(
        db_dsn,
        jobs(["census-2026", "register-q4", "stuck-1"], age="4 min"),
        "INSERT INTO public.import_job (slug, state) VALUES ('done-1', 'finished')",
        tasks(DEPTH_CAP + 2, age="10 min"),
        # Not the analytics queue: not counted.
        "INSERT INTO worker.tasks (command, state) VALUES ('task_cleanup', 'pending')",
    )
    importing, analytics = count(db_dsn, IMPORTING_ACTIVE), count(db_dsn, ANALYTICS_ACTIVE)
    assert (importing, analytics) == (3, DEPTH_CAP + 2)
    expect(label).to_have_text("Processing stalled")
    # The relay's signals reader reads on its own schedule: the dialog shows its latest read.
    wait_until(
        lambda: details(relay)["signals"]["analytics"]["depth"] is not None,
        "the relay's first signals read",
    )

    open_details(page)
    expect(figures(page, "importing")).to_have_text(
        f"{importing} waiting or running \u00b7 oldest 4 min \u00b7 1 stalled"
        " \u00b7 expected within 1 h"
    )
    # Past the cap: the cap and a plus, not the database's 7.
    expect(figures(page, "analytics")).to_have_text(
        f"{DEPTH_CAP}+ waiting or running \u00b7 oldest 10 min"
    )
    expect(figures(page, "analytics").locator("[data-figure='depth']")).to_have_text(
        f"{DEPTH_CAP}+ waiting or running"
    )
    expect(page.locator("system-status dialog .figures-error")).to_have_count(0)
    tab.screenshot("depth-lag-details")

    # More work while the state stays the same: the open dialog follows (it asks again every
    # 15 s while something is active; the relay reads every 0.5 s here).
    run_sql(db_dsn, jobs(["groups-2026"], age="0 s"))
    importing = count(db_dsn, IMPORTING_ACTIVE)
    assert importing == 4
    expect(figures(page, "importing").locator("[data-figure='depth']")).to_have_text(
        f"{importing} waiting or running", timeout=40_000
    )

    run_sql(db_dsn, *FINISH)
    expect(label).to_have_text("System stable")
    content = page.locator("system-status dialog .content")
    expect(content.locator(".verdict.ok")).to_have_count(1)
    expect(content.locator(".figures")).to_have_count(0)
    expect(content.locator("section[data-activity] h3 .pill")).to_have_text(["Idle", "Idle"])


def test_a_refused_signals_read_says_why_and_shows_no_depth_or_lag(db_dsn: str, tab: Tab) -> None:
    # The database's signals function is the seed's (the fixture's install); this relay's
    # importing declares a stalled condition, so the relay refuses to read it.
    config = browser_config(db_dsn, profile="custom", activities=ACTIVITIES, signals=SIGNALS)
    page = tab.page
    with relay_in_background(config) as relay:
        page.goto(url_of(relay) + "/")
        expect(page.locator("system-status .label")).to_have_text("System stable")
        run_sql(db_dsn, jobs(["census-2026"], age="1 min"))
        expect(page.locator("system-status .label")).to_have_text("Processing data")
        wait_until(lambda: details(relay)["signals_error"] is not None, "the refused read")
        open_details(page)
        failed = page.locator("system-status dialog .figures-error")
        expect(failed).to_have_text(
            "Queue figures unavailable: signals: the installed "
            "public.system_stability_signals(integer) was generated from another definition "
            "of the activities (or by an older relay): run `stability-relay db install` with "
            "this config."
        )
        # No depth or lag without a read; the overdue bound is the config's.
        expect(page.locator("system-status dialog .figures")).to_have_text("expected within 1 h")
        run_sql(db_dsn, *FINISH)
        expect(page.locator("system-status .label")).to_have_text("System stable")
        expect(failed).to_have_count(0)


HOSTILE = '<img src="x" onerror="window.__injected = true">'


def test_server_text_in_the_figures_is_shown_as_text(relay: Relay, tab: Tab) -> None:
    page = tab.page
    answer_details_with(
        page,
        {
            "activities": {
                "importing": {"label": HOSTILE, "active": True, "items": [], "total": 0},
                "analytics": {"label": "Deriving statistics", "active": True},
            },
            "signals": {
                "importing": {
                    "depth": 12,
                    "depth_capped": False,
                    "oldest_age_s": 95,
                    "stalled": None,
                    "overdue": True,
                    "overdue_bound_s": 2400,
                },
                # No figures for it: nothing is shown.
                "analytics": {"depth": None, "oldest_age_s": None, "overdue_bound_s": None},
            },
            "signals_error": HOSTILE,
            "system_stable": False,
        },
    )
    page.goto(url_of(relay) + "/")
    expect(page.locator("system-status .label")).to_have_text("System stable")
    open_details(page)
    content = page.locator("system-status dialog .content")
    expect(figures(page, "importing")).to_have_text(
        "12 waiting or running \u00b7 oldest 2 min \u00b7 overdue, expected within 40 min"
    )
    expect(figures(page, "analytics")).to_have_count(0)
    expect(content.locator(".figures-error")).to_have_text(f"Queue figures unavailable: {HOSTILE}.")
    expect(content.locator("img")).to_have_count(0)
    assert page.evaluate("window.__injected === undefined")
