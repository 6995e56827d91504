"""Servers the listener refuses, and the probes that find them (never a wrong or late state;
``refusal`` says why, ``/readyz`` stays 503):

- a standby or read-only server (LISTEN needs the primary): retried every second or so, not
  with the climbing backoff, so a promotion is followed promptly (docs/failover.md);
- a pooler that cannot carry LISTEN (transaction or statement pooling, docs/poolers.md):
  detected when the backend's pid differs from the one the connection was given (a pooler
  sits in between) and a notification sent from another connection does not arrive
  (:func:`check_delivery`), or when the channels vanish after LISTEN (the listener's read).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from psycopg import AsyncConnection, sql

from relay.config import DatabaseConfig
from relay.errors import DatabaseReadOnly, PoolerRefused
from relay.logs import get_logger
from relay.source import pg

log = get_logger("relay.source.refusals")
Deadline = Callable[[AsyncConnection[Any], Coroutine[Any, Any, Any]], Awaitable[Any]]

# Which backend answers, and whether it is a standby.
SERVER = "SELECT pg_backend_pid(), pg_is_in_recovery()"

POOLER_FIX = (
    "point the relay at PostgreSQL directly or at a session-pooling pool (PgBouncer: "
    "pool_mode = session for the relay's database or user); see docs/poolers.md"
)
STANDBY_FIX = (
    "point the relay at the primary: a multi-host DSN with target_session_attrs=read-write "
    "follows a promotion; see docs/failover.md"
)


class Refusals:
    """Why the relay refuses the server it reached, with the fix; ``refusal`` is None while it
    reports. ``refusal_kind``: "pooler" or "standby". Each kind is logged once in a row."""

    def __init__(self) -> None:
        self.refusal: str | None = None
        self.refusal_kind: str | None = None

    def refused(self, error: BaseException) -> None:
        """Record (and log, once per kind) why the relay refuses the server it reached."""
        if isinstance(error, PoolerRefused):
            kind, fix, level = "pooler", POOLER_FIX, log.error
        elif isinstance(error, DatabaseReadOnly) or pg.is_read_only(error):
            # Also every failover's first seconds: a warning, and retried briefly.
            kind, fix, level = "standby", STANDBY_FIX, log.warning
        else:
            self.clear()  # another cause now: not a refusal
            return
        reason = pg.describe_error(error)
        if kind != self.refusal_kind:
            level("database_refused", kind=kind, reason=reason, fix=fix)
        self.refusal_kind, self.refusal = kind, f"{reason}; fix: {fix}"

    def clear(self) -> None:
        self.refusal = self.refusal_kind = None


async def server(conn: AsyncConnection[Any], deadline: Deadline) -> int:
    """The backend's pid; a standby is refused (``DatabaseReadOnly``)."""
    cursor = await deadline(conn, conn.execute(SERVER))
    row = await cursor.fetchone()
    assert row is not None
    if row[1]:
        raise DatabaseReadOnly(
            "the server is a standby (in recovery): LISTEN and the hold need the primary"
        )
    return int(row[0])


async def check_delivery(
    conn: AsyncConnection[Any],
    settings: DatabaseConfig,
    *,
    listen: Callable[[AsyncConnection[Any], Sequence[str]], Awaitable[None]],
    dispatch: Callable[[str, str], object],
    deadline: Deadline,
    connector: pg.Connector = pg.DEFAULT_CONNECTOR,
) -> None:
    """Behind a pooler: a notification sent from another connection must reach this one
    while it is idle. Under transaction pooling the backend that LISTENs is back in the
    pool by then and the pooler drops what it sends (measured with PgBouncer 1.18)."""
    channel = f"stability_relay_probe_{secrets.token_hex(8)}"
    token = secrets.token_hex(8)
    await listen(conn, [channel])
    sender = await connector.connect(settings, f"{settings.application_name} (pooler check)")
    try:
        await pg.with_deadline(
            sender,
            sender.execute("SELECT pg_notify(%s, %s)", [channel, token]),
            settings.heartbeat_timeout,
            name="relay-listener-pooler-check",
        )
    finally:
        await sender.close()
    until = time.monotonic() + settings.heartbeat_timeout
    received = False
    while not received and (left := until - time.monotonic()) > 0:
        async with contextlib.aclosing(conn.notifies(timeout=left, stop_after=1)) as batch:
            async for note in batch:
                if note.channel == channel:
                    received = note.payload == token
                else:  # the read that follows answers any hint
                    dispatch(note.channel, note.payload)
    await deadline(conn, conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel))))
    if not received:
        raise PoolerRefused(
            "notifications do not reach the relay: a pooler in transaction (or statement) "
            "pooling mode sits between it and PostgreSQL, and LISTEN needs a session of "
            f"its own (a notification sent from another connection did not arrive within "
            f"{settings.heartbeat_timeout:g}s)"
        )


__all__ = ["POOLER_FIX", "STANDBY_FIX", "Refusals", "check_delivery", "server"]
