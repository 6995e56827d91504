"""Leader election among relays that share a database: who sends the webhooks.

Several relays behind a load balancer all see every transition; a webhook must still be
sent once. Each relay tries ``pg_try_advisory_lock(key)`` on a dedicated connection; the
one that gets it leads and keeps the connection (and so the lock) open. PostgreSQL
releases a session lock when its connection ends, so a relay that stops or dies hands the
lock on; the others retry every ``interval`` and one of them takes over.

Stepping down is lazy: a leader whose lock connection breaks stays the leader until it
reconnects and finds the lock taken by another relay. A single relay therefore keeps
sending through a database outage (``unknown`` webhooks still go out), and several relays
never have no sender. The price is a short overlap when only the leader is cut off from
the database while another relay takes over: both may send one transition
(deliveries are at-least-once anyway). After a reconnect the previous leader tries at
once and the others wait one ``interval``, so leadership does not move for nothing.

A dead lock connection must not keep the lock: the connection asks the server for TCP
keepalives and ``tcp_user_timeout`` too (``relay.pg``), so a backend whose client vanished
is reaped in seconds. And a leader that reconnects and finds the lock held by its own
previous backend (same pid and start time: the server has not noticed the cut yet) ends
that backend and takes the lock back, where the role may (``pg_terminate_backend``); where
it may not, it waits for the server to reap it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection

from relay import pg
from relay.backoff import Backoff
from relay.config import DatabaseConfig
from relay.errors import DatabaseUnavailable
from relay.logs import describe_dsn, get_logger
from relay.tasks import report_unexpected_exit

log = get_logger("relay.leader")

# One lock per database for every relay fleet on it (64-bit, from a fixed name).
LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"stability-relay:webhooks").digest()[:8], "big", signed=True
)

OnChange = Callable[[bool], Awaitable[None]]

# This backend's identity: a pid alone may be reused by an unrelated backend.
IDENTIFY = "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
# Ends the backend identified, only if it still holds an advisory lock; waits for it to exit.
END_PREVIOUS = """
SELECT pg_terminate_backend(a.pid, %s)
  FROM pg_stat_activity a
 WHERE a.pid = %s AND a.backend_start = %s
   AND EXISTS (SELECT 1 FROM pg_locks l
                WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)
"""


async def connect(settings: DatabaseConfig) -> AsyncConnection[Any]:
    """The lock's connection: keepalives and ``tcp_user_timeout`` on both ends (``relay.pg``)."""
    conn = await pg.connect(settings, f"{settings.application_name} (leader election)")
    log.debug("leader_connected", target=describe_dsn(settings.dsn))
    return conn


