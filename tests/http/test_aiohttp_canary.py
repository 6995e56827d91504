"""The three aiohttp behaviours the SSE fast path relies on (relay/fanout/takeover.py), pinned
against a bare aiohttp server. If one of these fails on a new aiohttp, do not widen
TESTED_AIOHTTP: the relay then keeps to the public path there, as it should."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from relay.fanout.takeover import TESTED_AIOHTTP

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _HeldBack(web.StreamResponse):
    _send_headers_immediately = False


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def request(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: canary\r\n\r\n")
    await writer.drain()
    return reader, writer


async def read_until(reader: asyncio.StreamReader, marker: bytes) -> bytes:
    return await asyncio.wait_for(reader.readuntil(marker), timeout=5)


def test_this_aiohttp_is_one_the_canary_covers() -> None:
    series = tuple(int(part) for part in aiohttp.__version__.split(".")[:2])
    assert series in TESTED_AIOHTTP, f"run this canary on aiohttp {aiohttp.__version__}"


async def test_headers_wait_for_the_first_write() -> None:
    """Behaviour 3: the private switch still holds the headers back until the first write."""
    assert hasattr(web.StreamResponse, "_send_headers_immediately")
    release = asyncio.Event()

    async def handler(req: web.Request) -> web.StreamResponse:
        response = _HeldBack(headers={"Content-Type": "text/event-stream"})
        await response.prepare(req)
        await release.wait()
        await response.write(b"data: 1\n\n")
        return response

    async with serving(handler) as port:
        reader, writer = await request(port)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), timeout=0.5)  # nothing before the write
        release.set()
        received = await read_until(reader, b"data: 1\n\n")
        assert received.startswith(b"HTTP/1.1 200") and b"text/event-stream" in received
        writer.close()
        await writer.wait_closed()


async def test_a_cleared_transport_takes_writes_no_more_and_a_lost_connection_ends_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Behaviours 1 and 2: with ``protocol.transport`` cleared, aiohttp's writer no longer
    reaches the socket; ``connection_lost(None)`` then ends the handler without closing the
    socket, which stays ours to write to."""
    kept: list[asyncio.Transport] = []
    outcome: list[str] = []
    ended = asyncio.Event()

    async def handler(req: web.Request) -> web.StreamResponse:
        response = _HeldBack(headers={"Content-Type": "text/event-stream"})
        await response.prepare(req)
        await response.write(b"data: first\n\n")
        transport = req.transport
        assert transport is not None
        kept.append(transport)  # type: ignore[arg-type]
        protocol = req.protocol
        protocol.transport = None
        try:
            await response.write(b"data: through aiohttp\n\n")
        except ConnectionError:
            outcome.append("write refused")
        protocol.connection_lost(None)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            outcome.append("handler cancelled")
            ended.set()
            raise
        outcome.append("handler not cancelled")
        return response

    async with serving(handler) as port:
        reader, writer = await request(port)
        await read_until(reader, b"data: first\n\n")
        await asyncio.wait_for(ended.wait(), timeout=5)
        assert outcome == ["write refused", "handler cancelled"]
        (transport,) = kept
        assert not transport.is_closing(), "aiohttp must leave the socket open"
        transport.write(b"data: ours\n\n")
        received = await read_until(reader, b"data: ours\n\n")
        # What precedes ours is only the first chunk's trailing CRLF.
        assert received == b"\r\ndata: ours\n\n", "aiohttp wrote after the takeover"
        transport.close()
        writer.close()
        await writer.wait_closed()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
