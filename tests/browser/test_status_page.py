"""The status page and the <system-status> component in real headless Chromium, against a real
relay and a real PostgreSQL. Screenshots land in test-artifacts/browser/."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

from playwright.sync_api import Browser, Locator, Page, Route, expect

from relay.app import Relay
from relay.devtools.embedded import EmbeddedPostgres
from tests.browser.helpers import (
    PHONE,
    Tab,
    answer_details_with,
    browser_config,
    open_tab,
    relay_in_background,
    run_sql,
    url_of,
)

pytestmark = pytest.mark.timeout(60)

START_JOB = (
    "INSERT INTO public.import_job (slug, description, state, priority, total_rows, "
    "imported_rows, import_completed_pct) VALUES ('census-2026', 'Annual census upload', "
    "'processing_data', 1, 1000, 250, 25)"
)
START_TASK = (
    "INSERT INTO worker.tasks (command, state, priority) VALUES ('derive_reports', 'pending', 1)"
)
FINISH_ALL = (
    "UPDATE public.import_job SET state = 'finished'",
    "UPDATE worker.tasks SET state = 'completed'",
)
# The seed profile's activities (relay/config/profiles/seed.yaml), in config order.
IMPORTING = "Importing data"
ANALYTICS = "Deriving statistics"


def label(page: Page) -> str:
    return page.locator("system-status .label").inner_text()


def expect_badge(page: Page, text: str, timeout: float = 10.0) -> None:
    expect(page.locator("system-status .label")).to_have_text(text, timeout=timeout * 1000)


def running(page: Page) -> list[str]:
    return list(page.evaluate("document.querySelector('system-status').running"))


def activity(page: Page, name: str) -> Locator:
    """The details dialog's section for one activity."""
    return page.locator(f"system-status dialog section[data-activity={name}]")


def focused_in_component(page: Page) -> str:
    """The class of the element focused inside the component's shadow root."""
    return str(
        page.evaluate(
            "() => { const host = document.activeElement;"
            " return host && host.shadowRoot && host.shadowRoot.activeElement"
            " ? host.shadowRoot.activeElement.className : ''; }"
        )
    )


def test_page_shows_current_state_under_strict_csp(relay: Relay, tab: Tab) -> None:
    page = tab.page
    response = page.goto(url_of(relay) + "/")
    assert response is not None and response.ok
    assert "script-src 'self'" in response.headers["content-security-policy"]
    expect_badge(page, "System stable")

    host = page.locator("system-status")
    expect(host).to_have_attribute("state", "stable")
    badge = page.locator("system-status .badge")
    expect(badge).to_have_attribute("role", "status")
    expect(badge).to_have_attribute("aria-live", "polite")
    # The adopted stylesheet applies under style-src 'self' (and nothing was refused: see `tab`).
    expect(badge).to_have_css("background-color", "rgb(236, 253, 243)")
    expect(badge).to_have_css("color", "rgb(22, 101, 52)")
    expect(page.locator("system-status .tip")).to_have_text("All data processing is complete")
    assert page.evaluate("document.querySelector('system-status').stable") is True
    assert running(page) == []
    assert page.evaluate("document.querySelector('system-status').activities") == {
        "importing": False,
        "analytics": False,
    }

    # The tooltip of the plain badge: hidden until hovered or focused.
    page.evaluate("document.querySelector('system-status').removeAttribute('inline-hint')")
    tip = page.locator("system-status .tip")
    expect(tip).to_be_hidden()
    badge.hover()
    expect(tip).to_be_visible()
    expect(tip).to_have_attribute("role", "tooltip")
    assert tab.requested("/api/system-status/details") == 0  # nothing fetched before Details
    assert tab.requested("/api/system-status/live") == 1  # one stream per element


