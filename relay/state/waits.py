"""Read-your-writes: fresh reads, `?expect=`, and waiting until a condition has held.

A *fresh* read is one whose snapshot is taken after the request arrived: whatever the caller
committed before asking is in it. Concurrent fresh requests share reads: a request joins the
next read that has not started yet (never one already running, whose snapshot may predate
it), so at most one read runs and one waits, however many requests there are. Bound:
``wait.max_fresh_waiting`` requests in line; past that, 503. :func:`fresh_reads` builds that
shared read on the relay's read pool (``relay/state/readpool.py``).

``GET /api/system-status/wait?until=stable|processing&stable_for=30s&timeout=10m&activity=N``
starts with a fresh read and answers once the condition has held for ``stable_for``
(``held=12s``: what an earlier round's 408 said in ``held_s``, for clients that ask in short
rounds). Only fresh reads confirm it; every read of the relay's listener (after a hint, or its
reconcile) triggers one, and a relay state that breaks the condition restarts the clock, so a
wait never ends early, only perhaps a little late. Answers: 200 ``met``; 408 ``timeout`` (with
``held_s``); 409 ``stalled`` or ``overdue`` when waiting for ``stable`` while the work waited for
(``activity``, or any) is stalled or overdue (relay/state/stability.py's signals, listed under
``signals``, stalled first): a CI job learns at once that the wait would last until its
timeout (``end_on=stalled`` ends on stalled work only, ``end_on=none`` waits anyway; the
default is ``stalled,overdue``); 503 ``unknown`` when the last read could not reach the
database (it never says stable then); 429 past ``wait.max_waiters``, or past
``wait.max_waiters_per_address`` from one client address (the HTTP layer's, by its
trusted-proxy rule), so that one client cannot take every slot; 400
for a bad query. ``timeout_status=200`` ends a round that timed out with 200 (the body still
says ``"result": "timeout"``) instead of 408: a browser sends a request that ended 408 on a
reused connection once more (Chromium does), which doubles a polling client's rounds.

This module holds the waiting; ``relay/http/api.py`` parses the query into a :class:`Wait`
and turns each ending (and :class:`TooManyWaiters`) into its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from relay.config import WaitConfig
from relay.errors import DatabaseUnavailable
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.state.readpool import ReadPool
from relay.state.sharedread import SharedRead
from relay.state.stability import Signal, Snapshot, Stability

log = get_logger("relay.state.waits")

Until = Literal["stable", "processing"]
SIGNALS = ("stalled", "overdue")  # the order in which a wait names them: the worse first
# Every activity's truth (generated from the activities: relay/source/activities/reads.py).
ACTIVITIES = "SELECT public.system_stability_activities()::text"

# Who asks (``relay/http/access.py``: the socket's peer, or behind a trusted proxy the
# client named by X-Forwarded-For). A request without it is not limited per address.


@dataclass(frozen=True, slots=True)
class Wait:
    """What a long poll waits for: ``until`` held for ``stable_for`` (``held`` of it already,
    in the caller's previous round), at most ``timeout``; ``end_on``: the signals that end a
    wait for stable early."""

    until: Until = "stable"
    stable_for: float = 0.0
    timeout: float = 600.0
    activity: str | None = None
    held: float = 0.0
    end_on: frozenset[str] = frozenset(SIGNALS)


class TooManyWaiters(Exception):
    """Past ``wait.max_waiters``, or one address's share of them (the message says which)."""


async def read_activities(pool: ReadPool) -> dict[str, Any]:
    """Every activity's truth, read now on ``pool``: one fresh read."""
    row = await pool.row(ACTIVITIES)
    parsed = json.loads(str(row[0]))
    if not isinstance(parsed, dict):
        raise DatabaseUnavailable("public.system_stability_activities() gave no object")
    return parsed


def fresh_reads(
    pool: ReadPool, settings: WaitConfig, metrics: Metrics
) -> SharedRead[dict[str, Any]]:
    """The fresh reads that ``?fresh=1``, ``?expect=`` and the long polls share (module
    docstring), counted in ``relay_fresh_reads_total``."""
    return SharedRead(
        functools.partial(read_activities, pool),
        name="fresh-read",
        max_waiting=settings.max_fresh_waiting,
        counter=metrics.fresh_reads,
    )


class Waits:
    """``?fresh=1``, ``?expect=`` and the long poll; the waiters' one observer of the state."""

    def __init__(
        self,
        stability: Stability,
        fresh: SharedRead[dict[str, Any]],
        settings: WaitConfig,
        metrics: Metrics,
        eta: Callable[[], dict[str, Any] | None] = lambda: None,
    ) -> None:
        self._stability = stability
        self._eta = eta
        self._fresh = fresh
        self._settings = settings
        self._metrics = metrics
        self._waiters: set[_Waiter] = set()
        self._per_address: Counter[str] = Counter()
        self._closed = False
        metrics.waiters.set_function(lambda: float(len(self._waiters)))

    def on_change(self, snapshot: Snapshot) -> None:
        for waiter in self._waiters:
            waiter.saw(snapshot)

    async def aclose(self, timeout: float | None = None) -> None:
        """At shutdown: every open wait answers 503 unknown at once (its client asks again,
        of another relay or after the restart). Idempotent; returns at once, whatever
        ``timeout``."""
        self._closed = True
        for waiter in self._waiters:
            waiter.closing = True
            waiter.changed.set()

    def on_read(self) -> None:
        """The listener read the truth (after a hint, or its reconcile): a commit a waiter
        waits for may be in, even if the relay's state did not change (start and end of a
        job within one read): confirm with a fresh read."""
        for waiter in self._waiters:
            waiter.changed.set()

    @property
    def max_timeout(self) -> float:
        """The longest ``timeout`` (and ``stable_for``) a wait may ask for."""
        return self._settings.max_timeout

    def activities(self) -> list[str]:
        """The activities a wait may name."""
        return [name for name, _active in self._stability.current.activities]

    async def read_fresh(self) -> dict[str, Any]:
        """The state described from a fresh read (``?fresh=1``); ``DatabaseUnavailable`` when
        the read fails or an activity read NULL or is missing."""
        try:
            body = self._stability.describe(await self._fresh.read())
            if body["state"] == "unknown":
                raise DatabaseUnavailable("an activity read NULL or is missing")
        except DatabaseUnavailable as error:
            log.warning("fresh_read_failed", reason=str(error))
            raise
        return body

    async def wait(self, asked: Wait, address: str | None) -> tuple[str, dict[str, Any]]:
        """Wait as ``asked``: how it ended (``met``, ``timeout``, ``unknown``, ``stalled`` or
        ``overdue``) and the answer's body. ``address``: who asks, for the per-address share;
        :class:`TooManyWaiters` past a limit."""
        if len(self._waiters) >= self._settings.max_waiters or self._closed:
            raise TooManyWaiters("too many waiters")
        share = self._settings.max_waiters_per_address
        if address is not None and share is not None and self._per_address[address] >= share:
            # Policy past one address's share: refused, so one client cannot take every slot.
            raise TooManyWaiters(f"too many waiters from one address (at most {share})")
        waiter = _Waiter(asked.until, asked.activity, asked.end_on)
        self._waiters.add(waiter)
        if address is not None:
            self._per_address[address] += 1
        started = time.monotonic()
        try:
            result, body = await self._wait(
                waiter, asked.stable_for, started + asked.timeout, asked.held
            )
        finally:
            self._waiters.discard(waiter)
            if address is not None:
                self._per_address[address] -= 1
                if self._per_address[address] <= 0:
                    del self._per_address[address]
        answer = {
            "result": result,
            "until": asked.until,
            "activity": asked.activity,
            "stable_for_s": asked.stable_for,
            "waited_s": round(time.monotonic() - started, 3),
            **body,
        }
        return result, answer

    async def _wait(
        self, waiter: _Waiter, stable_for: float, deadline: float, held: float = 0.0
    ) -> tuple[str, dict[str, Any]]:
        """``held``: how long the condition already held in the caller's previous round (a
        client whose proxy cuts long requests asks in short rounds); counted only if this
        round's first read confirms it."""
        met_since: float | None = None
        first = True
        body: dict[str, Any] = {}
        while True:
            waiter.changed.clear()
            waiter.broken = False
            truth: dict[str, Any] | None
            try:
                truth = await self._fresh.read()
            except DatabaseUnavailable:
                truth, body = None, {"stable": None, "state": "unknown"}
            else:
                body = self._stability.describe(truth)
                body["eta"] = self._eta() if body["state"] == "processing" else None
                if body["state"] == "unknown":
                    truth = None  # an activity read NULL or is missing: it cannot tell
            now = time.monotonic()
            if waiter.closing:
                return "unknown", {"stable": None, "state": "unknown"}
            holds = truth is not None and not waiter.broken and waiter.holds(truth)
            if holds and first:
                met_since = now - held
            met_since = (met_since or now) if holds else None
            first = False
            if met_since is not None and now - met_since >= stable_for:
                return "met", body
            if truth is not None and not holds:
                signals = waiter.signals(self._stability.current)
                if signals:
                    body["signals"] = [_signal_json(kind, s, time.time()) for kind, s in signals]
                    return signals[0][0], body
            if now >= deadline:
                body["held_s"] = round(now - met_since, 3) if met_since is not None else 0.0
                return ("unknown" if truth is None else "timeout"), body
            wake = min(deadline, now + self._settings.recheck)
            if met_since is not None:
                wake = min(wake, met_since + stable_for)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake - now)):
                    await waiter.changed.wait()
            if waiter.broken:
                met_since = None


