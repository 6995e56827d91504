"""The status page's timeline of the last 24 hours, how long processing usually takes, and the
time left in the details dialog, in real headless Chromium against a real relay and PostgreSQL."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

from playwright.sync_api import Locator, Page, Route, expect

from relay.app import Relay
from tests.browser.helpers import Tab, answer_details_with, run_sql, url_of

pytestmark = pytest.mark.timeout(60)

START_JOB = "INSERT INTO public.import_job (slug, state) VALUES ('census-2026', 'processing_data')"
FINISH_JOB = "UPDATE public.import_job SET state = 'finished'"
HISTORY = "/api/system-status/history"


def past_period(hours_ago: float, minutes: float, slugs: str = "{}") -> str:
    """A finished period of the whole system (activity '') that began ``hours_ago``."""
    began = f"now() - interval '{hours_ago} hours'"
    return (
        "INSERT INTO public.system_stability_period (activity, started_at, ended_at, slugs) "
        f"VALUES ('', {began}, {began} + interval '{minutes} minutes', '{slugs}')"
    )


def expect_badge(page: Page, text: str) -> None:
    expect(page.locator("system-status .label").first).to_have_text(text)


def segments(page: Page) -> Locator:
    return page.locator("system-status .tl-track .seg")


def tooltip(page: Page) -> Locator:
    return page.locator("system-status .tl-tip")


def usual(page: Page) -> Locator:
    return page.locator("system-status .usual")


def test_a_processing_period_shows_as_a_segment_that_names_its_import_job(
    relay: Relay, db_dsn: str, tab: Tab
) -> None:
    page = tab.page
    page.goto(url_of(relay) + "/")
    expect_badge(page, "System stable")
    timeline = page.locator("system-status .timeline")
    expect(timeline).to_be_visible()
    expect(timeline.locator(".tl-total")).to_have_text("No processing")
    expect(segments(page)).to_have_count(0)
    expect(usual(page)).to_be_hidden()

    # Processing starts: the leader opens a period, the component fetches it on the change.
    run_sql(db_dsn, START_JOB)
    expect_badge(page, "Processing data")
    expect(page.locator("system-status .seg[data-open]")).to_have_count(1)

    run_sql(db_dsn, FINISH_JOB)
    expect_badge(page, "System stable")
    expect(page.locator("system-status .seg:not([data-open])")).to_have_count(1)
    expect(segments(page)).to_have_count(1)
    expect(timeline.locator(".tl-total")).to_contain_text("1 period, ")
    segment = segments(page).first
    assert "census-2026" in (segment.get_attribute("aria-label") or "")

    # Hover: when, how long, which import jobs; the tooltip stays inside the bar.
    expect(tooltip(page)).to_be_hidden()
    segment.hover()
    expect(tooltip(page)).to_be_visible()
    expect(tooltip(page).locator(".slugs")).to_have_text("census-2026")
    expect(tooltip(page).locator(".when")).to_contain_text("\u2013")
    tip_box = tooltip(page).bounding_box()
    track_box = page.locator("system-status .tl-track").bounding_box()
    assert tip_box is not None and track_box is not None
    assert tip_box["x"] >= track_box["x"] - 1
    assert tip_box["x"] + tip_box["width"] <= track_box["x"] + track_box["width"] + 1
    tab.screenshot("timeline-hover")

    # Keyboard: the segment follows the Details button in the tab order.
    page.mouse.move(0, 0)
    expect(tooltip(page)).to_be_hidden()
    page.get_by_role("button", name="Details").focus()
    page.keyboard.press("Tab")
    expect(tooltip(page)).to_be_visible()
    expect(tooltip(page).locator(".slugs")).to_have_text("census-2026")
    page.keyboard.press("Shift+Tab")
    expect(tooltip(page)).to_be_hidden()

    expect(usual(page)).to_be_hidden()  # one period: too few to say what is usual


def test_the_usual_duration_appears_once_there_are_three_periods(
    relay: Relay, db_dsn: str, tab: Tab
) -> None:
    page = tab.page
    run_sql(db_dsn, past_period(3, 4, "{census-2025}"), past_period(5, 5))
    page.goto(url_of(relay) + "/")
    expect_badge(page, "System stable")
    expect(segments(page)).to_have_count(2)
    expect(usual(page)).to_be_hidden()
    expect(page.locator("system-status .tl-total")).to_have_text("2 periods, 9 min in all")

    # Oldest first, each where it happened on the bar from 24 h ago to now.
    track = page.locator("system-status .tl-track").bounding_box()
    older, newer = segments(page).nth(0).bounding_box(), segments(page).nth(1).bounding_box()
    assert track is not None and older is not None and newer is not None
    assert (older["x"] - track["x"]) / track["width"] == pytest.approx(19 / 24, abs=0.01)
    assert (newer["x"] - track["x"]) / track["width"] == pytest.approx(21 / 24, abs=0.01)
    assert 3 <= newer["width"] <= 8  # 4 min of 24 h: a few pixels, still visible
    # Arrow keys move between the segments.
    segments(page).nth(1).focus()
    expect(tooltip(page).locator(".slugs")).to_have_text("census-2025")
    page.keyboard.press("ArrowLeft")
    expect(tooltip(page).locator(".slugs")).to_have_count(0)  # no import jobs in that one
    expect(tooltip(page).locator(".when")).to_contain_text("5 min")

    # A third period, two days ago: counted for the 7 days, not drawn on the last 24 hours.
    run_sql(db_dsn, past_period(48, 7))
    page.reload()
    expect_badge(page, "System stable")
    expect(usual(page)).to_have_text(
        "Processing usually takes about 5 min (90% within 7 min), from the last 3 periods."
    )
    expect(segments(page)).to_have_count(2)
    tab.screenshot("timeline-usual")

    # A period that ends while the page is open: fetched again on the change of state.
    run_sql(db_dsn, START_JOB)
    expect_badge(page, "Processing data")
    run_sql(db_dsn, FINISH_JOB)
    expect_badge(page, "System stable")
    expect(usual(page)).to_have_text(
        "Processing usually takes about 5 min (90% within 6 min), from the last 4 periods."
    )
    expect(segments(page)).to_have_count(3)


def test_an_unavailable_history_hides_the_timeline_quietly(
    relay: Relay, db_dsn: str, tab: Tab
) -> None:
    page = tab.page

    def unavailable(route: Route) -> None:
        route.fulfill(
            status=503,
            content_type="application/json",
            headers={"Retry-After": "5"},
            body=json.dumps({"error": "the history is unavailable"}),
        )

    page.route(lambda url: HISTORY in url, unavailable)
    page.goto(url_of(relay) + "/")
    expect_badge(page, "System stable")
    page.wait_for_function(
        "() => performance.getEntriesByType('resource')"
        ".some((entry) => entry.name.includes('/api/system-status/history'))"
    )
    expect(page.locator("system-status .timeline")).to_be_hidden()
    assert tab.requested(HISTORY) == 1

    # It comes back with the next change of state once the relay answers again.
    page.unroute_all()
    run_sql(db_dsn, START_JOB)
    expect_badge(page, "Processing data")
    expect(page.locator("system-status .timeline")).to_be_visible()
    expect(page.locator("system-status .seg[data-open]")).to_have_count(1)

    # A badge without the attribute (embedded in another page) never asks for the history.
    asked = tab.requested(HISTORY)
    page.evaluate("document.body.append(document.createElement('system-status'))")
    page.wait_for_function(
        "() => document.querySelectorAll('system-status')[1].state === 'processing'"
    )
    expect(page.locator("system-status").nth(1).locator(".timeline")).to_be_hidden()
    assert tab.requested(HISTORY) == asked


ETA_DETAILS = {
    "import_jobs": [],
    "analytics_tasks": [],
    "system_stable": False,
    "eta": {"low_s": 600.0, "high_s": 900.0, "source": "the last 5 periods"},
    "activities": {
        "importing": {
            "label": "Importing data",
            "active": True,
            "eta": {"low_s": 240.0, "high_s": 360.0, "source": "progress over the last 60 s"},
            "items": [
                {
                    "id": 1,
                    "slug": "census-2026",
                    "state": "processing_data",
                    "total_rows": 1000,
                    "imported_rows": 250,
                    "progress_pct": 25,
                    "eta": {"low_s": 290.0, "high_s": 310.0, "source": "its progress"},
                },
                {
                    "id": 2,
                    "slug": "register-q4",
                    "state": "analysing_data",
                    "total_rows": 400,
                    "imported_rows": 100,
                    "eta": None,
                },
                {
                    "id": 3,
                    "slug": "groups-2026",
                    "state": "preparing_data",
                    "total_rows": 10,
                    "imported_rows": 1,
                    "eta": {"low_s": 45.0, "high_s": 90.0, "source": "its progress"},
                },
            ],
            "total": 3,
        },
        "analytics": {
            "label": "Deriving statistics",
            "active": True,
            "items": [
                {
                    "id": 9,
                    "command": "derive_reports",
                    "state": "pending",
                    "eta": {"low_s": 3000.0, "high_s": 5400.0, "source": "history"},
                }
            ],
        },
    },
}


def test_details_show_the_time_left_where_the_relay_estimates_it(relay: Relay, tab: Tab) -> None:
    page = tab.page
    answer_details_with(page, ETA_DETAILS)
    page.goto(url_of(relay) + "/")
    expect_badge(page, "System stable")
    page.get_by_role("button", name="Details").click()
    importing = page.locator("system-status section[data-activity=importing]")
    analytics = page.locator("system-status section[data-activity=analytics]")

    activity_eta = importing.locator(":scope > .eta")
    expect(activity_eta).to_have_text("about 4\u20136 min left")
    expect(activity_eta).to_have_attribute("title", "Estimated from progress over the last 60 s")
    jobs = importing.locator("li[data-job-id]")
    expect(jobs.nth(0).locator(".eta")).to_have_text("about 5 min left")  # rounds to the same
    expect(jobs.nth(0).locator(".rows")).to_have_text("250 of 1,000 rows (25%)")
    expect(jobs.nth(1).locator(".eta")).to_have_count(0)  # null: nothing
    expect(jobs.nth(2).locator(".eta")).to_have_text("about 45 s \u2013 2 min left")
    expect(analytics.locator(":scope > .eta")).to_have_count(0)  # absent: nothing
    expect(analytics.locator("li .eta")).to_have_text("about 50 min \u2013 1 h 30 min left")
    expect(page.locator("system-status .eta.overall")).to_have_text(
        "All processing: about 10\u201315 min left"
    )
    tab.screenshot("details-eta")
