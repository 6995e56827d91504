"""The SVG badge in real headless Chromium: each state's badge, loaded in an <img> from a relay
on a real PostgreSQL (its signals read by its own reader), renders at the width the relay
computed; the width table agrees with Chromium's own DejaVu Sans.

With ``RELAY_BADGE_SCREENSHOT=1`` the test also writes docs/badge.png (else the picture goes
to test-artifacts/browser/badges.png)::

    RELAY_BADGE_SCREENSHOT=1 .venv/bin/pytest -q tests/browser/test_badge_browser.py
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

from playwright.sync_api import Browser

from relay.app import Relay
from relay.config.profiles import load_profile
from relay.http.badge import text_width
from relay.state.stability import Snapshot, State
from tests.browser.helpers import (
    ARTIFACTS,
    browser_config,
    relay_in_background,
    relay_of_activities,
    run_sql,
    tab_in,
    url_of,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

DOCS = Path(__file__).resolve().parents[2] / "docs"
SEED = load_profile("seed").activities
# An import job whose slug starts with "stuck" is stalled; imports running past 2 s are overdue.
IMPORTING = {**SEED[0].model_dump(), "stalled": "t.slug LIKE 'stuck%'", "overdue_after": "2s"}
ACTIVITIES = [IMPORTING, SEED[1].model_dump()]
ANALYTICS = "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'processing')"
MOVING = "INSERT INTO public.import_job (slug, state) VALUES ('moving-1', 'processing_data')"
STUCK = "INSERT INTO public.import_job (slug, state) VALUES ('stuck-1', 'processing_data')"

PAGE = """<!doctype html><html lang="en"><meta charset="utf-8"><title>badges</title>
<style>
  body { margin: 0; background: #fff; font: 13px/1.4 "DejaVu Sans", sans-serif; color: #374151; }
  #shot { display: inline-grid; grid-template-columns: auto auto; gap: 10px 18px;
          align-items: center; padding: 16px 20px; }
  img { display: block; }
</style><div id="shot"></div>"""

# Adds a row (the badge, and the path it came from) and resolves once the image is decoded:
# its natural size, or an error if it did not render.
ADD_ROW = """async ([src, caption]) => {
  const img = new Image();
  img.alt = caption;
  img.src = src;
  const code = document.createElement("code");
  code.textContent = caption;
  document.getElementById("shot").append(img, code);
  await img.decode();
  return [img.complete, img.naturalWidth, img.naturalHeight];
}"""

MEASURE = """(texts) => {
  const context = document.createElement("canvas").getContext("2d");
  context.font = '11px "DejaVu Sans"';
  return texts.map((text) => context.measureText(text).width);
}"""


@pytest.fixture
def relay(db_dsn: str) -> Iterator[Relay]:
    signals = {"interval": "0.5s", "read_timeout": "0.4s"}
    with relay_of_activities(db_dsn, ACTIVITIES, signals) as running:
        yield running


@pytest.fixture
def relay_without_database() -> Iterator[Relay]:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = browser_config(f"postgresql://nobody@127.0.0.1:{port}/nothing")
    with relay_in_background(config) as running:
        yield running


def svg_width(browser: Browser, url: str) -> int:
    """The width attribute of the SVG at ``url``, as the relay computed it."""
    response = browser.new_context().request.get(url)
    try:
        assert response.headers["content-type"].startswith("image/svg+xml")
        text = response.text()
    finally:
        response.dispose()
    return int(text.split('width="', 1)[1].split('"', 1)[0])


def test_each_states_badge_renders_in_an_img_at_its_computed_width(
    browser: Browser, relay: Relay, relay_without_database: Relay, db_dsn: str
) -> None:
    # Twice the pixels, for a sharp picture in the docs.
    tab = tab_in(browser.new_context(device_scale_factor=2, locale="en-US"))
    page = tab.page
    page.set_content(PAGE)
    base = url_of(relay)

    def row(path: str, base: str = base, note: str = "") -> None:
        complete, width, height = page.evaluate(ADD_ROW, [base + path, path + note])
        assert complete and width > 0 and height == 20, path
        assert width == svg_width(browser, base + path), path

    def until(check: Callable[[Snapshot], bool], what: str) -> None:
        wait_until(lambda: check(relay.stability.current), what, timeout=15, page=page)

    until(lambda s: s.state is State.STABLE, "stable")
    row("/api/system-status/badge.svg")

    run_sql(db_dsn, ANALYTICS)
    until(lambda s: dict(s.activities)["analytics"] is True, "analytics running")
    row("/api/system-status/badge.svg?activity=analytics")

    run_sql(db_dsn, MOVING)
    until(lambda s: [x.activity for x in s.overdue] == ["importing"], "imports overdue")
    row("/api/system-status/badge.svg?activity=importing")

    run_sql(db_dsn, STUCK)
    until(lambda s: [x.activity for x in s.stalled] == ["importing"], "imports stalled")
    row("/api/system-status/badge.svg?label=warehouse")

    assert relay_without_database.stability.current.state is State.UNKNOWN
    row("/api/system-status/badge.svg", url_of(relay_without_database), "  (database down)")

    drawn = page.evaluate("[...document.images].map((img) => img.alt)")
    assert len(drawn) == 5
    assert tab.problems == []

    target = DOCS / "badge.png" if os.environ.get("RELAY_BADGE_SCREENSHOT") else None
    if target is None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        target = ARTIFACTS / "badges.png"
    page.locator("#shot").screenshot(path=str(target))
    assert target.stat().st_size > 0
    page.context.close()


def test_the_width_table_agrees_with_chromiums_dejavu_sans(browser: Browser) -> None:
    tab = tab_in(browser.new_context())
    texts = [
        "stable",
        "processing overdue",
        "processing stalled",
        "unknown",
        "status",
        "Warehouse: ÉTÉ 2026 (q4) #12",
        "WWWWWWWWWW iiiiiiiiii",
    ]
    measured = tab.page.evaluate(MEASURE, texts)
    for text, width in zip(texts, measured, strict=True):
        assert abs(text_width(text) - width) <= 0.5 + 0.01 * width, (text, width)
    tab.page.context.close()