class _Waiter:
    """One long poll: its condition, and what the relay's listener saw meanwhile."""

    __slots__ = ("activity", "broken", "changed", "closing", "end_on", "until")

    def __init__(
        self, until: Until, activity: str | None, end_on: frozenset[str] = frozenset()
    ) -> None:
        self.until = until
        self.activity = activity
        self.end_on = end_on
        self.changed = asyncio.Event()
        self.broken = False
        self.closing = False

    def holds(self, truth: Mapping[str, Any]) -> bool:
        if self.activity is not None:
            busy = truth.get(self.activity) is True
        else:
            busy = any(value is True for value in truth.values())
        return busy if self.until == "processing" else not busy

    def signals(self, snapshot: Snapshot) -> list[tuple[str, Signal]]:
        """The signals that end this wait early, worst first."""
        groups = {"stalled": snapshot.stalled, "overdue": snapshot.overdue}
        return [
            (kind, signal)
            for kind in SIGNALS
            if kind in self.end_on
            for signal in groups[kind]
            if self.activity is None or signal.activity == self.activity
        ]

    def saw(self, snapshot: Snapshot) -> None:
        """A change the listener read: confirm with a fresh read; a breach restarts the clock."""
        known = dict(snapshot.activities)
        if all(isinstance(v, bool) for v in known.values()) and not self.holds(known):
            self.broken = True
        self.changed.set()


def _signal_json(kind: str, signal: Signal, now: float) -> dict[str, Any]:
    """A signal as a wait names it: the snapshot's fields, its kind, and how long so far."""
    return {"signal": kind, **signal.as_json(), "for_s": round(max(0.0, now - signal.since), 3)}
