"""PostgreSQL plumbing shared by every connection the relay opens: the listener's, the hold
flag's, the leader election's, the CLI's, and the read pool's (relay/state/readpool.py, which
also carries the history's reads and writes).

Every connection detects a dead peer on both ends: client-side TCP keepalives and
``tcp_user_timeout``, and the same settings asked of the server (``options``), so a backend
whose client vanished is reaped in seconds, not hours (it may hold an advisory lock).

Poolers (docs/poolers.md): stock PgBouncer refuses the ``options`` startup parameter
(``unsupported startup parameter: options``). Then the relay connects again without it and
sets what matters to its own session with ``set_config()`` (one round trip); the server-side
keepalives are left out there, since the backend's peer is the pooler, not the relay. The
refusal is remembered per DSN, so later connections go straight to the second way. Prepared
statements are always off (``prepare_threshold=None``): a pooler may hand the backend to
another client, where ``_pg3_0`` does not exist.

What connecting remembers from one connection to the next (those refusals, and the handshakes
given up but not yet ended) belongs to a :class:`Connector`. A relay makes its own
(``relay/app.py``) and gives it to the listener, the hold flag, the election and the read pool;
the module's :func:`connect` and :class:`RelayConnection`, for the one-shot CLI commands and
tests, use one made at import, ``DEFAULT_CONNECTOR``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shlex
import socket
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict

from relay.config import DatabaseConfig
from relay.errors import DatabaseReadOnly, DatabaseUnavailable
from relay.logs import get_logger

T = TypeVar("T")
log = get_logger("relay.source.pg")

# Settings of the relay's own sessions; the server-side keepalives come on top, in `options`.
# search_path: every name the relay's queries use resolves from pg_catalog (ours are named
# with their schema), so an overload another role plants in a schema of the login's default
# path cannot run with the relay's rights (CVE-2018-1058; README "What db install protects").
SESSION_SETTINGS = "-c synchronous_commit=local -c search_path=pg_catalog,pg_temp"


def connect_options(
    settings: DatabaseConfig, application_name: str, *, server_options: str = ""
) -> dict[str, Any]:
    """Keyword arguments for ``AsyncConnection.connect`` (or a pool's ``kwargs``)."""
    idle = max(1, round(settings.keepalives_idle))
    interval = max(1, round(settings.keepalives_interval))
    user_timeout_ms = round(settings.tcp_user_timeout * 1000)
    # synchronous_commit=local, on every session: a slow synchronous standby must not stall
    # the hold calls (the flag is not durable state). It also covers the relay's one durable
    # write, the history's (relay/state/history.py: the leader, on the read pool): a
    # period written just before a fail-over to a synchronous standby may be missing there.
    # The next leader writes the current state when elected, so at worst a start or an end
    # is recorded late, or a period that began and ended in that moment is lost.
    server_side = (
        f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} "
        f"-c tcp_keepalives_count={settings.keepalives_count} "
        f"-c tcp_user_timeout={user_timeout_ms} {SESSION_SETTINGS}"
    )
    return {
        "autocommit": True,
        # A pooler may give the backend to another client between two of our statements.
        "prepare_threshold": None,
        "application_name": application_name,
        "connect_timeout": max(2, round(settings.connect_timeout)),
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": settings.keepalives_count,
        "tcp_user_timeout": user_timeout_ms,
        "options": f"{server_side} {server_options}".strip(),
    }


class RelayConnection(AsyncConnection[Any]):
    """An ``AsyncConnection`` that gets past a pooler refusing ``options`` (see the module's
    docstring), remembering the refusal in its ``connector`` (``DEFAULT_CONNECTOR``; a
    connector's own ``connection_class`` for another). Also usable as a pool's
    ``connection_class``."""

    connector: ClassVar[Connector]

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> RelayConnection:
        options = kwargs.get("options")
        refused = cls.connector.options_refused
        if options and conninfo not in refused:
            try:
                return await super().connect(conninfo, **kwargs)
            except psycopg.OperationalError as error:
                if not refuses_options(error):
                    raise
            refused.add(conninfo)
            log.warning(
                "pooler_refuses_options",
                target=describe_dsn(conninfo),
                note="connecting without `options` and setting the session's settings with "
                "set_config(); server-side keepalives are the pooler's to set (docs/poolers.md)",
            )
        kwargs.pop("options", None)
        conn = await super().connect(conninfo, **kwargs)
        settings = session_settings(options or "")
        if settings:
            try:
                await conn.execute(set_configs(settings), [v for pair in settings for v in pair])
            except BaseException:
                await conn.close()
                raise
        return conn


def refuses_options(error: BaseException) -> bool:
    """A pooler's answer to the ``options`` startup parameter (PgBouncer's wording)."""
    return "unsupported startup parameter" in str(error) and "options" in str(error)


def session_settings(options: str) -> list[tuple[str, str]]:
    """The ``-c name=value`` pairs of ``options`` that concern the session itself (the
    server-side keepalives are left out: behind a pooler the backend's peer is the pooler)."""
    words = shlex.split(options)
    pairs = [word.partition("=") for prev, word in itertools.pairwise(words) if prev == "-c"]
    return [(name, value) for name, _, value in pairs if not name.startswith("tcp_")]


def set_configs(settings: list[tuple[str, str]]) -> str:
    """One statement that sets every pair for the session (parameters: name, value, ...)."""
    # Qualified and typed: it runs before the session's own search_path is set.
    pair = "pg_catalog.set_config(%s::text, %s::text, false)"
    return "SELECT " + ", ".join(pair for _ in settings)


