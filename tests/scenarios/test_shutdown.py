"""Shutdown: clients are told to come back, streams end, nothing hangs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from relay.app import Relay
from relay.shutdown import cut_off, run_step
from tests.ops_support import PROCESSING
from tests.support import base_url, eventually, execute, relay_config, sse_connect
from tests.webhook_receiver import Answer, Receiver, hook


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


async def test_shutdown_keeps_its_deadline_with_a_hung_webhook_and_1000_streams(
    db_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    streams = 1000
    async with Receiver(*[Answer(hang=True)] * 20) as receiver:
        config = relay_config(
            db_dsn,
            http={"shutdown_timeout": "3s", "max_clients": streams + 10},
            webhooks=[hook("ci", receiver.url, timeout="60s")],
            state_directory=str(tmp_path),
        )
        relay = Relay(config)
        await relay.start()
        sockets: list[asyncio.StreamWriter] = []
        try:
            await eventually(lambda: relay.leadership.is_leader)
            await execute(db_dsn, PROCESSING)
            await receiver.wait_for(1)  # a delivery is on the wire and will never be answered
            for _ in range(streams // 100):
                sockets += await asyncio.gather(*(_open_stream(relay) for _ in range(100)))
            await eventually(lambda: len(relay.hub) == streams, timeout=30)

            started = time.monotonic()
            await relay.aclose()
            elapsed = time.monotonic() - started
        finally:
            await relay.aclose()
            for writer in sockets:
                writer.close()
    # The hung delivery used up the deadline; nothing after it got the whole timeout again.
    assert elapsed < relay.config.http.shutdown_timeout + 1.0, elapsed
    stopped = [line for line in capsys.readouterr().out.splitlines() if "webhooks_stopped" in line]
    assert stopped and "'ci'" in stopped[-1], "the undelivered change is kept as owed"


async def _open_stream(relay: Relay) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"GET /api/system-status/live HTTP/1.1\r\nHost: relay\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    return writer


async def test_a_failing_or_overrunning_shutdown_step_does_not_skip_the_next(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ran: list[str] = []

    async def failing() -> None:
        ran.append("failing")
        raise OSError("disk gone")

    async def hanging() -> None:
        ran.append("hanging")
        await asyncio.Event().wait()

    async def last() -> None:
        ran.append("last")

    started = time.monotonic()
    await run_step("failing", cut_off(failing), 1.0)
    await run_step("hanging", cut_off(hanging), 0.2)
    await run_step("last", cut_off(last), 1.0)
    assert ran == ["failing", "hanging", "last"]
    assert time.monotonic() - started < 5.0, "the hanging step was cut off"
    output = capsys.readouterr().out
    assert "shutdown_step_failed" in output and "disk gone" in output
    assert "shutdown_step_overran" in output and "step=hanging" in output