def test_commit_that_flips_the_state_changes_the_badge_within_two_seconds(
    relay: Relay, db_dsn: str, tab: Tab
) -> None:
    page = tab.page
    page.goto(url_of(relay) + "/")
    expect_badge(page, "System stable")

    started = time.monotonic()
    run_sql(db_dsn, START_JOB)
    expect_badge(page, "Processing data", timeout=2)
    assert time.monotonic() - started < 2
    expect(page.locator("system-status .badge")).to_have_css("color", "rgb(133, 77, 14)")
    expect(page.locator("system-status .tip")).to_have_text(f"In progress: {IMPORTING}")
    tab.screenshot("processing-desktop")

    started = time.monotonic()
    run_sql(db_dsn, *FINISH_ALL)
    expect_badge(page, "System stable", timeout=2)
    assert time.monotonic() - started < 2


def test_page_names_the_running_activities_and_stops_naming_them_when_stable(
    relay: Relay, db_dsn: str, tab: Tab
) -> None:
    page = tab.page
    page.goto(url_of(relay) + "/")
    expect_badge(page, "System stable")
    seen_before = len(tab.running_seen())  # connecting (and unknown, had it come first)
    hint = page.locator("system-status .tip")
    badge = page.locator("system-status .badge")

    run_sql(db_dsn, START_JOB)
    expect(hint).to_have_text(f"In progress: {IMPORTING}")
    expect_badge(page, "Processing data")
    assert running(page) == [IMPORTING]
    # The sentence under the badge describes it to assistive technology.
    expect(badge).to_have_attribute("aria-describedby", "tip")
    expect(hint).to_be_visible()

    # Another activity starts while the state stays "processing": named too, in config order.
    run_sql(db_dsn, START_TASK)
    expect(hint).to_have_text(f"In progress: {IMPORTING}, {ANALYTICS}")
    assert running(page) == [IMPORTING, ANALYTICS]
    run_sql(db_dsn, "UPDATE public.import_job SET state = 'finished'")
    expect(hint).to_have_text(f"In progress: {ANALYTICS}")
    assert running(page) == [ANALYTICS]
    expect_badge(page, "Processing data")
    tab.screenshot("processing-named")

    run_sql(db_dsn, "UPDATE worker.tasks SET state = 'completed'")
    expect_badge(page, "System stable")
    expect(hint).to_have_text("All data processing is complete")
    assert running(page) == []
    assert page.evaluate("document.querySelector('system-status').activities") == {
        "importing": False,
        "analytics": False,
    }
    # One event per change, a change of what runs included; each state shown once.
    assert tab.history()[-3:] == ["stable", "processing", "stable"]
    assert tab.running_seen()[seen_before:] == [
        [IMPORTING],
        [IMPORTING, ANALYTICS],
        [ANALYTICS],
        [],
    ]


