"""Read-your-writes: fresh reads, `?expect=`, and waiting until a condition has held.

A *fresh* read is one whose snapshot is taken after the request arrived: whatever the caller
committed before asking is in it. Concurrent fresh requests share reads: a request joins the
next read that has not started yet (never one already running, whose snapshot may predate
it), so at most one read runs and one waits, however many requests there are. Bound:
``wait.max_fresh_waiting`` requests in line; past that, 503.

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
``wait.max_waiters_per_address`` from one client address (:data:`CLIENT_ADDRESS`, which the
HTTP layer sets by its trusted-proxy rule), so that one client cannot take every slot; 400
for a bad query. ``timeout_status=200`` ends a round that timed out with 200 (the body still
says ``"result": "timeout"``) instead of 408: a browser sends a request that ended 408 on a
reused connection once more (Chromium does), which doubles a polling client's rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Literal

from aiohttp import web

from relay.config import WaitConfig, parse_duration
from relay.errors import DatabaseUnavailable
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.state.sharedread import SharedRead
from relay.state.stability import Signal, Snapshot, Stability

log = get_logger("relay.state.waits")

Until = Literal["stable", "processing"]
SIGNALS = ("stalled", "overdue")  # the order in which a wait names them: the worse first

# Who asks (``relay/http/access.py``: the socket's peer, or behind a trusted proxy the
# client named by X-Forwarded-For). A request without it is not limited per address.
CLIENT_ADDRESS = web.RequestKey[str]("relay.client_address")
RETRY_AFTER = "5"


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

    async def aclose(self) -> None:
        """At shutdown: every open wait answers 503 unknown at once (its client asks again,
        of another relay or after the restart)."""
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

    async def snapshot(self, request: web.Request, current: dict[str, Any]) -> web.Response:
        """``GET /api/system-status`` with ``fresh=1`` and/or ``expect=stable|processing``."""
        fresh = request.query.get("fresh", "0") not in ("0", "", "false")
        expect = request.query.get("expect")
        if expect not in (None, "stable", "processing"):
            return _error(400, "expect: stable or processing")
        body = dict(current)
        if fresh:
            try:
                body.update(self._stability.describe(await self._fresh.read()))
                if body["state"] == "unknown":
                    raise DatabaseUnavailable("an activity read NULL or is missing")
            except DatabaseUnavailable as error:
                log.warning("fresh_read_failed", reason=str(error))
                return _json({**body, "fresh": False, "error": "the database is unavailable"}, 503)
            body["fresh"] = True
        status = 200 if expect is None or body["state"] == expect else 503
        return _json(body, status)

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /api/system-status/wait``."""
        try:
            until, stable_for, timeout, activity, held = self._parse(request)
            end_on = _end_on(request.query)
            timeout_status = _timeout_status(request.query)
        except ValueError as error:
            return _error(400, str(error))
        if len(self._waiters) >= self._settings.max_waiters or self._closed:
            return _json({"error": "too many waiters"}, 429, {"Retry-After": RETRY_AFTER})
        address = request.get(CLIENT_ADDRESS)
        share = self._settings.max_waiters_per_address
        if address is not None and share is not None and self._per_address[address] >= share:
            # Policy past one address's share: 429, so one client cannot take every slot.
            refusal = f"too many waiters from one address (at most {share})"
            return _json({"error": refusal}, 429, {"Retry-After": RETRY_AFTER})
        waiter = _Waiter(until, activity, end_on if until == "stable" else frozenset())
        self._waiters.add(waiter)
        if address is not None:
            self._per_address[address] += 1
        started = time.monotonic()
        try:
            result, body = await self._wait(waiter, stable_for, started + timeout, held)
        finally:
            self._waiters.discard(waiter)
            if address is not None:
                self._per_address[address] -= 1
                if self._per_address[address] <= 0:
                    del self._per_address[address]
        status = {
            "met": 200,
            "timeout": timeout_status,
            "unknown": 503,
            "stalled": 409,
            "overdue": 409,
        }[result]
        answer = {
            "result": result,
            "until": until,
            "activity": activity,
            "stable_for_s": stable_for,
            "waited_s": round(time.monotonic() - started, 3),
            **body,
        }
        return _json(answer, status)

    def _parse(self, request: web.Request) -> tuple[Until, float, float, str | None, float]:
        query = request.query
        until = query.get("until", "stable")
        if until not in ("stable", "processing"):
            raise ValueError("until: stable or processing")
        stable_for = _duration(query, "stable_for", 0.0)
        timeout = _duration(query, "timeout", 600.0)
        if timeout > self._settings.max_timeout:
            raise ValueError(f"timeout: at most {self._settings.max_timeout:g}s")
        if stable_for > self._settings.max_timeout:
            raise ValueError(f"stable_for: at most {self._settings.max_timeout:g}s")
        # A round may be shorter than stable_for: its 408 says how long the condition held
        # (held_s), and the next round starts from there (held).
        held = min(_duration(query, "held", 0.0), stable_for)
        activity = query.get("activity")
        known = [name for name, _active in self._stability.current.activities]
        if activity is not None and activity not in known:
            raise ValueError(f"activity: one of {', '.join(known)}")
        return until, stable_for, timeout, activity, held  # type: ignore[return-value]

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


def _timeout_status(query: Mapping[str, str]) -> int:
    """``timeout_status=408`` (the default) or ``200``: the status of a round that timed out."""
    text = query.get("timeout_status", "408").strip()
    if text not in ("408", "200"):
        raise ValueError("timeout_status: 408 or 200")
    return int(text)


def _end_on(query: Mapping[str, str]) -> frozenset[str]:
    """``end_on=stalled,overdue`` (the default), ``stalled``, ``overdue`` or ``none``."""
    text = query.get("end_on", ",".join(SIGNALS)).strip()
    if text == "none":
        return frozenset()
    kinds = frozenset(part.strip() for part in text.split(","))
    if not kinds or not kinds <= set(SIGNALS):
        raise ValueError("end_on: stalled, overdue, both (comma-separated) or none")
    return kinds


def _signal_json(kind: str, signal: Signal, now: float) -> dict[str, Any]:
    """A signal as a wait names it: the snapshot's fields, its kind, and how long so far."""
    return {"signal": kind, **signal.as_json(), "for_s": round(max(0.0, now - signal.since), 3)}


def _duration(query: Mapping[str, str], key: str, default: float) -> float:
    if key not in query:
        return default
    try:
        value = parse_duration(query[key])
    except ValueError as error:
        raise ValueError(f"{key}: {error}") from None
    if not math.isfinite(value):
        raise ValueError(f"{key}: must be finite")
    return value


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        body, status=status, headers={"Cache-Control": "no-store", **(headers or {})}
    )
