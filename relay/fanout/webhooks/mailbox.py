"""One target's mailbox: the deliveries it owes, bounded, newest superseding older.

Bound and policy: at most one delivery in the worker (``current``: being sent, or waiting
to retry) and one newer state in ``queued``; a newer settled state *supersedes* an older
delivery that is still waiting (in ``queued``, or between retries: a request on the wire is
let finish). At most one signal event waits per (signal, activity) in ``signals``; a newer
one for the same key supersedes it. Superseded deliveries are counted (``superseded``) and
logged, never sent.
"""

from __future__ import annotations

from relay.fanout.webhooks.owed import (
    Delivery,
    Owed,
    SignalDelivery,
    SignalKey,
    described,
    signal_first,
)
from relay.logs import get_logger
from relay.metrics import Metrics

log = get_logger("relay.fanout.webhooks")


class Mailbox:
    """What one target owes; ``generation`` (states) and ``signal_generation`` (per key) tell
    a delivery still wanted from a superseded one."""

    def __init__(self, name: str, metrics: Metrics) -> None:
        self.name = name
        self._metrics = metrics
        # The mailbox (newest undelivered) and the delivery the worker holds.
        self.queued: Delivery | None = None
        self.current: Owed | None = None
        self.generation = 0
        # Signal events waiting, one per key at most.
        self.signals: dict[SignalKey, SignalDelivery] = {}
        self.signal_generation: dict[SignalKey, int] = {}

    @property
    def pending(self) -> int:
        """Deliveries not yet delivered: a state's (at most 2) and signal events' (at most one
        per signal and activity)."""
        return (self.queued is not None) + (self.current is not None) + len(self.signals)

    def owed(self) -> tuple[Delivery | None, list[SignalDelivery]]:
        """The state delivery and the signal events still owed (oldest first), for the state
        file: what the worker holds counts as owed until it is delivered."""
        current = self.current
        owed = self.queued or (current if isinstance(current, Delivery) else None)
        signals = list(self.signals.values())
        if isinstance(current, SignalDelivery) and current.event.key not in self.signals:
            signals.append(current)
        signals.sort(key=signal_first)
        return owed, signals

    def take_next(self) -> Owed | None:
        """The owed delivery of the oldest snapshot (taken out of the mailbox)."""
        waiting: list[Owed] = list(self.signals.values())
        if self.queued is not None:
            waiting.append(self.queued)
        if not waiting:
            return None
        item = min(waiting, key=signal_first)
        if isinstance(item, SignalDelivery):
            del self.signals[item.event.key]
        else:
            self.queued = None
        return item

    def supersede(self, old: Owed) -> None:
        self._metrics.webhook_deliveries.labels(self.name, "superseded").inc()
        log.info("webhook_superseded", webhook=self.name, **described(old), webhook_id=old.id)

    def supersede_queued(self) -> None:
        """The state waiting in the mailbox is no longer wanted."""
        if self.queued is not None:
            self.supersede(self.queued)
            self.queued = None

    def supersede_all(self) -> None:
        """Nothing waiting will be sent (the target is disabled)."""
        self.supersede_queued()
        for waiting in self.signals.values():
            self.supersede(waiting)
        self.signals.clear()

    def is_stale(self, item: Owed) -> bool:
        if isinstance(item, SignalDelivery):
            return item.generation != self.signal_generation.get(item.event.key, 0)
        return item.generation != self.generation

    def abandon(self, item: Owed) -> None:
        """Give up a stale delivery. A signal's start that was never delivered takes its
        waiting end with it: the receiver hears of neither (never an end alone)."""
        self.supersede(item)
        self.current = None
        if isinstance(item, SignalDelivery) and not item.event.cleared:
            waiting = self.signals.get(item.event.key)
            if waiting is not None and waiting.event.cleared:
                del self.signals[item.event.key]
                self.supersede(waiting)