class Connector:
    """The relay's connects and what they remember from one to the next: the DSNs whose pooler
    refused the ``options`` startup parameter, and the handshakes given up but not yet ended.
    Nothing to open or close: each handshake is bounded by libpq's ``connect_timeout``."""

    def __init__(self) -> None:
        # DSNs whose pooler refused the `options` startup parameter.
        self.options_refused: set[str] = set()
        # Strong refs (the loop keeps weak ones): at most one per connect given up, each gone
        # once its handshake ends (bounded by connect_timeout).
        self._abandoned: set[asyncio.Future[RelayConnection]] = set()
        # For a pool (psycopg_pool calls its connect()): remembers refusals here.
        self.connection_class: type[RelayConnection] = type(
            "RelayConnection", (RelayConnection,), {"connector": self}
        )

    async def connect(
        self, settings: DatabaseConfig, application_name: str, *, server_options: str = ""
    ) -> AsyncConnection[Any]:
        """Connect within ``connect_timeout``; any failure is a :class:`DatabaseUnavailable`
        (:class:`DatabaseReadOnly` when the hosts that answered are all read-only)."""
        options = connect_options(settings, application_name, server_options=server_options)
        connecting = asyncio.ensure_future(self.connection_class.connect(settings.dsn, **options))
        try:
            return await asyncio.wait_for(
                asyncio.shield(connecting),
                # Each host of a multi-host DSN has connect_timeout, and a pooler that refuses
                # `options` costs a second handshake.
                timeout=2 * hosts(settings.dsn) * settings.connect_timeout + 1,
            )
        except BaseException as error:
            self._discard(connecting)
            if isinstance(error, psycopg.Error | OSError | TimeoutError):
                raise _unavailable(error) from None
            raise

    def _discard(self, connecting: asyncio.Future[RelayConnection]) -> None:
        """Close a connection whose caller gave up, once its handshake ends.

        Not cancelled: psycopg abandons a cancelled handshake without closing it, and a server
        that had already accepted it keeps the session until the garbage collector finds it.
        The handshake is bounded by libpq's own ``connect_timeout``.
        """

        def close(done: asyncio.Future[RelayConnection]) -> None:
            self._abandoned.discard(done)
            if not done.cancelled() and done.exception() is None:
                done.result().pgconn.finish()  # synchronous: nothing more to await

        self._abandoned.add(connecting)
        connecting.add_done_callback(close)


DEFAULT_CONNECTOR = Connector()
# RelayConnection itself, as a pool's connection_class, remembers where connect() does.
RelayConnection.connector = DEFAULT_CONNECTOR
connect = DEFAULT_CONNECTOR.connect


def _unavailable(error: BaseException) -> DatabaseUnavailable:
    if isinstance(error, psycopg.ProgrammingError):
        # libpq quotes the offending part of an unparsable DSN, which may be the password.
        return DatabaseUnavailable("the DSN cannot be parsed: check its syntax")
    if is_read_only(error):
        return DatabaseReadOnly(describe_error(error))
    return DatabaseUnavailable(describe_error(error))


def hosts(dsn: str) -> int:
    """How many hosts a DSN lists (libpq tries them in turn)."""
    with contextlib.suppress(Exception):
        return max(1, str(conninfo_to_dict(dsn).get("host") or "").count(",") + 1)
    return 1


# libpq's words when target_session_attrs=read-write finds a standby or a read-only session,
# and the server's when a standby is asked to LISTEN.
_READ_ONLY = ("hot standby mode", "session is read-only", "during recovery", "read-only")


def is_read_only(error: BaseException) -> bool:
    """Whether a connection failed because the server it found is a standby (or read-only)."""
    if isinstance(error, psycopg.errors.ReadOnlySqlTransaction):
        return True
    text = str(error)
    return any(words in text for words in _READ_ONLY)


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


class Farewell:
    """The server's last word on a connection: a FATAL it sends before closing (an idle-session
    timeout, an administrator's termination, a shutdown) reaches libpq while no query runs,
    which hands it to the notice handlers; the error that follows only says the connection is
    bad. ``describe(error)`` names both."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.message: str | None = None
        conn.add_notice_handler(self._notice)

    def _notice(self, diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.severity_nonlocalized in ("FATAL", "PANIC", "ERROR"):
            self.message = diagnostic.message_primary

    def describe(self, error: BaseException) -> str:
        reason = describe_error(error)
        # The error itself may carry it (the server answered a query with it).
        said = getattr(getattr(error, "diag", None), "message_primary", None) or self.message
        if said and said not in reason:
            return f"{reason} (the server said: {said})"
        return reason


def describe_error(error: BaseException) -> str:
    """The first line of an error, for a log field (libpq's messages never hold the password)."""
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error).strip()
    if not text:
        return type(error).__name__
    lines = text.splitlines()
    # psycopg tries each host of a multi-host DSN and lists every failure after this line.
    if MULTIPLE_ATTEMPTS in lines:
        attempts = lines[lines.index(MULTIPLE_ATTEMPTS) + 1 :]
        return "; ".join(line.strip().removeprefix("- ") for line in attempts if line.strip())
    return lines[0]


MULTIPLE_ATTEMPTS = "Multiple connection attempts failed. All failures were:"


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


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, for log lines: ``user@host:port/dbname``, never the password."""
    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "<unparsable DSN>"
    host = parts.get("host") or "localhost"
    port = parts.get("port") or 5432
    user = parts.get("user") or ""
    dbname = parts.get("dbname") or ""
    return f"{user}@{host}:{port}/{dbname}" if user else f"{host}:{port}/{dbname}"