def test_details_show_jobs_and_the_bar_moves_on_progress_notifications(
    relay: Relay, db_dsn: str, tab: Tab
) -> None:
    page = tab.page
    run_sql(db_dsn, START_JOB, START_TASK)
    page.goto(url_of(relay) + "/")
    expect_badge(page, "Processing data")
    assert tab.requested("/api/system-status/details") == 0

    page.get_by_role("button", name="Details").click()
    dialog = page.locator("system-status dialog")
    expect(dialog).to_be_visible()
    # One section per activity, in config order, each with its label and whether it is active.
    expect(dialog.locator("section[data-activity] h3 .title")).to_have_text([IMPORTING, ANALYTICS])
    importing, analytics = activity(page, "importing"), activity(page, "analytics")
    expect(importing.get_by_role("heading")).to_have_text(f"{IMPORTING}Active")
    expect(analytics.locator("h3 .pill")).to_have_text("Active")
    job = importing.locator("li[data-job-id]")
    expect(job.locator(".name")).to_have_text("census-2026")
    expect(job.locator(".desc")).to_have_text("Annual census upload")
    expect(job.locator(".pill")).to_have_text("Processing data")
    expect(job.locator(".rows")).to_have_text("250 of 1,000 rows (25%)")
    bar = job.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuenow", "25")
    task = analytics.locator("li[data-item-id]")
    expect(task.locator(".name")).to_have_text("derive_reports")
    expect(task.locator(".pill")).to_have_text("Pending")
    expect(dialog.locator(".more")).to_have_count(0)  # everything is listed
    assert tab.requested("/api/system-status/details") == 1
    width_before = job.locator(".fill").bounding_box()

    # The demo schema's progress trigger sends NOTIFY import_job_progress; the relay relays it.
    run_sql(db_dsn, "UPDATE public.import_job SET imported_rows = 600, import_completed_pct = 60")
    expect(job.locator(".rows")).to_have_text("600 of 1,000 rows (60%)", timeout=2000)
    expect(bar).to_have_attribute("aria-valuenow", "60")
    width_after = job.locator(".fill").bounding_box()
    assert width_before is not None and width_after is not None
    assert width_after["width"] == pytest.approx(width_before["width"] * 60 / 25, rel=0.05)

    # A notification sent by hand (any producer may use the channel) moves it as well.
    run_sql(
        db_dsn,
        "SELECT pg_notify('import_job_progress', json_build_object('id', id, 'slug', slug, "
        "'state', 'processing_data', 'total_rows', 1000, 'imported_rows', 900, "
        "'progress_pct', 90)::text) FROM public.import_job",
    )
    expect(job.locator(".rows")).to_have_text("900 of 1,000 rows (90%)", timeout=2000)
    assert tab.requested("/api/system-status/details") == 1  # live, not re-fetched
    tab.screenshot("details-desktop")

    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert focused_in_component(page) == "details"

    page.get_by_role("button", name="Details").click()
    expect(dialog).to_be_visible()
    assert tab.requested("/api/system-status/details") == 2  # fetched again on each open
    page.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()
    assert focused_in_component(page) == "details"


def test_details_show_the_empty_state_when_stable(relay: Relay, tab: Tab) -> None:
    page = tab.page
    page.goto(url_of(relay) + "/")
    expect_badge(page, "System stable")
    page.get_by_role("button", name="Details").click()
    content = page.locator("system-status dialog .content")
    expect(content.locator("section[data-activity] h3 .title")).to_have_text([IMPORTING, ANALYTICS])
    expect(content.locator("section[data-activity] h3 .pill")).to_have_text(["Idle", "Idle"])
    expect(content.locator("li")).to_have_count(0)
    expect(content.locator(".verdict")).to_have_text(
        "System stable: all data processing is complete."
    )


def test_details_follow_jobs_that_finish_and_say_how_many_more_there_are(
    db_dsn: str, tab: Tab
) -> None:
    page = tab.page
    run_sql(
        db_dsn,
        START_JOB,
        "INSERT INTO public.import_job (slug, state, priority, total_rows, imported_rows) "
        "VALUES ('register-q4', 'analysing_data', 2, 400, 100), "
        "('groups-2026', 'preparing_data', 3, NULL, NULL)",
    )
    with relay_in_background(browser_config(db_dsn, details={"max_items": 2})) as relay:
        page.goto(url_of(relay) + "/")
        expect_badge(page, "Processing data")
        page.get_by_role("button", name="Details").click()
        importing = activity(page, "importing")
        expect(importing.locator("li[data-job-id] .name")).to_have_text(
            ["census-2026", "register-q4"]
        )
        expect(importing.locator(".more")).to_have_text("and 1 more")
        expect(activity(page, "analytics").locator("h3 .pill")).to_have_text("Idle")
        assert tab.requested("/api/system-status/details") == 1

        # The first job finishes; the activity stays active, so the state does not change:
        # the job's progress event (a new state) makes the dialog ask the relay again.
        run_sql(
            db_dsn, "UPDATE public.import_job SET state = 'finished' WHERE slug = 'census-2026'"
        )
        expect(importing.locator("li[data-job-id] .name")).to_have_text(
            ["register-q4", "groups-2026"], timeout=3000
        )
        expect(importing.locator(".more")).to_have_count(0)
        expect(importing.locator("h3 .pill")).to_have_text("Active")
        # A job without row counts shows no bar.
        expect(
            importing.locator("li[data-job-id]").nth(1).get_by_role("progressbar")
        ).to_be_hidden()

        run_sql(db_dsn, "UPDATE public.import_job SET state = 'finished'")
        expect_badge(page, "System stable")
        expect(importing.locator("h3 .pill")).to_have_text("Idle", timeout=3000)
        expect(importing.locator("li")).to_have_count(0)
        expect(page.locator("system-status .verdict")).to_have_text(
            "System stable: all data processing is complete."
        )


