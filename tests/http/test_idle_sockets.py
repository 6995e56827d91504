"""Sockets that never finish a request are closed; the loop's own error reports are folded.

Found from outside (issue 14): half-sent request lines and silent sockets held file
descriptors for an hour, and at the open-file limit asyncio reported every failed accept().
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from relay.http import loopguard
from relay.http.loopguard import LoopErrors
from tests.support import eventually, relay_config, running_relay


async def test_silent_and_slow_sockets_are_closed_after_the_idle_timeout(db_dsn: str) -> None:
    config = relay_config(db_dsn, http={"idle_timeout": "1s"})
    async with running_relay(config) as relay:
        opened = []
        for n in range(60):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            if n % 2:
                writer.write(b"GET /api/system-sta")  # half a request line, never finished
                await writer.drain()
            opened.append((reader, writer))

        async def trickle() -> None:  # one more byte every 0.3 s: still not a request
            for _ in range(10):
                for _reader, writer in opened[1::2]:
                    if not writer.is_closing():
                        writer.write(b"t")
                await asyncio.sleep(0.3)

        dripping = asyncio.create_task(trickle())
        try:
            closed = await asyncio.wait_for(
                asyncio.gather(*(reader.read() for reader, _writer in opened)), timeout=10
            )
        finally:
            dripping.cancel()
        assert all(data in (b"",) or data.startswith(b"HTTP/1.1 4") for data in closed)
        for _reader, writer in opened:
            writer.close()
        # A live stream is not an idle socket: it stays open past the timeout.
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"GET /api/system-status/live HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await eventually(lambda: relay.capacity.open == 1)
        await asyncio.sleep(1.5)
        assert relay.capacity.open == 1
        writer.close()


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def error(self, _event: str, **fields: Any) -> None:
        self.lines.append(fields)


def test_the_loops_own_reports_are_logged_once_per_period_and_all_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = CollectorRegistry()
    counter = Counter("relay_loop_errors", "test", ["kind"], registry=registry)
    now = [0.0]
    guard = LoopErrors(counter, every=10, clock=lambda: now[0])
    log = RecordingLog()
    monkeypatch.setattr(loopguard, "log", log)
    loop = asyncio.new_event_loop()
    try:
        restore = guard.install(loop)
        context = {"message": "socket.accept() out of system resource", "exception": OSError(24)}
        for _ in range(6000):
            loop.call_exception_handler(context)
        now[0] = 11.0
        loop.call_exception_handler(context)
        restore()
        assert loop.get_exception_handler() is None
    finally:
        loop.close()
    kind = {"kind": "socket.accept() out of system resource"}
    assert registry.get_sample_value("relay_loop_errors_total", kind) == 6001
    assert len(log.lines) == 2
    assert log.lines[1]["folded_since_last"] == 5999
    assert "Traceback" not in str(log.lines)
