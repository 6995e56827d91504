"""Shutdown: clients are told to come back, streams end, nothing hangs."""

from __future__ import annotations

import time

import pytest

from relay.app import Relay
from tests.support import base_url, eventually, relay_config, sse_connect


async def test_shutdown_sends_a_final_retry_and_ends_every_stream(db_dsn: str) -> None:
    relay = Relay(relay_config(db_dsn, http={"retry": "2s"}))
    await relay.start()
    closed = False
    try:
        await eventually(lambda: relay.stability.current.stable is True)
        async with sse_connect(base_url(relay) + "/api/system-status/live") as client:
            await client.next_event()
            client.retry = None
            started = time.monotonic()
            await relay.aclose()
            closed = True
            assert time.monotonic() - started < relay.config.http.shutdown_timeout
            with pytest.raises(EOFError):
                await client.next_event(timeout=5)
            assert client.retry == 2000, "the final frame tells the browser when to come back"
    finally:
        if not closed:
            await relay.aclose()


async def test_a_closed_relay_cannot_be_started_again(db_dsn: str) -> None:
    relay = Relay(relay_config(db_dsn))
    await relay.start()
    await relay.aclose()
    await relay.aclose()  # idempotent
    with pytest.raises(RuntimeError):
        await relay.start()
