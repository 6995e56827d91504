"""Honest estimates of the time left: a range, where it came from, or none.

* An import job with ``total_rows``: from its own progress, sampled while it runs (the
  details, every ``SAMPLE_INTERVAL``), over the last ``WINDOW``: the rate over the whole
  window and over each half give the range. Fewer than ``MIN_SAMPLES`` samples, less than
  ``MIN_SPAN`` of them, or no progress: no estimate.
* An activity without progress (and the system as a whole): from the history of its busy
  periods (the last 7 days): the median and the 90th percentile, less the time it has run.
  Fewer than ``MIN_PERIODS`` periods, or already past the 90th percentile: no estimate.

A bad estimate is worse than none. Bound: samples of at most ``MAX_TRACKED`` jobs, each at
most ``WINDOW / SAMPLE_INTERVAL`` samples (older ones and finished jobs are dropped).

The estimates read nothing of their own: every details round (``relay/state/details.py``) is
a sample, and :class:`Sampler` asks for one every ``SAMPLE_INTERVAL`` while the system is busy,
whether or not anyone asks for the details.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from relay.errors import DatabaseUnavailable
from relay.state.stability import Stability, State
from relay.tasks import cancel_and_wait, spawn

SAMPLE_INTERVAL = 5.0
WINDOW = 120.0
MIN_SAMPLES = 3
MIN_SPAN = 10.0
MIN_PERIODS = 3
MAX_TRACKED = 1000

Estimate = dict[str, Any]


class ProgressTracker:
    """Recent (time, rows done) of each import job seen in the details."""

    def __init__(self, window: float = WINDOW, min_span: float | None = None) -> None:
        self._window = window
        self._min_span = MIN_SPAN if min_span is None else min_span
        self._samples: dict[str, deque[tuple[float, float]]] = {}

    def observe(self, key: str, done: float, now: float) -> None:
        samples = self._samples.get(key)
        if samples is None:
            if len(self._samples) >= MAX_TRACKED:
                return  # policy when full: new jobs get no estimate until others finish
            samples = self._samples[key] = deque(maxlen=int(self._window) + 1)
        if samples and now <= samples[-1][0]:
            return  # a round that began before the last sample's landed after it
        if samples and done < samples[-1][1]:
            samples.clear()  # restarted (a new phase counts again): start over
        samples.append((now, done))
        while samples and now - samples[0][0] > self._window:
            samples.popleft()

    def forget_all_but(self, keys: set[str]) -> None:
        for key in [k for k in self._samples if k not in keys]:
            del self._samples[key]

    def estimate(self, key: str, total: float) -> Estimate | None:
        samples = list(self._samples.get(key, ()))
        if len(samples) < MIN_SAMPLES:
            return None
        span = samples[-1][0] - samples[0][0]
        if span < self._min_span:
            return None
        half = len(samples) // 2
        rates = [_rate(samples), _rate(samples[: half + 1]), _rate(samples[half:])]
        if min(rates) <= 0:
            return None  # stalled in part of the window: the data cannot support a range
        remaining = max(0.0, total - samples[-1][1])
        return {
            "low_s": round(remaining / max(rates), 1),
            "high_s": round(remaining / min(rates), 1),
            "source": f"its progress over the last {human_duration(span)}",
        }


def _rate(samples: list[tuple[float, float]]) -> float:
    (t0, d0), (t1, d1) = samples[0], samples[-1]
    return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0


def from_history(typical: Mapping[str, Any] | None, now: float) -> Estimate | None:
    """From ``system_stability_typical()``'s entry for one activity."""
    if not typical or typical.get("count", 0) < MIN_PERIODS or not typical.get("open_since"):
        return None
    median, p90 = typical.get("median_s"), typical.get("p90_s")
    if median is None or p90 is None:
        return None
    started = datetime.fromisoformat(str(typical["open_since"])).timestamp()
    elapsed = max(0.0, now - started)
    high = float(p90) - elapsed
    if high <= 0:
        return None  # longer than usual already: no honest estimate
    return {
        "low_s": round(max(0.0, float(median) - elapsed), 1),
        "high_s": round(high, 1),
        "source": (
            f"the last {typical['count']} periods: median {human_duration(float(median))}, "
            f"90% within {human_duration(float(p90))}"
        ),
    }


class Estimates:
    """Puts estimates into a details answer (and keeps the progress samples)."""

    def __init__(self, tracker: ProgressTracker | None = None) -> None:
        self.tracker = tracker or ProgressTracker()
        # The estimate of the last round (for webhooks and waits): overall, else the longest
        # of the activities'.
        self.latest: Estimate | None = None

    def annotate(
        self, details: dict[str, Any], typical: Mapping[str, Any], now: float | None = None
    ) -> dict[str, Any]:
        now = time.time() if now is None else now
        seen: set[str] = set()
        activities = details.get("activities") or {}
        for name, group in activities.items():
            if not isinstance(group, dict):
                continue
            estimates = []
            for item in group.get("items") or []:
                estimate = self._item_estimate(name, item, now, seen)
                if estimate is not None:
                    item["eta"] = estimate
                    estimates.append(estimate)
            if not group.get("active"):
                group["eta"] = None
            elif estimates:
                group["eta"] = _widest(estimates)
            else:
                group["eta"] = from_history(typical.get(name), now)
        self.tracker.forget_all_but(seen)
        overall = None if details.get("system_stable") else from_history(typical.get(""), now)
        details["eta"] = overall
        _copy_to_seed_lists(details)
        self.latest = overall or _longest(activities)
        return details

    def _item_estimate(
        self, activity: str, item: Any, now: float, seen: set[str]
    ) -> Estimate | None:
        if not isinstance(item, dict):
            return None
        total, done = item.get("total_rows"), item.get("imported_rows")
        if not isinstance(total, int | float) or not isinstance(done, int | float) or total <= 0:
            return None
        key = f"{activity}:{item.get('id')}:{item.get('state')}"
        seen.add(key)
        self.tracker.observe(key, float(done), now)
        return self.tracker.estimate(key, float(total))


