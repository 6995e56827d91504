"""Logging: secrets are masked whatever the renderer does to them."""

from __future__ import annotations

import io
import json
import logging

import structlog

from relay import logs
from relay.config import LoggingConfig

SECRET = 'pä"ss\\word-0123'


def test_secrets_are_masked_even_when_json_escapes_them() -> None:
    buffer = io.StringIO()
    logs.configure(LoggingConfig(format="json"), [SECRET], stream=buffer)
    try:
        logs.get_logger("t").warning("event", detail=f"dsn password={SECRET}", nested=[SECRET])
        logging.getLogger("aiohttp.server").error("stdlib %s", SECRET)
    finally:
        structlog.reset_defaults()
    text = buffer.getvalue()
    assert SECRET not in text
    assert json.dumps(SECRET)[1:-1] not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["detail"] == "dsn password=***"
    assert lines[0]["nested"] == ["***"]
    assert lines[1]["event"] == "stdlib ***"


def test_stdlib_tracebacks_are_rendered_as_text() -> None:
    buffer = io.StringIO()
    logs.configure(LoggingConfig(format="json"), [], stream=buffer)
    try:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("psycopg").exception("failed")
    finally:
        structlog.reset_defaults()
    line = json.loads(buffer.getvalue().splitlines()[0])
    assert "RuntimeError: boom" in line["exception"]
