"""One configured webhook, the observer side: synchronous, cheap (no I/O, no await).

    snapshot ─▶ hysteresis (``min_duration``) ─▶ settled state ─▶ ``on`` filter ─▶ mailbox

and the signals (stalled, overdue) compared with those the target was told of. The
mailbox (relay/fanout/webhooks/mailbox.py) holds what is owed; the worker
(relay/fanout/webhooks/worker.py) sends it. What the target has seen and been told is
persisted through the state file (relay/fanout/webhooks/statefile.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from relay.config import WebhookConfig
from relay.fanout.webhooks.kinds import render
from relay.fanout.webhooks.mailbox import Mailbox
from relay.fanout.webhooks.owed import Delivery, SignalDelivery, SignalKey
from relay.fanout.webhooks.payloads import SIGNAL_KINDS, SignalEvent, Transition
from relay.fanout.webhooks.records import Mark, Pending, TargetRecord
from relay.fanout.webhooks.signing import new_message_id
from relay.fanout.webhooks.statefile import StateFile
from relay.fanout.webhooks.worker import Worker
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.state.stability import Snapshot, State

# The estimate of the time left when processing began, if one can be had (relay/state/eta.py).
EtaSource = Callable[[], dict[str, Any] | None]

log = get_logger("relay.fanout.webhooks")


class Target:
    """One configured webhook: hysteresis, filter, mailbox, and the task that delivers."""

    def __init__(
        self,
        hook: WebhookConfig,
        metrics: Metrics,
        store: StateFile,
        public_url: str | None,
        rng: random.Random,
        eta: EtaSource = lambda: None,
    ) -> None:
        self.hook = hook
        self._eta = eta
        self.name = hook.name
        self._on = frozenset(State(s) for s in hook.on)
        self._store = store
        self._public_url = public_url
        # What this target has seen and been told (persisted through the StateFile).
        self.settled: Mark | None = None
        self.delivered: Mark | None = None
        self._filtered_seq: int | None = None
        self._settled_confirmed = True  # False while `settled` is only the file's word
        # Hysteresis: the state waiting to hold for min_duration.
        self._candidate: Snapshot | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.box = Mailbox(self.name, metrics)
        # Signals: the ones this target was told of (key -> the event that told it; False
        # while only the state file's word).
        self._wants_signals = State.PROCESSING in self._on
        self._told: dict[SignalKey, tuple[SignalEvent, bool]] = {}
        self.disabled = False
        self.closing = False
        self._worker = Worker(self, metrics, store, rng)
        metrics.webhook_pending.labels(self.name).set_function(lambda: float(self.pending))

    @property
    def pending(self) -> int:
        """Deliveries not yet delivered: a state's (at most 2) and signal events' (at most one
        per signal and activity)."""
        return self.box.pending

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The worker's task, once started."""
        return self._worker.task

    # Persistence.
    def restore(self, record: TargetRecord | None, *, confirmed: bool = False) -> None:
        """Take over a record: from the state file, or from this target's previous config."""
        if record is None:
            return
        # Encode first: a record that cannot be encoded raises before anything is taken over.
        pending = record.pending
        told = record.told
        queued = self._delivery(pending.item, pending.id, told) if pending else None
        signals = {p.item.key: self._signal_delivery(p.item, p.id, told) for p in record.signals}
        self.settled = record.settled
        self.delivered = record.delivered
        self._filtered_seq = record.filtered_seq
        self._settled_confirmed = confirmed or record.settled is None
        self._told = {event.key: (event, confirmed) for event in record.told}
        self.box.signals = signals
        if pending is not None:
            transition = pending.item
            self.box.queued = queued
            log.info(
                "webhook_pending_restored",
                webhook=self.name,
                state=transition.state.value,
                seq=transition.seq,
                webhook_id=pending.id,
            )

    def record(self) -> TargetRecord:
        owed, signals = self.box.owed()
        return TargetRecord(
            settled=self.settled,
            delivered=self.delivered,
            filtered_seq=self._filtered_seq,
            pending=Pending(owed.id, owed.transition) if owed else None,
            told=tuple(event for event, _confirmed in self._told.values()),
            signals=tuple(Pending(item.id, item.event) for item in signals),
        )

    # Life cycle.
    def start(self, session: aiohttp.ClientSession) -> None:
        """Start the worker; a second call is a no-op."""
        self._worker.start(session)

    def begin_close(self) -> None:
        """Stop taking work: cancel the hysteresis timer, end retry waits at once."""
        self.closing = True
        self.cancel_timer()
        self._worker.wake()

    def disable(self) -> None:
        """The receiver said 410 Gone: nothing more is sent to it until restart."""
        self.disabled = True
        self.cancel_timer()
        self.box.supersede_all()

    # The observer side: synchronous, called from Stability.update().
    def observe(self, snapshot: Snapshot) -> None:
        if self.disabled or self.closing:
            return
        if snapshot.state is State.UNKNOWN and State.UNKNOWN not in self._on:
            return  # invisible to this target: as if the previous state went on
        candidate = self._candidate
        if candidate is not None and snapshot.state is candidate.state:
            return  # back to the state already waiting out its min_duration
        self.cancel_timer()
        self._candidate = None
        if self.settled is not None and snapshot.state is self.settled.state:
            self._settled_confirmed = True
            return  # flapped back before the other state held: nothing to send
        if self.hook.min_duration <= 0:
            self._settle(snapshot)
            return
        self._candidate = snapshot
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.hook.min_duration, self._settle_candidate)

    def observe_signals(self, snapshot: Snapshot) -> None:
        """Compare the snapshot's signals with those this target was told of."""
        if self.disabled or self.closing or not self._wants_signals:
            return
        if snapshot.state is State.UNKNOWN:
            return  # no database, no news: signals stay as they were
        now = {
            (kind, signal.activity): signal
            for kind, group in zip(SIGNAL_KINDS, (snapshot.stalled, snapshot.overdue), strict=True)
            for signal in group
        }
        active = {name for name, is_active in snapshot.activities if is_active}
        changed = False
        for (kind, activity), signal in now.items():
            told = self._told.get((kind, activity))
            # Told already: the same signal (a new bound alone is no news), or the state
            # file's word after a restart, whose since was this relay's first read of it and
            # so differs in the new process: the receiver heard of it, and it still holds.
            if told is not None and (told[0].since == signal.since or not told[1]):
                if not told[1]:
                    self._told[(kind, activity)] = (told[0], True)
                continue
            event = SignalEvent(
                kind, activity, signal.label, signal.since, signal.bound, snapshot.at, snapshot.seq
            )
            self._told[event.key] = (event, True)
            self._queue_signal(event)
            changed = True
        for key in [key for key in self._told if key not in now]:
            told_event, confirmed = self._told[key]
            still_running = key[1] in active
            if still_running and not confirmed:
                # Only the state file's word, and the signals may not have been read yet
                # since the start: the end is told once the activity ends, or when a read
                # finds the signal again and then without it.
                continue
            del self._told[key]
            self._queue_signal(
                dataclasses.replace(
                    told_event,
                    at=snapshot.at,
                    seq=snapshot.seq,
                    cleared="recovered" if still_running else "finished",
                )
            )
            changed = True
        if changed:
            self._store.changed()
            self._worker.wake()

    def _queue_signal(self, event: SignalEvent) -> None:
        key = event.key
        self.box.signal_generation[key] = self.box.signal_generation.get(key, 0) + 1
        waiting = self.box.signals.pop(key, None)
        if waiting is not None:
            self.box.supersede(waiting)
            if event.cleared and not waiting.event.cleared:
                return  # came and went unsent: the receiver hears of neither
        self.box.signals[key] = self._signal_delivery(event, new_message_id(), self.attention())

    def attention(self) -> list[SignalEvent]:
        """The signals this target was told of that still hold (a status monitor's down)."""
        return [event for event, _confirmed in self._told.values()]

    def _signal_delivery(
        self, event: SignalEvent, message_id: str, attention: Sequence[SignalEvent]
    ) -> SignalDelivery:
        request = render(self.hook, event, self._public_url, attention)
        generation = self.box.signal_generation.get(event.key, 0)
        return SignalDelivery(message_id, event, request, generation)

    def _settle_candidate(self) -> None:
        self._timer = None
        if self._candidate is not None and not self.closing:
            self._settle(self._candidate)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _settle(self, snapshot: Snapshot) -> None:
        """``snapshot`` held long enough: it is this target's new state."""
        previous = self.settled
        duration = None
        if previous is not None and self._settled_confirmed:
            duration = max(0.0, snapshot.since - previous.since)
        self.settled = Mark(snapshot.state, snapshot.seq, snapshot.since)
        self._settled_confirmed = True
        self._candidate = None
        self.box.generation += 1  # anything older still waiting is now superseded
        if snapshot.state not in self._on:
            self._filtered_seq = snapshot.seq
            self.box.supersede_queued()
        else:
            transition = Transition(
                state=snapshot.state,
                previous_state=previous.state if previous else None,
                since=snapshot.since,
                previous_duration=duration,
                seq=snapshot.seq,
                running=snapshot.running,
                eta=self._eta() if snapshot.state is State.PROCESSING else None,
            )
            if self.box.queued is not None:
                self.box.supersede(self.box.queued)
            self.box.queued = self._delivery(transition, new_message_id(), self.attention())
        self._store.changed()
        self._worker.wake()

    def _delivery(
        self, transition: Transition, message_id: str, attention: Sequence[SignalEvent]
    ) -> Delivery:
        request = render(self.hook, transition, self._public_url, attention)
        return Delivery(message_id, transition, request, self.box.generation)

    def is_moot(self, item: Delivery) -> bool:
        """The target already has this state, and nothing it filtered out came between."""
        last = self.delivered
        if last is None or last.state is not item.transition.state:
            return False
        filtered = self._filtered_seq
        return not (filtered is not None and last.seq < filtered < item.transition.seq)
