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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import AsyncConnection

from relay.backoff import Backoff
from relay.config import DatabaseConfig
from relay.logs import describe_dsn, get_logger

log = get_logger("relay.leader")

# One lock per database for every relay fleet on it (64-bit, from a fixed name).
LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"stability-relay:webhooks").digest()[:8], "big", signed=True
)

OnChange = Callable[[bool], Awaitable[None]]


class Leadership:
    """Holds the advisory lock while leading. ``start()`` once, ``aclose()`` once.

    ``on_change(leading)`` is awaited, in order, each time this relay becomes the leader or
    stops being it; an error in it is logged and leadership goes on.
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
        self._campaigned = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("a closed leadership cannot be started again")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="relay-leader")

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
                async with await self._connect() as conn:
                    self._backoff.healthy()
                    await self._campaign(conn)
            except (psycopg.Error, OSError, TimeoutError) as error:
                log.warning(
                    "leader_connection_lost", error=_first_line(error), leading=self.is_leader
                )
            await asyncio.sleep(self._backoff.delay())

    async def _connect(self) -> AsyncConnection[Any]:
        s = self._settings
        conn = await asyncio.wait_for(
            AsyncConnection.connect(
                s.dsn,
                autocommit=True,
                application_name=f"{s.application_name} (leader election)",
                connect_timeout=max(2, round(s.connect_timeout)),
                keepalives=1,
                keepalives_idle=max(1, round(s.keepalives_idle)),
                keepalives_interval=max(1, round(s.keepalives_interval)),
                keepalives_count=s.keepalives_count,
                tcp_user_timeout=round(s.tcp_user_timeout * 1000),
            ),
            timeout=s.connect_timeout + 1,
        )
        log.debug("leader_connected", target=describe_dsn(s.dsn))
        return conn

    async def _campaign(self, conn: AsyncConnection[Any]) -> None:
        """Try for the lock until this connection holds it, then prove it alive each interval."""
        if self._campaigned and not self.is_leader:
            await asyncio.sleep(self._interval)  # after a reconnect the previous leader goes first
        self._campaigned = True
        while not await self._query(conn, "SELECT pg_try_advisory_lock(%s)", self._key):
            await self._set(False)
            await asyncio.sleep(self._interval)
        await self._set(True)
        # Held. Each check is a round trip, so a dead connection is noticed within one
        # interval plus the heartbeat timeout (and PostgreSQL frees the lock on its side).
        while True:
            await asyncio.sleep(self._interval)
            await self._query(conn, "SELECT 1")

    async def _query(self, conn: AsyncConnection[Any], sql: str, *params: Any) -> bool:
        """One round trip, or the connection is cut after the heartbeat timeout.

        Not ``asyncio.wait_for``: cancelling a psycopg query waits for the server to confirm
        the cancel, which is what hangs on a half-open connection. Shutting the socket down
        fails the query at once (as the listener does).
        """
        query = asyncio.ensure_future(_fetch_bool(conn, sql, params))
        done, _ = await asyncio.wait({query}, timeout=self._settings.heartbeat_timeout)
        if not done:
            _shutdown(conn)
            query.cancel()
            with contextlib.suppress(BaseException):
                await query
            raise TimeoutError(f"no answer within {self._settings.heartbeat_timeout:g}s")
        return query.result()

    async def _set(self, leading: bool) -> None:
        if leading == self.is_leader:
            return
        self.is_leader = leading
        log.info("leader_elected" if leading else "leader_stepped_down", lock_key=self._key)
        try:
            await self._on_change(leading)
        except Exception:  # the relay goes on; the next change gets another chance
            log.exception("leader_change_failed", leading=leading)


async def _fetch_bool(conn: AsyncConnection[Any], sql: str, params: tuple[Any, ...]) -> bool:
    cursor = await conn.execute(sql, params or None)
    row = await cursor.fetchone()
    return bool(row and row[0])


def _shutdown(conn: AsyncConnection[Any]) -> None:
    with (
        contextlib.suppress(OSError, psycopg.Error),
        socket.socket(fileno=os.dup(conn.pgconn.socket)) as dup,
    ):
        dup.shutdown(socket.SHUT_RDWR)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


__all__ = ["LOCK_KEY", "Leadership"]