class Leadership:
    """Holds the advisory lock while leading. ``start()`` once, ``aclose()`` once.

    ``on_change(leading)`` is awaited, in order, each time this relay becomes the leader or
    stops being it; if it raises, the error is logged and the call is repeated every
    ``interval`` until it succeeds or leadership changes again (a sender that failed to
    start must not leave a leader that sends nothing).
    """

    def __init__(
        self,
        settings: DatabaseConfig,
        on_change: OnChange,
        *,
        key: int = LOCK_KEY,
        interval: float | None = None,
    ) -> None:
        self._settings = settings
        self._on_change = on_change
        self._key = key
        self._interval = interval if interval is not None else settings.heartbeat_interval
        self._backoff = Backoff(
            settings.reconnect_initial, settings.reconnect_max, settings.reconnect_reset_after
        )
        self.is_leader = False
        self._change_failed = False
        self._campaigned = False
        self._holder: tuple[int, datetime] | None = None  # the backend that last held the lock
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("a closed leadership cannot be started again")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="relay-leader")
            self._task.add_done_callback(report_unexpected_exit)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop campaigning and release the lock (by closing its connection)."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                log.warning("leader_stop_timeout", timeout_s=timeout)

    async def _run(self) -> None:
        while not self._closed:
            try:
                async with await connect(self._settings) as conn:
                    self._backoff.healthy()
                    await self._campaign(conn)
            except (psycopg.Error, OSError, DatabaseUnavailable) as error:
                log.warning(
                    "leader_connection_lost",
                    error=pg.describe_error(error),
                    leading=self.is_leader,
                )
            except Exception:  # a bug must not end the election: log it, reconnect, go on
                log.exception("leader_session_failed", leading=self.is_leader)
            await asyncio.sleep(self._backoff.delay())

    async def _campaign(self, conn: AsyncConnection[Any]) -> None:
        """Try for the lock until this connection holds it, then prove it alive each interval."""
        # Checks often enough that a DBA's idle_session_timeout does not end the session
        # (and hand the lock on) between two of them.
        interval = pg.within_idle_limit(self._interval, await pg.idle_limit(conn))
        if self._campaigned and not self.is_leader:
            await asyncio.sleep(interval)  # after a reconnect the previous leader goes first
        self._campaigned = True
        while not await self._try_lock(conn):
            await self._set(False)
            await asyncio.sleep(interval)
        row = await self._query(conn, IDENTIFY)
        self._holder = (int(row[0]), row[1]) if row else None
        await self._set(True)
        # Held. Each check is a round trip, so a dead connection is noticed within one
        # interval plus the heartbeat timeout (and PostgreSQL frees the lock on its side).
        while True:
            await asyncio.sleep(interval)
            await self._query(conn, "SELECT 1")
            await self._set(True)  # repeats a callback that failed; otherwise nothing

    async def _try_lock(self, conn: AsyncConnection[Any]) -> bool:
        lock = "SELECT pg_try_advisory_lock(%s)"
        if _true(await self._query(conn, lock, self._key)):
            return True
        if self._holder is None or not await self._end_previous_backend(conn):
            return False
        return _true(await self._query(conn, lock, self._key))

    async def _end_previous_backend(self, conn: AsyncConnection[Any]) -> bool:
        """End this relay's previous lock backend if it still holds the lock (half-open)."""
        assert self._holder is not None
        (pid, started), self._holder = self._holder, None  # one try per lost connection
        wait_ms = max(1, round(self._settings.heartbeat_timeout * 500))  # within the deadline
        try:
            ended = _true(await self._query(conn, END_PREVIOUS, wait_ms, pid, started))
        except psycopg.errors.InsufficientPrivilege:
            log.debug("leader_previous_backend_not_ended", backend_pid=pid, reason="no privilege")
            return False
        if ended:
            log.warning(
                "leader_previous_backend_ended",
                backend_pid=pid,
                reason="it still held the lock after its connection was lost",
            )
        return ended

    async def _query(
        self, conn: AsyncConnection[Any], sql: str, *params: Any
    ) -> tuple[Any, ...] | None:
        """One round trip, or the connection is severed after the heartbeat timeout."""
        return await pg.with_deadline(
            conn,
            _fetch_one(conn, sql, params),
            self._settings.heartbeat_timeout,
            name="relay-leader-query",
        )

    async def _set(self, leading: bool) -> None:
        if leading == self.is_leader and not self._change_failed:
            return
        if leading != self.is_leader:
            self.is_leader = leading
            log.info("leader_elected" if leading else "leader_stepped_down", lock_key=self._key)
        try:
            await self._on_change(leading)
        except Exception:  # the relay goes on; the call is repeated next interval
            self._change_failed = True
            log.exception("leader_change_failed", leading=leading, retry_in_s=self._interval)
        else:
            self._change_failed = False


async def _fetch_one(
    conn: AsyncConnection[Any], sql: str, params: tuple[Any, ...]
) -> tuple[Any, ...] | None:
    cursor = await conn.execute(sql, params or None)
    return await cursor.fetchone()


def _true(row: tuple[Any, ...] | None) -> bool:
    return bool(row and row[0])


__all__ = ["LOCK_KEY", "Leadership", "connect"]
