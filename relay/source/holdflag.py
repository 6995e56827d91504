"""The hold flag's functions in the database, called on the listener's connection.

Take = request (flag 2, announced) then confirm (2 -> 1); release = 0 (sql/hold.sql). A relay
that stops *parks* the flag (takes it) when the config has hint triggers: with no relay
listening their notifications would cost writers for nothing.
A refused call (no EXECUTE, a read-only role, a relay newer than its SQL) is remembered for
the session and said once: holds save writers work, the relay is exact without them, and it
still follows the holds other relays take. A take that fails otherwise (a lock or statement
timeout) is not retried before ``retry_after``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, LiteralString

import psycopg
from psycopg import AsyncConnection

from relay.config import DatabaseConfig
from relay.errors import DatabaseUnavailable
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.source import pg

log = get_logger("relay.source.holdflag")

REQUEST = "SELECT public.system_stability_request_hold()"
CONFIRM = "SELECT public.system_stability_confirm_hold()"
RELEASE = "SELECT public.system_stability_release_hold()"
REFUSALS = (
    psycopg.errors.InsufficientPrivilege,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.ReadOnlySqlTransaction,
)
STOP_TIMEOUT = 1.0  # the release on stop: a share of the shutdown deadline, no more


class HoldFlag:
    def __init__(
        self,
        settings: DatabaseConfig,
        metrics: Metrics,
        retry_after: float,
        connector: pg.Connector = pg.DEFAULT_CONNECTOR,
    ) -> None:
        self._settings = settings
        self._connector = connector
        self._metrics = metrics
        self._retry_after = retry_after
        self._refused: set[str] = set()
        self._next_take = 0.0
        # Whether a hold may be set that this relay should end when it stops: since it began
        # a take, or since a read found the flag set.
        self.maybe_set = False

    def new_session(self) -> None:
        """Grants may have changed (``db install``): try every function again."""
        self._refused.clear()

    def can_take(self, now: float) -> bool:
        return now >= self._next_take and not self._refused & {REQUEST, CONFIRM}

    async def take(self, conn: AsyncConnection[Any], now: float) -> bool:
        """Request, then confirm; True once the request is announced (this relay then polls,
        confirmed or not)."""
        self.maybe_set = True
        if not await self._call(conn, REQUEST):
            self._next_take = now + self._retry_after
            return False
        if await self._call(conn, CONFIRM):
            self._metrics.hold_changes.labels("taken").inc()
            log.debug("hold_taken")
        return True

    async def release(self, conn: AsyncConnection[Any]) -> None:
        if await self._call(conn, RELEASE):
            self._metrics.hold_changes.labels("released").inc()
            log.debug("hold_released")

    async def on_stop(self, budget: float, *, park: bool) -> None:
        """What a stopping relay leaves writers. ``park``: quiet (request, then confirm, each
        committed, so running relays hear of it and poll): nothing listens once this relay is
        gone, and the next to start drains anyway. Otherwise end a hold this relay was in,
        else writers would skip hints until another relay ended it. On a fresh connection:
        the listening one is gone by now."""
        started = time.monotonic()
        if park and not self._refused & {REQUEST, CONFIRM}:
            steps = (REQUEST, CONFIRM)
            if await self._on_fresh_connection(steps, budget, "hold_parked_on_stop"):
                return
        if self.maybe_set and RELEASE not in self._refused:
            budget -= time.monotonic() - started
            await self._on_fresh_connection((RELEASE,), budget, "hold_released_on_stop")

    async def _on_fresh_connection(
        self, statements: tuple[LiteralString, ...], budget: float, event: str
    ) -> bool:
        timeout = max(0.1, min(STOP_TIMEOUT, budget))
        try:
            conn = await asyncio.wait_for(
                self._connector.connect(self._settings, self._settings.application_name),
                timeout,
            )
        except (TimeoutError, DatabaseUnavailable) as error:
            log.warning("hold_not_changed_on_stop", reason=pg.describe_error(error))
            return False
        try:
            for statement in statements:  # autocommit: each one committed before the next
                await pg.with_deadline(
                    conn, conn.execute(statement), timeout, name="relay-hold-on-stop"
                )
        except (psycopg.Error, DatabaseUnavailable) as error:
            log.warning("hold_not_changed_on_stop", step=event, reason=pg.describe_error(error))
            return False
        else:
            log.info(event)
            return True
        finally:
            await conn.close()

    async def _call(self, conn: AsyncConnection[Any], statement: LiteralString) -> bool:
        """Run one hold function; its boolean answer (void counts as True), False if it
        failed. A lost connection is raised: the session ends."""
        if statement in self._refused:
            return False
        try:
            cursor = await pg.with_deadline(
                conn,
                conn.execute(statement),
                self._settings.heartbeat_timeout,
                name="relay-hold-call",
            )
            row = await cursor.fetchone()
        except REFUSALS as error:
            self._refused.add(statement)
            log.warning("hold_unavailable", call=statement, reason=pg.describe_error(error))
            return False
        except psycopg.Error as error:
            if conn.broken:
                raise
            log.warning("hold_call_failed", call=statement, reason=pg.describe_error(error))
            return False
        return row is None or row[0] is not False
