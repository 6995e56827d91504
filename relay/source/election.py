"""Leader election among relays that share a database: the one relay that writes the history
and sends the webhooks.

Several relays behind a load balancer all see every transition; a webhook must still be
sent once, and a busy period written once. Each relay tries ``pg_try_advisory_lock(key)``
on a dedicated connection; the one that gets it leads and keeps the connection (and so the
lock) open. PostgreSQL releases a session lock when its connection ends, so a relay that
stops or dies hands the lock on; the others retry every ``interval`` and one of them takes
over. The lock's key and the connection's ``application_name`` are those of the releases that
kept this module under ``fanout/webhooks/`` (``stability-relay:webhooks``, ``(leader
election)``): an older relay and a newer one on one database still exclude each other during
a rolling upgrade.
Reconnecting is the listener's loop (``relay/source/reconnect.py``), with its own backoff.

Stepping down is lazy: a leader whose lock connection breaks stays the leader until it
reconnects and finds the lock taken by another relay. A single relay therefore keeps
sending through a database outage (``unknown`` webhooks still go out), and several relays
never have no sender. The price is a short overlap when only the leader is cut off from
the database while another relay takes over: both may send one transition
(deliveries are at-least-once anyway). After a reconnect the previous leader tries at
once and the others wait one ``interval``, so leadership does not move for nothing.

A dead lock connection must not keep the lock: the connection asks the server for TCP
keepalives and ``tcp_user_timeout`` too (``relay.source.pg``), so a backend whose client vanished
is reaped in seconds. And a leader that reconnects and finds the lock held by its own
previous backend (same pid and start time, still holding this lock: the server has not
noticed the cut yet) ends that backend and takes the lock back, where the role may
(``pg_terminate_backend``); where it may not, it waits for the server to reap it.

Only a relay that knows the state campaigns (``eligible``: its listener reports from the
primary): one pointed at a standby, refused by a pooler or not yet connected never leads.
A leader whose listener goes ``unknown`` keeps leading, lazily, as above.

Behind a pooler (docs/poolers.md) a backend is not the relay's own: the pid the connection
was given is the pooler's, and the server's backend may serve other clients after ours is
gone. So the relay never ends a backend there, and while leading it checks each interval
that its own session still holds the lock (a pooler's reset or a transaction pooler would
lose it): if not, it steps down and campaigns again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection

from relay.backoff import Backoff
from relay.config import DatabaseConfig
from relay.errors import DatabaseReadOnly, DatabaseUnavailable
from relay.logs import get_logger
from relay.source import pg
from relay.source.reconnect import Reconnect
from relay.tasks import spawn

log = get_logger("relay.source.election")

# One lock per database for every relay fleet on it (64-bit, from a fixed name). Never change
# the name: relays of different versions must contend for the same lock.
LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"stability-relay:webhooks").digest()[:8], "big", signed=True
)

OnChange = Callable[[bool], Awaitable[None]]
ELIGIBILITY_POLL = 0.1
Params = Sequence[Any] | Mapping[str, Any] | None

# This backend's identity: a pid alone may be reused by an unrelated backend.
IDENTIFY = "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
# A bigint advisory lock in pg_locks: the key's high and low 32 bits, objsubid 1.
HOLDS_KEY = """
SELECT 1 FROM pg_locks l
 WHERE l.pid = {pid} AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.classid = %(classid)s::bigint::oid AND l.objid = %(objid)s::bigint::oid
"""
# Ends the backend identified, only if it still holds this lock; waits for it to exit.
END_PREVIOUS = f"""
SELECT pg_terminate_backend(a.pid, %(wait_ms)s)
  FROM pg_stat_activity a
 WHERE a.pid = %(pid)s AND a.backend_start = %(started)s
   AND EXISTS ({HOLDS_KEY.format(pid="a.pid")})
"""
# This session holds the lock (and which backend answers: a pooler's pid is its own).
STILL_HELD = f"SELECT EXISTS ({HOLDS_KEY.format(pid='pg_backend_pid()')}), pg_backend_pid()"


def lock_ids(key: int) -> dict[str, int]:
    """The key as pg_locks shows a bigint advisory lock."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return {"classid": unsigned >> 32, "objid": unsigned & 0xFFFF_FFFF}


async def connect(
    settings: DatabaseConfig, connector: pg.Connector = pg.DEFAULT_CONNECTOR
) -> AsyncConnection[Any]:
    """The lock's connection: keepalives and ``tcp_user_timeout`` on both ends
    (``relay.source.pg``)."""
    conn = await connector.connect(settings, f"{settings.application_name} (leader election)")
    log.debug("leader_connected", target=pg.describe_dsn(settings.dsn))
    return conn


