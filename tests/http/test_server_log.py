"""A malformed request is logged as a fact, never with the raw bytes a client sent (which can
carry a token): relay/http/serverlog.py, put in place by the relay itself."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import structlog

from relay import logs
from relay.config import LoggingConfig
from tests.support import eventually, relay_config, running_relay

TOKEN = "malformed-request-token-5e4d3c2b1a"


async def test_a_malformed_request_is_logged_without_its_bytes(db_dsn: str) -> None:
    buffer = io.StringIO()
    # The token is not given to the redactor: the line must never hold it in the first place.
    logs.configure(LoggingConfig(format="json"), [], stream=buffer)
    try:
        async with running_relay(relay_config(db_dsn)) as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            try:
                # A header line without a colon: aiohttp refuses it and logs the line.
                head = f"GET /healthz HTTP/1.1\r\nHost: relay\r\nAuthorization Bearer {TOKEN}\r\n"
                writer.write(f"{head}\r\n".encode())
                await writer.drain()
                status = await asyncio.wait_for(reader.readline(), 10)
            finally:
                writer.close()
                await writer.wait_closed()
            assert status.split(b" ")[1] == b"400", status
            await eventually(lambda: "malformed_http_request" in buffer.getvalue())
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    text = buffer.getvalue()
    assert TOKEN not in text
    lines = [json.loads(line) for line in text.splitlines()]
    malformed = [line for line in lines if "malformed_http_request" in line["event"]]
    assert malformed[0]["event"] == "malformed_http_request status=400", malformed
    assert malformed[0]["level"] == "info" and "exception" not in malformed[0]