OTHER_PROFILE_DETAILS = {
    "import_jobs": [],
    "analytics_tasks": [],
    "system_stable": False,
    "activities": {
        "jobs": {
            "label": "Running background jobs",
            "active": True,
            "items": [
                {
                    "id": 7,
                    "queue": "default",
                    "task": "send_report",
                    "status": "doing",
                    "scheduled_at": None,
                    "attempts": 2,
                },
                {
                    "id": 8,
                    "queue": "mail",
                    "task": "notify",
                    "status": "todo",
                    "scheduled_at": "2026-12-01T10:00:00Z",
                    "attempts": 0,
                },
            ],
            "total": 12,
        },
        "vacuuming": {"label": "Vacuuming", "active": None},
        "indexing": {"label": "Reindexing", "active": True},
    },
}


def test_details_render_any_profiles_rows_compactly(relay: Relay, tab: Tab) -> None:
    """Rows of other shapes (here procrastinate's), an activity without details, one unknown."""
    page = tab.page
    answer_details_with(page, OTHER_PROFILE_DETAILS)
    page.goto(url_of(relay) + "/")
    expect_badge(page, "System stable")
    page.get_by_role("button", name="Details").click()
    content = page.locator("system-status dialog .content")
    expect(content.locator("section[data-activity] h3")).to_have_text(
        ["Running background jobsActive", "VacuumingUnknown", "ReindexingActive"]
    )
    jobs = activity(page, "jobs").locator("li[data-item-id]")
    expect(jobs.locator(".name")).to_have_text(["send_report", "notify"])
    expect(jobs.locator(".pill")).to_have_text(["Doing", "Todo"])
    expect(jobs.locator(".desc")).to_have_text(
        ["queue: default \u00b7 attempts: 2", "queue: mail \u00b7 attempts: 0"]
    )
    expect(activity(page, "jobs").locator(".more")).to_have_text("and 10 more")
    expect(activity(page, "indexing").locator(".empty")).to_have_text("In progress.")
    expect(activity(page, "vacuuming").locator(".empty")).to_have_count(0)
    expect(content.locator("li[data-job-id]")).to_have_count(0)
    expect(content.locator(".verdict")).to_have_count(0)  # busy, and it says with what
    tab.screenshot("details-other-profile")