class Leadership:
    """Holds the advisory lock while leading. ``start()`` then ``aclose()``; both idempotent,
    not reopenable.

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
        eligible: Callable[[], bool] | None = None,
        connector: pg.Connector = pg.DEFAULT_CONNECTOR,
    ) -> None:
        self._settings = settings
        self._connector = connector
        self._on_change = on_change
        self._eligible = eligible or (lambda: True)
        self._key = key
        self._interval = interval if interval is not None else settings.heartbeat_interval
        self._backoff = Backoff(
            settings.reconnect_initial, settings.reconnect_max, settings.reconnect_reset_after
        )
        self.is_leader = False
        self._change_failed = False
        self._campaigned = False
        self._holder: tuple[int, datetime] | None = None  # the backend that last held the lock
        self._pooled = False  # the lock's connection goes through a pooler
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._loop = Reconnect(
            self._backoff,
            connect=lambda: connect(self._settings, self._connector),
            session=self._session,
            ended=self._ended,
            closed=lambda: self._closed,
        )

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("a closed leadership cannot be started again")
        if self._task is None:
            self._task = spawn(self._loop.run(), "relay-leader")

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

    # The reconnect loop's hooks (relay/source/reconnect.py).
    async def _session(self, conn: AsyncConnection[Any]) -> None:
        self._backoff.healthy()
        await self._campaign(conn)

    def _ended(self, error: BaseException | None, farewell: pg.Farewell | None) -> bool:
        """Log why the lock's connection ended; whether to retry briefly (a standby about to
        be promoted: try again soon, not after the climbing backoff)."""
        if error is None:
            return False
        if isinstance(error, (psycopg.Error, OSError, DatabaseUnavailable)):
            log.warning(
                "leader_connection_lost",
                error=farewell.describe(error) if farewell else pg.describe_error(error),
                leading=self.is_leader,
            )
            return isinstance(error, DatabaseReadOnly) or pg.is_read_only(error)
        # A bug must not end the election: log it, reconnect, go on.
        log.exception("leader_session_failed", leading=self.is_leader)
        return False

    async def _campaign(self, conn: AsyncConnection[Any]) -> None:
        """Try for the lock until this connection holds it, then prove it alive each interval."""
        # Checks often enough that a DBA's idle_session_timeout does not end the session
        # (and hand the lock on) between two of them.
        interval = pg.within_idle_limit(self._interval, await pg.idle_limit(conn))
        row = await self._query(conn, "SELECT pg_backend_pid()")
        # A pooler answers the startup with a pid of its own: the backend is not ours to end.
        self._pooled = row is None or int(row[0]) != conn.info.backend_pid
        if self._pooled:
            self._holder = None
        if self._campaigned and not self.is_leader:
            await asyncio.sleep(interval)  # after a reconnect the previous leader goes first
        self._campaigned = True
        while True:
            # A relay that does not know the state does not campaign; a (lazy) leader tries
            # at once, to find out whether another relay took over.
            if self.is_leader or self._eligible():
                if await self._try_lock(conn):
                    break
                await self._set(False)
                await asyncio.sleep(interval)
            elif not await self._until_eligible(interval):
                await self._query(conn, "SELECT 1")  # keeps the session (idle_session_timeout)
        row = await self._query(conn, IDENTIFY)
        self._holder = (int(row[0]), row[1]) if row and not self._pooled else None
        await self._set(True)
        # Held. Each check is a round trip, so a dead connection is noticed within one
        # interval plus the heartbeat timeout (and PostgreSQL frees the lock on its side).
        ids = lock_ids(self._key)
        while True:
            await asyncio.sleep(interval)
            if not _true(await self._query(conn, STILL_HELD, ids)):
                log.warning(
                    "leader_lock_lost",
                    reason="this session no longer holds the lock (a pooler's reset, or a "
                    "transaction pooler moved the session to another backend)",
                )
                await self._set(False)
                return
            await self._set(True)  # repeats a callback that failed; otherwise nothing

    async def _until_eligible(self, timeout: float) -> bool:
        """Whether this relay became eligible within ``timeout`` (looked at every 0.1 s, so
        it campaigns as soon as its listener knows the state)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._eligible():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            await asyncio.sleep(min(ELIGIBILITY_POLL, left))
        return True

    async def _try_lock(self, conn: AsyncConnection[Any]) -> bool:
        lock = "SELECT pg_try_advisory_lock(%s)"
        if _true(await self._query(conn, lock, [self._key])):
            return True
        if self._holder is None or not await self._end_previous_backend(conn):
            return False
        return _true(await self._query(conn, lock, [self._key]))

    async def _end_previous_backend(self, conn: AsyncConnection[Any]) -> bool:
        """End this relay's previous lock backend if it still holds the lock (half-open)."""
        assert self._holder is not None
        (pid, started), self._holder = self._holder, None  # one try per lost connection
        if self._pooled:
            return False  # never: the backend may be another client's now
        wait_ms = max(1, round(self._settings.heartbeat_timeout * 500))  # within the deadline
        params = {"wait_ms": wait_ms, "pid": pid, "started": started, **lock_ids(self._key)}
        try:
            ended = _true(await self._query(conn, END_PREVIOUS, params))
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
        self, conn: AsyncConnection[Any], sql: str, params: Params = None
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
    conn: AsyncConnection[Any], sql: str, params: Params
) -> tuple[Any, ...] | None:
    cursor = await conn.execute(sql, params)
    return await cursor.fetchone()


def _true(row: tuple[Any, ...] | None) -> bool:
    return bool(row and row[0])


__all__ = ["LOCK_KEY", "Leadership", "connect"]