def _widest(estimates: list[Estimate]) -> Estimate:
    """The activity is done when its slowest job is: the latest of the ranges."""
    latest = max(estimates, key=lambda e: e["high_s"])
    return {
        "low_s": max(e["low_s"] for e in estimates),
        "high_s": latest["high_s"],
        "source": latest["source"],
    }


def _longest(activities: Any) -> Estimate | None:
    if not isinstance(activities, dict):
        return None
    found = [g["eta"] for g in activities.values() if isinstance(g, dict) and g.get("eta")]
    return max(found, key=lambda e: e["high_s"]) if found else None


class Sampler:
    """While the system is busy, a details round every ``SAMPLE_INTERVAL`` (``sample``, i.e.
    ``Details.fetch``): each is a progress sample for the estimates. ``start()`` then
    ``aclose()``; both idempotent, not reopenable."""

    def __init__(self, stability: Stability, sample: Callable[[], Awaitable[object]]) -> None:
        self._stability = stability
        self._sample = sample
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("a closed estimates sampler cannot be started again")
        if self._task is None:
            self._task = spawn(self._run(), "relay-details-sampler")

    async def aclose(self, timeout: float | None = None) -> None:
        """Cancels the round it waits for (the round itself is shielded: it lands for the
        details' other callers)."""
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._task, timeout)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            if self._stability.current.state is State.PROCESSING:
                with contextlib.suppress(DatabaseUnavailable):
                    await self._sample()


def _copy_to_seed_lists(details: dict[str, Any]) -> None:
    """The seed's lists hold the same rows (as copies): give them the same estimates."""
    by_id = {
        (item.get("id"), item.get("state")): item["eta"]
        for group in (details.get("activities") or {}).values()
        if isinstance(group, dict)
        for item in group.get("items") or []
        if isinstance(item, dict) and "eta" in item
    }
    for key in ("import_jobs", "analytics_tasks"):
        for item in details.get(key) or []:
            estimate = (
                by_id.get((item.get("id"), item.get("state"))) if isinstance(item, dict) else None
            )
            if estimate is not None:
                item["eta"] = estimate


def human_duration(seconds: float) -> str:
    """``"4 min 12 s"``, ``"2 h 3 min"``, ``"3 d 4 h"``: the two largest units, whole numbers."""
    total = int(seconds)
    if total < 1:
        return "less than a second"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    first = next(i for i, (value, _unit) in enumerate(parts) if value)
    shown = [f"{value} {unit}" for value, unit in parts[first : first + 2] if value]
    return " ".join(shown)


EN_DASH = "\u2013"


def _half_up(value: float) -> int:
    """JavaScript's Math.round (half up), not Python's round (half to even): the page and
    the server must word the same estimate alike (tests/browser/test_eta_wording.py)."""
    return math.floor(value + 0.5)


def approx_parts(seconds: float) -> list[tuple[int, str]]:
    """A rounded duration, as the status page writes one: 45 s, 4 min, 1 h 25 min, 2 d 3 h.
    Under 10 s whole seconds (at least 1), under a minute 5 s steps, then minutes, from an
    hour to ten 5-minute steps, then hours, from 48 h days and hours."""
    s = max(0.0, seconds)
    if s < 59.5:
        n = max(1, _half_up(s)) if s < 10 else _half_up(s / 5) * 5
        if n < 60:
            return [(n, "s")]
    minutes = max(1, _half_up(s / 60))
    if minutes < 60:
        return [(minutes, "min")]
    if minutes < 600:
        hours, rest = divmod(_half_up(minutes / 5) * 5, 60)
        return [(hours, "h"), (rest, "min")] if rest else [(hours, "h")]
    hours = _half_up(s / 3600)
    if hours < 48:
        return [(hours, "h")]
    days, rest = divmod(hours, 24)
    return [(days, "d"), (rest, "h")] if rest else [(days, "d")]


def _parts_text(parts: list[tuple[int, str]]) -> str:
    return " ".join(f"{value} {unit}" for value, unit in parts)


def eta_text(estimate: Mapping[str, Any]) -> str:
    """``about 4-6 min left``, ``about 5 min left`` when the range rounds to one, ``about
    45 s - 2 min left``, ``less than 2 min left``, ``almost done`` (each dash an en dash): the
    status page's words for the same estimate."""
    low, high = estimate.get("low_s"), estimate.get("high_s")
    low = high if low is None else low
    high = low if high is None else high
    low_s, high_s = sorted((max(0.0, float(low or 0)), max(0.0, float(high or 0))))
    if high_s < 1:
        return "almost done"
    upper = approx_parts(high_s)
    if low_s < 1:
        return f"less than {_parts_text(upper)} left"
    lower = approx_parts(low_s)
    low_text, high_text = _parts_text(lower), _parts_text(upper)
    if low_text == high_text:
        return f"about {high_text} left"
    if len(lower) == 1 and len(upper) == 1 and lower[0][1] == upper[0][1]:
        return f"about {lower[0][0]}{EN_DASH}{high_text} left"
    return f"about {low_text} {EN_DASH} {high_text} left"