def test_an_older_relays_answers_show_as_before(relay: Relay, tab: Tab) -> None:
    """No ``running``/``activities`` in events, no ``activities`` in details: the seed's look."""
    page = tab.page
    event = {"stable": False, "state": "processing", "since": "2026-12-01T09:00:00Z", "seq": 1}
    details = {
        "import_jobs": [
            {
                "id": 3,
                "slug": "census-2026",
                "state": "processing_data",
                "total_rows": 1000,
                "imported_rows": 250,
                "progress_pct": 25,
            }
        ],
        "analytics_tasks": [{"id": 4, "command": "derive_reports", "state": "pending"}],
        "system_stable": False,
    }

    def live(route: Route) -> None:  # one event, then the stream ends: the component reconnects
        route.fulfill(
            status=200, content_type="text/event-stream", body=f"data: {json.dumps(event)}\n\n"
        )

    page.route("**/api/system-status/live", live)
    page.route(
        "**/api/system-status/details",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(details)
        ),
    )
    page.goto(url_of(relay) + "/")
    expect_badge(page, "Processing data")
    expect(page.locator("system-status .tip")).to_have_text("Data is currently being processed")
    assert running(page) == []
    assert page.evaluate("document.querySelector('system-status').activities") is None
    page.get_by_role("button", name="Details").click()
    content = page.locator("system-status dialog .content")
    expect(content.locator("h3")).to_have_text(
        ["Import jobs in progress", "Analytics tasks in progress"]
    )
    expect(content.locator("li[data-job-id] .rows")).to_have_text("250 of 1,000 rows (25%)")
    expect(content.locator("li[data-task-id] .name")).to_have_text("derive_reports")
    expect(content.locator("section[data-activity]")).to_have_count(0)


def test_database_outage_shows_unavailable_and_recovery_brings_the_state_back(
    relay: Relay, db_dsn: str, restartable_pg: EmbeddedPostgres, tab: Tab
) -> None:
    page = tab.page
    page.goto(url_of(relay) + "/")
    expect_badge(page, "System stable")

    restartable_pg.stop(mode="immediate")
    expect_badge(page, "Status unavailable")
    expect(page.locator("system-status")).to_have_attribute("state", "unknown")
    expect(page.locator("system-status .tip")).to_contain_text("cannot reach the database")
    page.get_by_role("button", name="Details").click()
    expect(page.locator("system-status .error")).to_contain_text("Failed to load details")
    tab.screenshot("database-down")
    page.keyboard.press("Escape")

    restartable_pg.start()
    run_sql(db_dsn, START_JOB)
    expect_badge(page, "Processing data", timeout=15)


def test_component_recovers_after_the_relay_restarts(db_dsn: str, tab: Tab) -> None:
    page = tab.page
    with relay_in_background(browser_config(db_dsn)) as first:
        port = first.port
        page.goto(url_of(first) + "/")
        expect_badge(page, "System stable")

    expect_badge(page, "Status unavailable")  # after the grace period, while it retries
    expect(page.locator("system-status")).to_have_attribute("state", "unreachable")
    run_sql(db_dsn, START_JOB)  # the state changes while no relay runs

    with relay_in_background(browser_config(db_dsn, port=port)):
        expect_badge(page, "Processing data", timeout=15)


def test_phone_width_layout_fits_and_the_dialog_fits_the_screen(
    relay: Relay, db_dsn: str, browser: Browser
) -> None:
    phone = open_tab(browser, PHONE)
    try:
        page = phone.page
        run_sql(
            db_dsn,
            START_JOB,
            START_TASK,
            "INSERT INTO public.import_job (slug, state, total_rows, imported_rows) VALUES "
            "('a-very-long-import-job-slug-that-would-overflow-a-phone-screen-2026-11-30', "
            "'analysing_data', 52000, 13000)",
        )
        page.goto(url_of(relay) + "/")
        expect_badge(page, "Processing data")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        phone.screenshot("processing-phone")

        page.get_by_role("button", name="Details").click()
        expect(page.locator("system-status li[data-job-id]")).to_have_count(2)
        box = page.locator("system-status dialog").bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        for part in ("li[data-job-id]", ".pill", ".rows", ".bar"):  # nothing sticks out
            for inner in page.locator(f"system-status dialog {part}").all():
                inside = inner.bounding_box()
                assert inside is not None
                assert inside["x"] + inside["width"] <= box["x"] + box["width"], part
        expect(page.locator("system-status li[data-job-id] .rows").nth(1)).to_have_text(
            "13,000 of 52,000 rows (25%)"
        )
        phone.screenshot("details-phone")
        assert phone.problems == []
    finally:
        phone.page.context.close()
