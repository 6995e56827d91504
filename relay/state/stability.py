"""The stability state: ``stable``, ``processing`` or ``unknown``, numbered and timed.

The listener feeds it the truth (every activity, read after each hint) or ``unknown`` when
the database is gone; it tells its observers (SSE fan-out, metrics, webhooks, logs) about
each change, in order, synchronously. A change is a new state or, within ``processing``, a
different set of running activities (``Snapshot.new_state`` tells the two apart).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from relay.logs import get_logger

log = get_logger("relay.state.stability")


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


ActivityStates = tuple[tuple[str, bool | None], ...]  # (name, active) in config order


@dataclass(frozen=True, slots=True)
class Signal:
    """An active activity that needs a human: ``stalled`` (its declared condition holds for
    some of its active rows) or ``overdue`` (its busy period has run past its bound).

    ``since`` is when the relay first saw the signal (stalled) or when the busy period began
    (overdue); ``bound`` is the overdue bound in seconds (``None`` for stalled).
    """

    activity: str
    label: str
    since: float
    bound: float | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "activity": self.activity,
            "label": self.label,
            "since": iso_timestamp(self.since),
        }
        if self.bound is not None:
            body["bound_s"] = round(self.bound, 3)
        return body


Signals = tuple[Signal, ...]  # in config order


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One state and where it came from. ``seq`` grows by one per change.

    ``since`` is when the state began (an activity-only change keeps it); ``new_state`` says
    whether this snapshot began it; ``activities`` is each activity's truth (``None`` while
    unknown) and ``running`` the labels of the active ones. ``stalled`` and ``overdue`` are
    signals about active activities only: they never change the state ("stable" means no
    active work), and a change of them alone is a new snapshot with ``new_state`` false.
    """

    state: State
    seq: int
    since: float
    activities: ActivityStates = ()
    running: tuple[str, ...] = ()
    new_state: bool = True
    at: float = 0.0  # when this snapshot was made (``since`` for a new state)
    stalled: Signals = ()
    overdue: Signals = ()

    @property
    def stable(self) -> bool | None:
        return self.state.stable

    def as_json(self) -> dict[str, Any]:
        """The SSE payload: the seed's ``stable`` plus ``state``, ``since``, ``seq``, each
        activity's truth and the labels of those running."""
        return {
            "stable": self.stable,
            "state": self.state.value,
            "since": iso_timestamp(self.since),
            "seq": self.seq,
            "activities": dict(self.activities),
            "running": list(self.running),
            "stalled": [signal.as_json() for signal in self.stalled],
            "overdue": [signal.as_json() for signal in self.overdue],
        }


Observer = Callable[[Snapshot], None]


class Stability:
    """Holds the current :class:`Snapshot` and announces every change to its observers.

    Sequence numbers start from the wall clock (milliseconds times 1,000, plus a random
    part below 1,000), so they keep growing across restarts, and a client's
    ``Last-Event-ID`` from an earlier process, or from another relay behind the same
    proxy, does not match a different event by accident.
    """

    def __init__(
        self, labels: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._labels = dict(labels or {})
        now = clock()
        start = int(now * 1000) * 1000 + secrets.randbelow(1000)
        unknown = tuple((name, None) for name in self._labels)
        self._current = Snapshot(State.UNKNOWN, seq=start, since=now, activities=unknown, at=now)
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

    def describe(self, activities: Mapping[str, Any]) -> dict[str, Any]:
        """A truth read elsewhere (a fresh read), in the snapshot's terms."""
        known = {name: activities.get(name) for name in self._labels}
        if any(not isinstance(active, bool) for active in known.values()):
            state = State.UNKNOWN
        else:
            state = State.PROCESSING if any(known.values()) else State.STABLE
        return {
            "stable": state.stable,
            "state": state.value,
            "activities": known,
            "running": [self._labels[name] for name, active in known.items() if active],
        }

    def update_truth(self, activities: Mapping[str, bool]) -> bool:
        """The truth read from the database: each activity's state, in config order."""
        known = tuple((name, activities.get(name)) for name in self._labels)
        busy = any(active for _name, active in known)
        return self.update(State.PROCESSING if busy else State.STABLE, known)

    def update(self, state: State, activities: Sequence[tuple[str, bool | None]] = ()) -> bool:
        """Move to ``state`` (with ``activities``; all unknown when omitted); return whether
        anything changed. Signals of activities no longer active are dropped."""
        old = self._current
        known: ActivityStates = tuple(activities) or tuple((n, None) for n in self._labels)
        if state is old.state and known == old.activities:
            return False
        new_state = state is not old.state
        now = self._clock()
        # Signals end with their activity, not with the database: while unknown they stay.
        kept = {name for name, is_active in known if is_active is not False}
        self._current = Snapshot(
            state=state,
            seq=old.seq + 1,
            since=now if new_state else old.since,
            activities=known,
            running=tuple(self._labels[name] for name, active in known if active),
            new_state=new_state,
            at=now,
            stalled=tuple(s for s in old.stalled if s.activity in kept),
            overdue=tuple(s for s in old.overdue if s.activity in kept),
        )
        self._log_change(old)
        self._tell()
        return True

    def update_signals(
        self, stalled: Mapping[str, float], overdue: Mapping[str, tuple[float, float]]
    ) -> bool:
        """Set the signals: ``stalled`` maps an activity to when it was first seen stalled,
        ``overdue`` to (when its busy period began, its bound in seconds). Only active
        activities keep theirs; return whether anything changed."""
        old = self._current
        active = [name for name, is_active in old.activities if is_active is not False]
        new_stalled = tuple(
            Signal(name, self._labels[name], stalled[name]) for name in active if name in stalled
        )
        new_overdue = tuple(
            Signal(name, self._labels[name], overdue[name][0], overdue[name][1])
            for name in active
            if name in overdue
        )
        if new_stalled == old.stalled and new_overdue == old.overdue:
            return False
        now = self._clock()
        self._current = dataclasses.replace(
            old, seq=old.seq + 1, new_state=False, at=now, stalled=new_stalled, overdue=new_overdue
        )
        log.info(
            "signals_changed",
            stalled=[s.activity for s in new_stalled],
            overdue=[s.activity for s in new_overdue],
            seq=self._current.seq,
        )
        self._tell()
        return True

    def _tell(self) -> None:
        for observer in self._observers:
            try:
                observer(self._current)
            except Exception:  # one broken observer must not starve the others
                log.exception("observer_failed", observer=getattr(observer, "__qualname__", "?"))

    def _log_change(self, old: Snapshot) -> None:
        current = self._current
        running = [name for name, active in current.activities if active]
        if not current.new_state:
            log.info("activities_changed", running=running, seq=current.seq)
            return
        log.info(
            "transition",
            state=current.state.value,
            previous=old.state.value,
            seq=current.seq,
            previous_duration_s=round(current.since - old.since, 3),
            running=running,
        )


def iso_timestamp(timestamp: float) -> str:
    """``2026-11-30T00:25:01.123Z``: the ``since`` field everywhere."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
