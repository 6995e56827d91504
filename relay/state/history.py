"""The history of busy periods: written by the elected leader, read by every relay.

Writer: the leader (``relay/source/election.py``, the same election as the webhooks)
tells the database each change of what runs, per activity and overall, with its time
(``system_stability_record``). Bound: one pending write, the latest state (policy: a newer
state supersedes an older one not yet written, so a long outage costs one write, and the
periods in between are lost rather than queued); a failed write is retried every few seconds.
While the state is unknown nothing is written: periods stay open until the truth is read.

Reader: ``GET /api/system-status/history?since=24h|<ISO time>&activity=NAME&limit=100``:
the periods (start, end, duration, import job slugs) that had not ended before the query's
``since`` (here ``not_before``: a window's start, where ``since`` elsewhere in the state is
when something began) and a summary (count, median and p90 duration over the last 24 h and
7 d).

Both read and write on the relay's read pool (``relay/state/readpool.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import psycopg

from relay.errors import DatabaseUnavailable
from relay.logs import get_logger
from relay.source import pg
from relay.state.readpool import ReadPool
from relay.state.stability import ActivityStates, Snapshot, Stability, State
from relay.tasks import cancel_and_wait, spawn

log = get_logger("relay.state.history")

RECORD = (
    "SELECT public.system_stability_record(%s::text[], %s::text[], %s::timestamptz, "
    "pg_catalog.make_interval(secs => %s::double precision))"
)
READ = (
    "SELECT public.system_stability_history(%s::timestamptz, %s::text, %s::integer)::text, "
    "public.system_stability_history_summary(%s::text)::text"
)
RETRY_AFTER = 5.0
REFRESH = 30.0
# Bounds a whole read of the history, the wait for a pooled connection included.
READ_TIMEOUT = 10.0
OVERALL = ""  # the system as a whole, in the table


class HistoryWriter:
    """Runs while this relay leads. ``start()`` then ``aclose()``; not reopenable."""

    def __init__(self, stability: Stability, pool: ReadPool, retention: float) -> None:
        self._stability = stability
        self._pool = pool
        self._retention = retention
        self._latest: Snapshot | None = None
        self._observed: ActivityStates = ()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("a closed history writer cannot be started again")
        if self._task is None:
            self._task = spawn(self._run(), "relay-history")
            self.observe(self._stability.current)  # the state at election: catch up

    async def aclose(self, timeout: float | None = None) -> None:
        """A write in flight is cancelled (its transaction rolls back): the next leader writes
        the state it finds when elected."""
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._task, timeout)

    def observe(self, snapshot: Snapshot) -> None:
        """A transition; heard only while this writer runs (on the leader)."""
        if self._task is None or self._closed or snapshot.state is State.UNKNOWN:
            return
        if not snapshot.new_state and snapshot.activities == self._observed:
            return  # stalled/overdue only: nothing the history records changed
        self._observed = snapshot.activities
        self._latest = snapshot  # supersedes a write not yet made
        self._wake.set()

    async def _run(self) -> None:
        while True:
            # While processing, the state is written again every REFRESH: import jobs that
            # start within a period get their slugs recorded too.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH):
                    await self._wake.wait()
            if not self._wake.is_set():
                current = self._stability.current
                if current.state is State.PROCESSING:
                    self._latest = self._latest or current
            self._wake.clear()
            snapshot, self._latest = self._latest, None
            if snapshot is None:
                continue
            try:
                await self._record(snapshot)
            except (DatabaseUnavailable, psycopg.Error) as error:
                reason = pg.describe_error(error)
                log.warning("history_write_failed", reason=reason, retry_in_s=RETRY_AFTER)
                if self._latest is None:
                    self._latest = snapshot
                await asyncio.sleep(RETRY_AFTER)
                self._wake.set()

    async def _record(self, snapshot: Snapshot) -> None:
        running = [name for name, active in snapshot.activities if active]
        if running:
            running.append(OVERALL)
        known = [name for name, active in snapshot.activities if active is not None]
        known.append(OVERALL)
        at = datetime.fromtimestamp(snapshot.at, UTC)
        async with self._pool.connection() as conn:
            await conn.execute(RECORD, (running, known, at, self._retention))


class History:
    """The periods and their summary, read on the read pool (``relay/http/api.py`` serves
    ``GET /api/system-status/history``)."""

    def __init__(self, pool: ReadPool, activities: list[str]) -> None:
        self._pool = pool
        self.activities = activities

    async def read(
        self, not_before: datetime, activity: str | None, limit: int
    ) -> tuple[list[Any], dict[str, Any]]:
        """The periods that had not ended before ``not_before`` (of ``activity``, else
        overall; at most ``limit``, the latest first) and the summary; ``DatabaseUnavailable``
        when the database cannot be reached."""
        try:
            async with asyncio.timeout(READ_TIMEOUT), self._pool.connection() as conn:
                cursor = await conn.execute(READ, (not_before, activity, limit, activity))
                row = await cursor.fetchone()
        except (DatabaseUnavailable, psycopg.Error, TimeoutError) as error:
            reason = pg.describe_error(error)
            log.warning("history_unavailable", reason=reason)
            raise DatabaseUnavailable(reason) from None
        assert row is not None
        return json.loads(row[0]), json.loads(row[1])
