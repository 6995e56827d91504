"""Real-browser fixtures: one headless Chromium per module, driven by Playwright's sync API.

Chromium is Debian's (``/usr/bin/chromium``, or ``$RELAY_CHROMIUM``), never a browser that
Playwright downloads. Without it, or without the ``playwright`` package, every browser test
skips with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from relay.app import Relay
from relay.devtools.embedded import EmbeddedPostgres
from relay.source.install import install
from tests.browser.helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    Tab,
    browser_config,
    open_tab,
    relay_in_background,
    run_async,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser


# One browser per module, not per session: while Playwright's sync API is started, its loop is
# this thread's running loop, and the async tests of the other modules could not run.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium) "
            "or set RELAY_CHROMIUM"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is missing: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    """A fresh desktop-sized tab; the test fails on any CSP violation or script error."""
    opened = open_tab(browser)
    yield opened
    opened.page.context.close()
    assert opened.problems == []


@pytest.fixture
def relay(db_dsn: str) -> Iterator[Relay]:
    """A relay on its own thread and loop, against the test's database."""
    with relay_in_background(browser_config(db_dsn)) as running:
        yield running


@pytest.fixture
def db_dsn(pg_server: EmbeddedPostgres | None, pg_admin_dsn: str) -> Iterator[str]:
    """The suite's fresh database, made synchronously: while Playwright's sync API drives the
    browser, its event loop is the running loop of this thread, so async fixtures cannot run."""
    dbname = f"test_browser_{uuid.uuid4().hex}"
    name = sql.Identifier(dbname)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
    dsn = psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=dbname)
    run_async(install(dsn, demo_schema=True))
    yield dsn
    if pg_server is not None:
        pg_server.start()  # in case the test stopped it
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))
