"""The status page and the <system-status> component in real headless Chromium, against a real
relay and a real PostgreSQL. Screenshots land in test-artifacts/browser/."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

from playwright.sync_api import Browser, Page, expect

from relay.app import Relay
from relay.embedded import EmbeddedPostgres
from tests.browser.helpers import (
    PHONE,
    Tab,
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


def label(page: Page) -> str:
    return page.locator("system-status .label").inner_text()


def expect_badge(page: Page, text: str, timeout: float = 10.0) -> None:
    expect(page.locator("system-status .label")).to_have_text(text, timeout=timeout * 1000)


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
    expect(page.locator("system-status .tip")).to_have_text("Data is currently being processed")
    tab.screenshot("processing-desktop")

    started = time.monotonic()
    run_sql(db_dsn, *FINISH_ALL)
    expect_badge(page, "System stable", timeout=2)
    assert time.monotonic() - started < 2


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
    job = page.locator("system-status li[data-job-id]")
    expect(job.locator(".name")).to_have_text("census-2026")
    expect(job.locator(".desc")).to_have_text("Annual census upload")
    expect(job.locator(".pill")).to_have_text("Processing data")
    expect(job.locator(".rows")).to_have_text("250 of 1,000 rows (25%)")
    bar = job.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuenow", "25")
    expect(page.locator("system-status li[data-task-id] .name")).to_have_text("derive_reports")
    expect(page.locator("system-status li[data-task-id] .pill")).to_have_text("Pending")
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
    expect(content.locator(".empty")).to_have_text(
        ["No active import jobs.", "No active analytics tasks."]
    )
    expect(content.locator(".verdict")).to_have_text(
        "System stable: all data processing is complete."
    )


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
