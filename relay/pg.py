"""PostgreSQL plumbing shared by every connection the relay opens (listener, leader, details).

Every connection detects a dead peer on both ends: client-side TCP keepalives and
``tcp_user_timeout``, and the same settings asked of the server (``options``), so a backend
whose client vanished is reaped in seconds, not hours (it may hold an advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection

from relay.config import DatabaseConfig
from relay.errors import DatabaseUnavailable

T = TypeVar("T")


def connect_options(
    settings: DatabaseConfig, application_name: str, *, server_options: str = ""
) -> dict[str, Any]:
    """Keyword arguments for ``AsyncConnection.connect`` (or a pool's ``kwargs``)."""
    idle = max(1, round(settings.keepalives_idle))
    interval = max(1, round(settings.keepalives_interval))
    user_timeout_ms = round(settings.tcp_user_timeout * 1000)
    # synchronous_commit=local: the relay writes nothing but the hold flag (not durable
    # state), and a slow synchronous standby must not stall its hold calls.
    server_side = (
        f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} "
        f"-c tcp_keepalives_count={settings.keepalives_count} "
        f"-c tcp_user_timeout={user_timeout_ms} -c synchronous_commit=local"
    )
    return {
        "autocommit": True,
        "application_name": application_name,
        "connect_timeout": max(2, round(settings.connect_timeout)),
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": settings.keepalives_count,
        "tcp_user_timeout": user_timeout_ms,
        "options": f"{server_side} {server_options}".strip(),
    }


async def connect(settings: DatabaseConfig, application_name: str) -> AsyncConnection[Any]:
    """Connect within ``connect_timeout``; any failure is a :class:`DatabaseUnavailable`."""
    try:
        return await asyncio.wait_for(
            AsyncConnection.connect(settings.dsn, **connect_options(settings, application_name)),
            timeout=settings.connect_timeout + 1,
        )
    except psycopg.ProgrammingError:
        # libpq quotes the offending part of an unparsable DSN, which may be the password.
        raise DatabaseUnavailable("the DSN cannot be parsed: check its syntax") from None
    except (psycopg.Error, OSError, TimeoutError) as error:
        raise DatabaseUnavailable(describe_error(error)) from None


async def with_deadline(
    conn: AsyncConnection[Any], operation: Coroutine[Any, Any, T], timeout: float, name: str
) -> T:
    """Await a query, or sever the connection when it takes longer than ``timeout``.

    Hand-rolled instead of ``asyncio.wait_for``: cancelling a psycopg query first sends a
    cancel request and waits for it (up to 10 s), which is exactly what hangs on a half-open
    connection. Shutting the socket down fails the query at once. A cancellation of the
    caller is never swallowed: it propagates once the query has let go of the connection.
    """
    task = asyncio.create_task(operation, name=name)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    finally:
        if not task.done():
            # Sever first and let the query fail on its own: cancelling it makes psycopg send
            # a cancel request on a new connection and wait for it (up to 5 s), which hangs
            # on a half-open link. Cancel only if it has not let go within a second.
            sever(conn)
            finished, _ = await asyncio.wait({task}, timeout=1.0)
            if not finished:
                task.cancel()
                await asyncio.wait({task})
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a failure after an outer cancellation is expected
    if not done:
        raise DatabaseUnavailable(f"no answer within {timeout:g}s")
    return task.result()


def sever(conn: AsyncConnection[Any]) -> None:
    """Shut the connection's socket down so any pending operation fails immediately."""
    with contextlib.suppress(Exception):
        duplicate = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        finally:
            duplicate.close()


def describe_error(error: BaseException) -> str:
    """The first line of an error, for a log field (libpq's messages never hold the password)."""
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


IDLE_LIMIT = (
    "SELECT extract(epoch FROM current_setting('idle_session_timeout', true)::interval)::float8"
)


async def idle_limit(conn: AsyncConnection[Any]) -> float | None:
    """The server's ``idle_session_timeout`` for this session (a DBA's, server-wide or for the
    role), in seconds; None when off. A connection idle that long is ended by the server: its
    owner must speak more often than that."""
    cursor = await conn.execute(IDLE_LIMIT)
    row = await cursor.fetchone()
    seconds = row[0] if row else None
    return float(seconds) if seconds else None


def within_idle_limit(interval: float, limit: float | None) -> float:
    """An interval short enough to keep a session under ``limit`` alive."""
    return interval if limit is None else min(interval, 0.4 * limit)
