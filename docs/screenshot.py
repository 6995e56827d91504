"""Regenerates docs/status-page.png: the status page, and the same page with Details open.

    .venv/bin/python docs/screenshot.py [OUTPUT.png]        (or: make screenshot)

A demo-like setup, all on this machine: an embedded PostgreSQL with the demo schema, a relay
on a loopback port, two import jobs and two analytics tasks in progress (so both of the seed's
activities, "Importing data" and "Deriving statistics", are running), and Debian's headless
Chromium (``/usr/bin/chromium`` or ``$RELAY_CHROMIUM``) driven by Playwright.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from pathlib import Path

import psycopg
from playwright.async_api import ViewportSize, async_playwright

from relay.app import Relay
from relay.config import Config
from relay.devtools.embedded import EmbeddedPostgres
from relay.source.install import install

OUTPUT = Path(__file__).resolve().parent / "status-page.png"
CHROMIUM = os.environ.get("RELAY_CHROMIUM", "/usr/bin/chromium")
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
WORK_IN_PROGRESS = (
    "INSERT INTO public.import_job (slug, description, state, priority, total_rows, "
    "imported_rows, import_completed_pct, created_at) VALUES "
    "('business-register-2026-q4', 'Quarterly upload of legal units', 'processing_data', 1, "
    "250000, 184500, 73.8, now() - interval '25 minutes'), "
    "('enterprise-groups-2026', 'Enterprise groups from the tax authority', 'processing_data', 2, "
    "52000, 9360, 18, now() - interval '6 minutes')",
    "INSERT INTO worker.tasks (command, state, priority, created_at) VALUES "
    "('derive_statistical_unit', 'processing', 1, now() - interval '3 minutes'), "
    "('derive_reports', 'pending', 2, now() - interval '3 minutes')",
)


SHOT: ViewportSize = {"width": 820, "height": 680}
GAP = 16
SCALE = 1.25


def _side_by_side(*images: bytes) -> str:
    cells = "".join(
        f'<img alt="" src="data:image/png;base64,{base64.b64encode(image).decode()}">'
        for image in images
    )
    return (
        "<!doctype html><style>"
        f"body {{ margin: 0; padding: {GAP}px; display: flex; gap: {GAP}px; background: #e5e7eb; }}"
        f"img {{ width: {SHOT['width']}px; height: {SHOT['height']}px; border-radius: 10px;"
        " box-shadow: 0 1px 3px rgba(0,0,0,.15); }"
        f"</style><body>{cells}</body>"
    )


async def shoot(dsn: str, output: Path = OUTPUT) -> None:
    await install(dsn, demo_schema=True)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for statement in WORK_IN_PROGRESS:
            await conn.execute(statement)
    config = Config.model_validate(
        {
            "database": {"dsn": dsn},
            "http": {"listen": "127.0.0.1:0"},
            "channels": ["import_job_progress"],
        }
    )
    relay = Relay(config)
    await relay.start()
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = await browser.new_context(
                viewport=SHOT,
                device_scale_factor=SCALE,
                locale="en-US",
                reduced_motion="reduce",
            )
            page = await context.new_page()
            await page.goto(f"http://127.0.0.1:{relay.port}/")
            label = page.locator("system-status .label")
            await label.filter(has_text="Processing data").wait_for()
            # Both activities named under the badge (the second may follow the first).
            hint = page.locator("system-status .tip")
            await hint.filter(has_text="Deriving statistics").wait_for()
            await page.mouse.move(0, 0)
            status = await page.screenshot()
            await page.get_by_role("button", name="Details").click()
            # Loaded: one section per activity, each with its rows.
            activity = page.locator("system-status section[data-activity]")
            await activity.filter(has=page.locator("li")).nth(1).wait_for()
            # ...and its queue figures, from the relay's first signals read.
            await activity.filter(has=page.locator(".figures")).nth(1).wait_for()
            details = await page.screenshot()
            # Side by side, laid out by the browser itself: no imaging library needed.
            side_by_side = await browser.new_page(
                viewport={"width": 2 * SHOT["width"] + 3 * GAP, "height": SHOT["height"] + 2 * GAP},
                device_scale_factor=SCALE,
            )
            await side_by_side.set_content(_side_by_side(status, details))
            await side_by_side.screenshot(path=str(output))
            await browser.close()
    finally:
        await relay.aclose()


def main() -> int:
    if not Path(CHROMIUM).exists():
        print(f"no Chromium at {CHROMIUM}: apt-get install chromium", file=sys.stderr)
        return 1
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    with EmbeddedPostgres() as server:
        asyncio.run(shoot(server.create_database("screenshot"), output))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
