"""The fault suite's fixtures: every log line the relay prints is kept and searched for secrets.

The secrets are deliberately NOT given to the log redactor here, so the check proves that no
code path exercised by the suite logs them, not merely that the redactor masks them.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import psycopg
import pytest
import structlog

from relay import logs
from relay.config import LoggingConfig

DSN_PASSWORD = "Fault-Suite-Pw-9f8e7d6c"
TOKEN = "fault-suite-token-0a1b2c3d4e5f"
SECRETS = (DSN_PASSWORD, TOKEN)


@pytest.fixture(scope="module")
def relay_output() -> Iterator[io.StringIO]:
    """The relay's log lines of one module's tests. Module-scoped, and undone after it: the
    tests of other modules that share this process (make test runs several files per process)
    read the relay's lines on standard output."""
    buffer = io.StringIO()
    logs.configure(LoggingConfig(format="json", level="debug"), secrets=(), stream=buffer)
    yield buffer
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
    text = buffer.getvalue()
    assert text, "the relay printed nothing: the capture is broken"
    for secret in SECRETS:
        assert secret not in text, "a secret reached the logs"


@pytest.fixture
def secret_dsn(db_dsn: str, relay_output: io.StringIO) -> str:
    """The test database's DSN with a password (the embedded server trusts, and ignores it)."""
    return psycopg.conninfo.make_conninfo(db_dsn, password=DSN_PASSWORD)
