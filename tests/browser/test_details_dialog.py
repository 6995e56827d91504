"""The details dialog agrees with the badge (issue 18): opened the moment the badge flips, in
real headless Chromium, against a real relay (the default 1 s details cache) and PostgreSQL."""

from __future__ import annotations

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

from playwright.sync_api import Page, expect

from tests.browser.helpers import Tab, browser_config, relay_in_background, run_sql, url_of

pytestmark = pytest.mark.timeout(120)

START = (
    "INSERT INTO public.import_job (slug, state) VALUES ('flip', 'processing_data') "
    "ON CONFLICT (slug) DO UPDATE SET state = 'processing_data'"
)
FINISH = "UPDATE public.import_job SET state = 'finished' WHERE slug = 'flip'"
STABLE, PROCESSING = "System stable", "Processing data"
VERDICT = "System stable: all data processing is complete."


def open_details(page: Page) -> dict[str, object]:
    """Opens the dialog, waits until the details are shown, and says what they show."""
    page.get_by_role("button", name="Details").click()
    content = page.locator("system-status dialog .content")
    expect(content.locator("section[data-activity]")).to_have_count(2)
    return {
        "pills": content.locator("section[data-activity] h3 .pill").all_inner_texts(),
        "listed": content.locator("li .name").all_inner_texts(),
        "verdict": content.locator(".verdict.ok").all_inner_texts(),
    }


def agrees(badge: str, shown: dict[str, object]) -> bool:
    if badge == STABLE:
        return shown == {"pills": ["Idle", "Idle"], "listed": [], "verdict": [VERDICT]}
    return shown == {"pills": ["Active", "Idle"], "listed": ["flip"], "verdict": []}


def test_details_opened_as_the_badge_flips_agree_with_it(db_dsn: str, tab: Tab) -> None:
    page = tab.page
    badge = page.locator("system-status .label")
    with relay_in_background(browser_config(db_dsn, details={"cache": "1s"})) as relay:
        page.goto(url_of(relay) + "/")
        expect(badge).to_have_text(STABLE)
        disagreements = []
        for flip in range(10):
            before, after = (STABLE, PROCESSING) if flip % 2 == 0 else (PROCESSING, STABLE)
            # Looked at just before the flip: the relay's cache holds that state.
            shown = open_details(page)
            if not agrees(before, shown):
                disagreements.append((flip, "before", before, shown))
            page.keyboard.press("Escape")
            run_sql(db_dsn, START if after == PROCESSING else FINISH)
            # The moment the badge changes (polled on every frame), the dialog again.
            page.wait_for_function(
                "(text) => document.querySelector('system-status').shadowRoot"
                ".querySelector('.label').textContent === text",
                arg=after,
                polling="raf",
            )
            shown = open_details(page)
            if not agrees(after, shown):
                disagreements.append((flip, "after", after, shown))
            page.keyboard.press("Escape")
        assert disagreements == []
