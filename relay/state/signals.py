"""Stalled, overdue, depth and lag: the signals of active work, read and timed.

One task, started with the relay, reads ``public.system_stability_signals(depth_cap)``
(``relay/source/activities/signals.py``) and the history's typical periods in one round while
any activity is active: at most once per ``signals.interval``, the first read as soon as an
activity turns active (if the last read is that old). Nothing is read while the system is
stable: every activity's depth is then 0 without a read. Every scrape and details request
shares the latest read (the task is the single flight: no request starts a read).

* **stalled**: an activity some of whose rows meet its ``stalled`` condition. ``since`` is
  when this relay first read it so: "no progress for X" counts from then, and the condition's
  own threshold (procrastinate's 60 s without a heartbeat) is the config author's. A failed
  read changes nothing (the signal stays as last read); a read with no stalled row, or the
  activity's end, clears it.
* **overdue**: an activity whose busy period has run past its bound: ``overdue_after``, else
  ``signals.overdue_factor`` x the 90th percentile of its periods in the history (the last 7
  days, ``system_stability_typical()``, which the estimates of ``eta.py`` rest on too), once
  there are ``overdue_min_periods`` of them, never less than ``overdue_min_bound``; no bound
  without either. The period began when this relay saw the activity turn active, or earlier
  when the history has it open since then (a restart keeps the count). A timer notices the
  bound at its time, without any database event or read.
* **depth** and **oldest age**: per activity, its rows (exact up to ``depth_cap``; beyond it
  ``depth_cap + 1``) and the age of the oldest (activities with an ``age_column``), as of the
  latest read. Never stale: a read that failed, timed out or was refused, a read taken before
  the activity turned active, or one older than two intervals and the timeout, gives NaN.

Exactness: a signals function generated from another definition (its comment's fingerprint
differs) is refused: no signal is read from it, the gauges say NaN, ``signals_refused`` is
logged once with the fix, and the details say why.

Bound: one statement at a time, each within ``signals.read_timeout`` (a statement timeout on
the server and a deadline on the round trip), counting at most ``depth_cap + 1`` rows per
activity and part.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from relay.config import SignalsConfig
from relay.config.activities import Activity
from relay.errors import DatabaseUnavailable, SchemaMismatch
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.source.activities.signals import (
    COMMENT_QUERY,
    FINGERPRINT,
    FUNCTION,
    signals_fingerprint,
)
from relay.state.readpool import ReadPool
from relay.state.stability import Snapshot, Stability, State, iso_timestamp
from relay.tasks import cancel_and_wait, spawn

log = get_logger("relay.state.signals")

TIMEOUT = "SELECT pg_catalog.set_config('statement_timeout', %s::pg_catalog.text, true)"
COMMENT = f"SELECT {COMMENT_QUERY}"
READ = (
    f"SELECT {FUNCTION}(%s::integer)::pg_catalog.text, "
    "public.system_stability_typical()::pg_catalog.text"
)
KINDS = ("depth", "oldest_age_s", "stalled")


@dataclass(frozen=True, slots=True)
class Reading:
    """One read: ``began`` (monotonic) and ``at`` (wall clock) when it was sent, each
    activity's answer, and the history's typical periods."""

    began: float
    at: float
    activities: Mapping[str, Mapping[str, Any]]
    typical: Mapping[str, Any]


class SignalsReader:
    """``start()`` then ``aclose()``; both idempotent, not reopenable. An observer of the
    state (:meth:`on_change`); the metrics and details read :meth:`value` and
    :meth:`describe`."""

    def __init__(
        self,
        activities: Sequence[Activity],
        settings: SignalsConfig,
        stability: Stability,
        pool: ReadPool,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._activities = {activity.name: activity for activity in activities}
        self._fingerprint = signals_fingerprint(activities)
        self._settings = settings
        self._stability = stability
        self._pool = pool
        self._metrics = metrics
        self._clock = clock
        self._reading: Reading | None = None
        self._last_began = -math.inf  # monotonic: reads are at least an interval apart
        self._typical: Mapping[str, Any] = {}  # kept across failed reads: bounds need it
        # Per active activity: when this relay saw it turn active (monotonic, wall clock).
        self._active_since: dict[str, tuple[float, float]] = {}
        self._stalled_since: dict[str, float] = {}
        # When each activity was last seen to end (wall clock): the history's open period of
        # a read from before then is the previous period's, not the current one's.
        self._ended: dict[str, float] = {}
        self.refusal: str | None = None
        self.error: str | None = None  # why the last read failed, None after one that worked
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.on_change(stability.current)

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("a closed signals reader cannot be started again")
        if self._task is None:
            self._task = spawn(self._run(), "relay-signals")

    async def aclose(self, timeout: float | None = None) -> None:
        """A read in flight is cancelled; the state keeps the signals last published."""
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._task, timeout)

    # -- the state's observer ------------------------------------------------------------
    def on_change(self, snapshot: Snapshot) -> None:
        """Track when each activity turned active; wake the task for a new one (read) or an
        ended one (its signals go)."""
        woken = snapshot.new_state  # back from unknown, the same work: read again
        for name, active in snapshot.activities:
            if active and name not in self._active_since:
                self._active_since[name] = (time.monotonic(), snapshot.at)
                woken = True
            elif active is False and name in self._active_since:
                del self._active_since[name]
                self._stalled_since.pop(name, None)
                self._ended[name] = snapshot.at
                woken = True
            # Unknown (no database): the period goes on until the truth says otherwise.
        if woken:
            self._wake.set()

    # -- the task ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            self._wake.clear()
            busy = self._stability.current.state is State.PROCESSING
            now = time.monotonic()
            next_read = self._last_began + self._settings.interval
            if busy and now >= next_read:
                await self._read_once()
                next_read = self._last_began + self._settings.interval
            self._publish()
            wait = self._until_next(next_read) if busy else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _until_next(self, next_read: float) -> float:
        """Seconds to the next read or the next overdue bound, whichever comes first."""
        now_wall = self._clock()
        wait = max(0.0, next_read - time.monotonic())
        for name in self._active_since:
            bound = self.bound(name)
            if bound is not None:
                due = self._busy_since(name) + bound - now_wall
                if due > 0:
                    wait = min(wait, due + 0.01)
        return wait

    async def _read_once(self) -> None:
        began, at = time.monotonic(), self._clock()
        self._last_began = began
        try:
            activities, typical = await self._query()
        except SchemaMismatch as refused:
            self._failed("refused", str(refused))
            if self.refusal != str(refused):
                log.error("signals_refused", reason=str(refused))
            self.refusal = str(refused)
            return
        except DatabaseUnavailable as error:
            self._failed("failed", str(error))
            return
        finally:
            self._metrics.signals_read_duration.observe(time.monotonic() - began)
        self._metrics.signals_reads.labels("ok").inc()
        self.refusal = self.error = None
        self._typical = typical
        self._reading = Reading(began, at, activities, typical)
        for name, answer in activities.items():
            if name not in self._active_since:
                continue
            stalled = answer.get("stalled")
            if isinstance(stalled, int) and stalled > 0:
                self._stalled_since.setdefault(name, at)
            else:
                self._stalled_since.pop(name, None)

    def _failed(self, outcome: str, reason: str) -> None:
        self._metrics.signals_reads.labels(outcome).inc()
        if self.error is None:
            log.warning("signals_read_failed", reason=reason)
        self.error = reason
        self._reading = None  # the gauges say NaN, never the last value

    async def _query(self) -> tuple[dict[str, Mapping[str, Any]], Mapping[str, Any]]:
        timeout = self._settings.read_timeout
        canceled = f"signals read ran past signals.read_timeout ({timeout:g}s)"
        # The statement timeout is signals.read_timeout, for this transaction only (the
        # pool's connections have details.statement_timeout).
        async with (
            self._pool.round_trip(
                timeout * 2 + 1,
                "signals read",
                "the signals read",
                {psycopg.errors.QueryCanceled: canceled},
            ) as conn,
            conn.transaction(),
        ):
            await conn.execute(TIMEOUT, (f"{round(timeout * 1000)}ms",))
            cursor = await conn.execute(COMMENT)
            row = await cursor.fetchone()
            self._check_fingerprint(row[0] if row else None)
            cursor = await conn.execute(READ, (self._settings.depth_cap,))
            row = await cursor.fetchone()
        assert row is not None
        answer, typical = json.loads(row[0]), json.loads(row[1] or "{}")
        if not isinstance(answer, dict) or sorted(answer) != sorted(self._activities):
            raise SchemaMismatch([_REINSTALL])
        return answer, typical if isinstance(typical, dict) else {}

    def _check_fingerprint(self, comment: Any) -> None:
        if comment is None:
            raise SchemaMismatch(
                [f"{FUNCTION}(integer) is missing: run `stability-relay db install`"]
            )
        found = FINGERPRINT.search(str(comment))
        if found is None or found.group(1) != self._fingerprint:
            raise SchemaMismatch([_REINSTALL])

    def _publish(self) -> None:
        now = self._clock()
        overdue: dict[str, tuple[float, float]] = {}
        for name in self._active_since:
            bound = self.bound(name)
            since = self._busy_since(name)
            if bound is not None and now >= since + bound:
                overdue[name] = (since, bound)
        self._stability.update_signals(dict(self._stalled_since), overdue)

    # -- what others read ------------------------------------------------------------------
    def bound(self, name: str) -> float | None:
        """The activity's overdue bound in seconds, None when it has none (yet)."""
        activity = self._activities.get(name)
        if activity is None:
            return None
        if activity.overdue_after is not None:
            return activity.overdue_after
        typical = self._typical.get(name)
        if not isinstance(typical, dict):
            return None
        count, p90 = typical.get("count"), typical.get("p90_s")
        if not isinstance(count, int) or count < self._settings.overdue_min_periods:
            return None
        if not isinstance(p90, int | float):
            return None
        return max(self._settings.overdue_factor * float(p90), self._settings.overdue_min_bound)

    def _busy_since(self, name: str) -> float:
        since = self._active_since[name][1]
        typical = self._typical.get(name)
        opened = typical.get("open_since") if isinstance(typical, dict) else None
        if isinstance(opened, str):
            with contextlib.suppress(ValueError):
                began = datetime.fromisoformat(opened).timestamp()
                if began >= self._ended.get(name, -math.inf):
                    since = min(since, began)
        return since

    def _answer(self, name: str) -> Mapping[str, Any] | None:
        """The latest read's answer for an active activity, if it is valid and fresh."""
        reading, seen = self._reading, self._active_since.get(name)
        if reading is None or seen is None or reading.began < seen[0]:
            return None
        stale_after = 2 * self._settings.interval + self._settings.read_timeout
        if time.monotonic() - reading.began > stale_after:
            return None
        answer = reading.activities.get(name)
        return answer if isinstance(answer, Mapping) else None

    def value(self, kind: str, name: str) -> float:
        """A gauge's value at scrape time: ``depth``, ``oldest_age_s``, ``stalled`` or
        ``overdue``. NaN while the state is unknown or the read is not valid."""
        snapshot = self._stability.current
        active = dict(snapshot.activities).get(name)
        if active is None:
            return math.nan
        if kind == "overdue":
            return 1.0 if any(s.activity == name for s in snapshot.overdue) else 0.0
        if not active:
            return 0.0  # no active rows: nothing to read
        if kind == "stalled" and self._activities[name].stalled is None:
            return 0.0
        answer = self._answer(name)
        if answer is None:
            return math.nan
        number = answer.get(kind)
        return float(number) if isinstance(number, int | float) else 0.0

    def details(self) -> tuple[dict[str, dict[str, Any]], str | None]:
        """:meth:`describe`, and why the signals cannot be read (None when they can)."""
        return self.describe(), self.refusal or self.error

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per activity, what the details show: ``depth``, ``depth_capped``, ``oldest_age_s``,
        ``stalled`` (rows), ``stalled_since``, ``overdue``, ``overdue_bound_s``,
        ``busy_since``; numbers are null when unknown (see :meth:`value`)."""
        result: dict[str, dict[str, Any]] = {}
        snapshot = self._stability.current
        for name, activity in self._activities.items():
            depth = self.value("depth", name)
            age = self.value("oldest_age_s", name) if activity.age_column else math.nan
            stalled = self.value("stalled", name) if activity.stalled else math.nan
            bound = self.bound(name)
            busy = self._busy_since(name) if name in self._active_since else None
            result[name] = {
                "depth": _number(depth),
                "depth_capped": not math.isnan(depth) and depth > self._settings.depth_cap,
                "oldest_age_s": _number(age),
                "stalled": _number(stalled),
                "stalled_since": _iso(self._stalled_since.get(name)),
                "overdue": any(s.activity == name for s in snapshot.overdue),
                "overdue_bound_s": None if bound is None else round(bound, 3),
                "busy_since": _iso(busy),
            }
        return result


_REINSTALL = (
    f"signals: the installed {FUNCTION}(integer) was generated from another definition of the "
    "activities (or by an older relay): run `stability-relay db install` with this config"
)


def _number(value: float) -> int | float | None:
    if math.isnan(value):
        return None
    return int(value) if value.is_integer() else round(value, 3)


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else iso_timestamp(timestamp)
