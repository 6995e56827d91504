"""The stability state: ``stable``, ``processing`` or ``unknown``, numbered and timed.

The listener feeds it the truth (``is_system_stable()`` read after each hint) or
``unknown`` when the database is gone; it tells its observers (SSE fan-out,
metrics, webhooks, logs) about each transition, in order, synchronously.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from relay.logs import get_logger

log = get_logger("relay.stability")


class State(StrEnum):
    STABLE = "stable"
    PROCESSING = "processing"
    UNKNOWN = "unknown"

    @classmethod
    def from_truth(cls, stable: bool) -> State:
        return cls.STABLE if stable else cls.PROCESSING

    @property
    def stable(self) -> bool | None:
        """The seed's ``stable`` field: ``None`` while unknown."""
        if self is State.UNKNOWN:
            return None
        return self is State.STABLE


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One state and where it came from. ``seq`` grows by one per transition."""

    state: State
    seq: int
    since: float

    @property
    def stable(self) -> bool | None:
        return self.state.stable

    def as_json(self) -> dict[str, Any]:
        """The SSE payload: the seed's ``stable`` plus ``state``, ``since`` and ``seq``."""
        return {
            "stable": self.stable,
            "state": self.state.value,
            "since": iso_timestamp(self.since),
            "seq": self.seq,
        }


Observer = Callable[[Snapshot], None]


class Stability:
    """Holds the current :class:`Snapshot` and announces every change to its observers.

    Sequence numbers start from the wall clock (milliseconds times 1,000, plus a random
    part below 1,000), so they keep growing across restarts, and a client's
    ``Last-Event-ID`` from an earlier process, or from another relay behind the same
    proxy, does not match a different event by accident.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        now = clock()
        start = int(now * 1000) * 1000 + random.randrange(1000)
        self._current = Snapshot(State.UNKNOWN, seq=start, since=now)
        self._observers: list[Observer] = []

    @property
    def current(self) -> Snapshot:
        return self._current

    def subscribe(self, observer: Observer) -> None:
        self._observers.append(observer)

    def unsubscribe(self, observer: Observer) -> None:
        """Stop telling ``observer`` (a component that closed); unknown observers are ignored."""
        if observer in self._observers:
            self._observers.remove(observer)

    def update(self, state: State) -> bool:
        """Move to ``state``; return whether that was a transition."""
        old = self._current
        if state is old.state:
            return False
        self._current = Snapshot(state=state, seq=old.seq + 1, since=self._clock())
        log.info(
            "transition",
            state=state.value,
            previous=old.state.value,
            seq=self._current.seq,
            previous_duration_s=round(self._current.since - old.since, 3),
        )
        for observer in self._observers:
            try:
                observer(self._current)
            except Exception:  # one broken observer must not starve the others
                log.exception("observer_failed", observer=getattr(observer, "__qualname__", "?"))
        return True


def iso_timestamp(timestamp: float) -> str:
    """``2026-11-30T00:25:01.123Z``: the ``since`` field everywhere."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
