"""The relay's side of the hold: when to poll instead of waiting for hints, and when to stop.

Under load, hints cost writers more than they tell the relay: its reads are at least
``min_read_interval`` apart anyway. So a busy relay sets the database's hold flag, writers
stop notifying, and every relay polls ``is_system_stable()`` every ``min_read_interval``
until the flag is clear again. The protocol and why it loses no commit are written at the
top of ``sql/hold.sql``; this module is its bookkeeping, free of I/O:

* **polling**: the flag was seen set (or announced) and not seen clear since;
* **draining**: the flag was seen clear after polling; commits whose hint was skipped may
  still be in flight. The listener commits a transaction id of its own (``drain_starting``),
  so that the next read's snapshot lists every such writer still running; the drain ends at
  the first read whose snapshot has none of them running any more.

Every listener session starts as if coming out of a hold (``polling``), so a hold ended just
before it connected is drained too.
"""

from __future__ import annotations

import enum
from collections.abc import Collection

HOLD_ANNOUNCED = '{"hold":true}'  # system_stability_request_hold() sends it


class Step(enum.Enum):
    """What the listener does after a read."""

    NONE = enum.auto()
    RELEASE = enum.auto()  # clear the flag: the state held still for the quiet period


class Hold:
    def __init__(self, release_after: float, now: float, *, polling: bool = True) -> None:
        self._release_after = release_after
        # A session starts as if leaving a hold; without hint triggers of ours none can have
        # hidden a commit (the flag is still read: a hold set by another relay is followed).
        self.polling = polling
        # None: not draining. Bound: the transactions running in one snapshot, at most the
        # server's max_connections plus its prepared transactions.
        self._waiting_for: frozenset[str] | None = None
        self._snapshot_due = False
        self._drain_below: int | None = None
        self._quiet_since = now
        self._last_stable: bool | None = None

    @property
    def active(self) -> bool:
        """Whether the relay must poll rather than wait for hints."""
        return self.polling or self._snapshot_due or self._waiting_for is not None

    @property
    def drain_starting(self) -> bool:
        """The flag was seen clear after a hold: commit a transaction id before the next read."""
        return self._snapshot_due

    def drain_below(self, xid: int) -> None:
        """The id the listener committed: only older transactions can have skipped a hint
        unseen (a newer one that reads 1 does so under a hold announced after it)."""
        self._drain_below = xid

    @property
    def waiting(self) -> int:
        """How many transactions the drain waits for (a long one keeps the relay polling)."""
        return len(self._waiting_for or ())

    def announced(self, now: float) -> None:
        """A ``{"hold":true}`` notification: a relay (maybe this one) requested a hold."""
        self.taken(now)

    def taken(self, now: float) -> None:
        # A hold is new to this relay: it gets a full quiet period before anyone ends it.
        self.polling = True
        self._quiet_since = now

    def after_read(self, *, stable: bool, held: bool, running: Collection[str], now: float) -> Step:
        """Account for one read: the state, the flag (requested or held) and the transactions
        running in the read's own snapshot."""
        self._drain(running)
        changed = stable != self._last_stable
        self._last_stable = stable
        if not held:
            if self.polling:
                self.polling = False
                self._snapshot_due = True
            return Step.NONE
        if changed or not self.polling:
            self._quiet_since = now
        self.polling = True
        if now - self._quiet_since >= self._release_after:
            self._quiet_since = now  # a relay that re-holds at once gets a full period
            return Step.RELEASE
        return Step.NONE

    def _drain(self, running: Collection[str]) -> None:
        if self._snapshot_due:
            # This read began after the clear was seen: whatever skipped its hint either
            # committed before this snapshot (and the read saw it) or is running in it.
            self._snapshot_due = False
            below = self._drain_below
            self._waiting_for = frozenset(x for x in running if below is None or int(x) < below)
        elif self._waiting_for is not None:
            self._waiting_for = self._waiting_for.intersection(running)
        if self._waiting_for is not None and not self._waiting_for:
            self._waiting_for = None
