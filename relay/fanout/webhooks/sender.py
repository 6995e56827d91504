"""The webhook sender: stability transitions in, one ordered delivery stream per target out.

Per target, from the stability observer (synchronous, cheap: no I/O, no await):

    snapshot ─▶ hysteresis (``min_duration``) ─▶ settled state ─▶ ``on`` filter ─▶ mailbox

and one named task per target (``relay-webhook-<name>``) that empties the mailbox.

Bound and policy: a target holds at most one delivery in its worker (being sent, or
waiting to retry) and one newer in its mailbox. A newer settled state *supersedes* an
older delivery that is still waiting: in the mailbox, or between retries (a request on
the wire is let finish). Receivers care about the current state; counted as
``superseded``. A delivery whose state equals the last one the target received (and
nothing the target filtered out came between) is dropped the same way.

Signals (stalled, overdue: relay/state/stability.py) are events of their own, sent to the
targets whose ``on`` lists ``processing`` (signals are about work in progress): one when a
signal appears, one when it ends (``recovered`` while the activity still runs, ``finished``
when it no longer does). They are never superseded by a state: the worker sends whatever is
owed in snapshot order (a signal before a state of the same snapshot). Bound and policy: at
most one signal event waits per (signal, activity), so at most twice the number of
activities; a newer one for the same key supersedes the one waiting, and an end that finds
its start still unsent drops both (the receiver never hears of a signal that came and went).
While the state is ``unknown`` signals are left as they were: no database, no news.

Status monitors (``uptime_kuma``, ``gatus``: relay/fanout/webhooks/kinds.py) are also told
the current status again every ``repeat`` while nothing else is sent to them, so a monitor
that watches for silence sees the relay alive. A repeat is not an item in the mailbox: when
the worker is idle and ``repeat`` has passed since its last request to the target, it sends
the last state delivered and the signals still holding, once. Bound and policy: at most one
repeat exists at a time (it is made when due, never queued); a repeat that fails is not
retried (counted ``repeat_failed``): the next one, ``repeat`` later, supersedes it. While a
transition or a signal is owed or retried, no repeat is sent (that delivery says more).

A slow or dead receiver only delays its own worker; the listener and the SSE fan-out
never wait for a webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from relay.config import WebhookConfig
from relay.fanout.webhooks.delivery import Outcome, Result, origin, post
from relay.fanout.webhooks.kinds import Request, render, render_repeat
from relay.fanout.webhooks.payloads import SIGNAL_KINDS, SignalEvent, Transition
from relay.fanout.webhooks.signing import new_message_id
from relay.fanout.webhooks.statefile import (
    Mark,
    Pending,
    PendingSignal,
    StateFile,
    TargetRecord,
)
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.state.stability import Snapshot, Stability, State
from relay.tasks import spawn

# The estimate of the time left when processing began, if one can be had (relay/state/eta.py).
EtaSource = Callable[[], dict[str, Any] | None]

log = get_logger("relay.fanout.webhooks")

# A receiver's Retry-After is honoured up to the longer of this and the target's last
# retry step: a misconfigured "Retry-After: 86400" must not silence a target for a day.
RETRY_AFTER_CAP = 60.0
# Longest wait for the state file before a first attempt (write-ahead of the webhook-id).
FLUSH_WAIT = 5.0


SignalKey = tuple[str, str]  # (kind, activity)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One transition owed to one target: fixed id and body, whatever the attempts."""

    id: str
    transition: Transition
    request: Request
    generation: int


@dataclass(frozen=True, slots=True)
class SignalDelivery:
    """One signal event owed to one target; ``generation`` is its key's (a newer event for
    the same key supersedes it)."""

    id: str
    event: SignalEvent
    request: Request
    generation: int


def _signal_first(item: Delivery | SignalDelivery) -> tuple[int, int]:
    if isinstance(item, SignalDelivery):
        return (item.event.seq, 0)
    return (item.transition.seq, 1)


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
        self._metrics = metrics
        self._store = store
        self._public_url = public_url
        self._rng = rng
        self._where = origin(hook.url)
        # What this target has seen and been told (persisted through the StateFile).
        self.settled: Mark | None = None
        self.delivered: Mark | None = None
        self._filtered_seq: int | None = None
        self._settled_confirmed = True  # False while `settled` is only the file's word
        # Hysteresis: the state waiting to hold for min_duration.
        self._candidate: Snapshot | None = None
        self._timer: asyncio.TimerHandle | None = None
        # The mailbox (newest undelivered) and the delivery the worker holds.
        self._queued: Delivery | None = None
        self._current: Delivery | SignalDelivery | None = None
        self._generation = 0
        # Signals: the ones this target was told of (key -> the event that told it; False
        # while only the state file's word), and the events waiting, one per key at most.
        self._wants_signals = State.PROCESSING in self._on
        self._told: dict[SignalKey, tuple[SignalEvent, bool]] = {}
        self._signals: dict[SignalKey, SignalDelivery] = {}
        self._signal_generation: dict[SignalKey, int] = {}
        # Status monitors: the last transition delivered (what a repeat says again) and when
        # the target was last sent anything (time.monotonic()).
        self._last_transition: Transition | None = None
        self._last_request: float | None = None
        self.disabled = False
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self.task: asyncio.Task[None] | None = None
        metrics.webhook_pending.labels(self.name).set_function(lambda: float(self.pending))

    @property
    def pending(self) -> int:
        """Deliveries not yet delivered: a state's (at most 2) and signal events' (at most one
        per signal and activity)."""
        return (self._queued is not None) + (self._current is not None) + len(self._signals)

    # Persistence.
    def restore(self, record: TargetRecord | None, *, confirmed: bool = False) -> None:
        """Take over a record: from the state file, or from this target's previous config."""
        if record is None:
            return
        # Encode first: a record that cannot be encoded raises before anything is taken over.
        pending = record.pending
        told = record.told
        queued = self._delivery(pending.transition, pending.id, told) if pending else None
        signals = {p.event.key: self._signal_delivery(p.event, p.id, told) for p in record.signals}
        self.settled = record.settled
        self.delivered = record.delivered
        self._filtered_seq = record.filtered_seq
        self._settled_confirmed = confirmed or record.settled is None
        self._told = {event.key: (event, confirmed) for event in record.told}
        self._signals = signals
        if pending is not None:
            transition = pending.transition
            self._queued = queued
            log.info(
                "webhook_pending_restored",
                webhook=self.name,
                state=transition.state.value,
                seq=transition.seq,
                webhook_id=pending.id,
            )

    def record(self) -> TargetRecord:
        current = self._current
        owed = self._queued or (current if isinstance(current, Delivery) else None)
        signals = list(self._signals.values())
        if isinstance(current, SignalDelivery) and current.event.key not in self._signals:
            signals.append(current)
        signals.sort(key=_signal_first)
        return TargetRecord(
            settled=self.settled,
            delivered=self.delivered,
            filtered_seq=self._filtered_seq,
            pending=Pending(owed.id, owed.transition) if owed else None,
            told=tuple(event for event, _confirmed in self._told.values()),
            signals=tuple(PendingSignal(item.id, item.event) for item in signals),
        )

    # Life cycle.
    def start(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._wake = asyncio.Event()
        self.task = spawn(self._run(), f"relay-webhook-{self.name}")

    def begin_close(self) -> None:
        """Stop taking work: cancel the hysteresis timer, end retry waits at once."""
        self._closing = True
        self._cancel_timer()
        if self._wake is not None:
            self._wake.set()

    # The observer side: synchronous, called from Stability.update().
    def observe(self, snapshot: Snapshot) -> None:
        if self.disabled or self._closing:
            return
        if snapshot.state is State.UNKNOWN and State.UNKNOWN not in self._on:
            return  # invisible to this target: as if the previous state went on
        candidate = self._candidate
        if candidate is not None and snapshot.state is candidate.state:
            return  # back to the state already waiting out its min_duration
        self._cancel_timer()
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
        if self.disabled or self._closing or not self._wants_signals:
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
            if self._wake is not None:
                self._wake.set()

    def _queue_signal(self, event: SignalEvent) -> None:
        key = event.key
        self._signal_generation[key] = self._signal_generation.get(key, 0) + 1
        waiting = self._signals.pop(key, None)
        if waiting is not None:
            self._supersede(waiting)
            if event.cleared and not waiting.event.cleared:
                return  # came and went unsent: the receiver hears of neither
        self._signals[key] = self._signal_delivery(event, new_message_id(), self._attention())

    def _attention(self) -> list[SignalEvent]:
        """The signals this target was told of that still hold (a status monitor's down)."""
        return [event for event, _confirmed in self._told.values()]

    def _signal_delivery(
        self, event: SignalEvent, message_id: str, attention: Sequence[SignalEvent]
    ) -> SignalDelivery:
        request = render(self.hook, event, self._public_url, attention)
        generation = self._signal_generation.get(event.key, 0)
        return SignalDelivery(message_id, event, request, generation)

    def _abandon(self, item: Delivery | SignalDelivery) -> None:
        """Give up a stale delivery. A signal's start that was never delivered takes its
        waiting end with it: the receiver hears of neither (never an end alone)."""
        self._supersede(item)
        self._current = None
        if isinstance(item, SignalDelivery) and not item.event.cleared:
            waiting = self._signals.get(item.event.key)
            if waiting is not None and waiting.event.cleared:
                del self._signals[item.event.key]
                self._supersede(waiting)

    def _is_stale(self, item: Delivery | SignalDelivery) -> bool:
        if isinstance(item, SignalDelivery):
            return item.generation != self._signal_generation.get(item.event.key, 0)
        return item.generation != self._generation

    def _settle_candidate(self) -> None:
        self._timer = None
        if self._candidate is not None and not self._closing:
            self._settle(self._candidate)

    def _cancel_timer(self) -> None:
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
        self._generation += 1  # anything older still waiting is now superseded
        if snapshot.state not in self._on:
            self._filtered_seq = snapshot.seq
            if self._queued is not None:
                self._supersede(self._queued)
                self._queued = None
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
            if self._queued is not None:
                self._supersede(self._queued)
            self._queued = self._delivery(transition, new_message_id(), self._attention())
        self._store.changed()
        if self._wake is not None:
            self._wake.set()

    def _delivery(
        self, transition: Transition, message_id: str, attention: Sequence[SignalEvent]
    ) -> Delivery:
        request = render(self.hook, transition, self._public_url, attention)
        return Delivery(message_id, transition, request, self._generation)

    def _supersede(self, old: Delivery | SignalDelivery) -> None:
        self._metrics.webhook_deliveries.labels(self.name, "superseded").inc()
        log.info("webhook_superseded", webhook=self.name, **_described(old), webhook_id=old.id)

    def _is_moot(self, item: Delivery) -> bool:
        """The target already has this state, and nothing it filtered out came between."""
        last = self.delivered
        if last is None or last.state is not item.transition.state:
            return False
        filtered = self._filtered_seq
        return not (filtered is not None and last.seq < filtered < item.transition.seq)

    # The worker side: one task per target.
    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closing:
            item = self._next()
            if item is None:
                self._wake.clear()
                due = self._repeat_in()
                if due is None:
                    await self._wake.wait()
                elif due > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(due):
                            await self._wake.wait()
                else:
                    await self._repeat()
                    if self.disabled:
                        return
                continue
            self._current = item
            try:
                if isinstance(item, Delivery) and self._is_moot(item):
                    self._supersede(item)
                    self._current = None
                else:
                    await self._deliver(item)
            except Exception:  # one broken delivery must not end the target's worker
                log.exception("webhook_delivery_crashed", webhook=self.name, webhook_id=item.id)
                self._metrics.webhook_deliveries.labels(self.name, "failed").inc()
                self._current = None
            self._store.changed()
            if self.disabled:
                return

    def _next(self) -> Delivery | SignalDelivery | None:
        """The owed delivery of the oldest snapshot (taken out of the mailbox)."""
        waiting: list[Delivery | SignalDelivery] = list(self._signals.values())
        if self._queued is not None:
            waiting.append(self._queued)
        if not waiting:
            return None
        item = min(waiting, key=_signal_first)
        if isinstance(item, SignalDelivery):
            del self._signals[item.event.key]
        else:
            self._queued = None
        return item

    async def _deliver(self, item: Delivery | SignalDelivery) -> None:
        """Attempt until delivered, failed, superseded or disabled; on close, leave it owed."""
        assert self._session is not None and self._wake is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_WAIT):
                await self._store.flush()  # its webhook-id is on disk before anyone sees it
        failures = 0
        while not self._closing:
            started = time.monotonic()
            result = await post(self._session, self.hook, item.request, item.id)
            self._last_request = time.monotonic()
            self._metrics.webhook_duration.labels(self.name).observe(self._last_request - started)
            self._metrics.webhook_deliveries.labels(self.name, result.outcome.value).inc()
            if result.outcome is not Outcome.RETRY:
                self._finish(item, result, failures + 1)
                return
            failures += 1
            if self._is_stale(item):
                self._abandon(item)
                return
            wait = self._retry_delay(failures, result.retry_after)
            log.warning(
                "webhook_retry",
                webhook=self.name,
                target=self._where,
                **_described(item),
                webhook_id=item.id,
                attempt=failures,
                reason=result.reason,
                retry_in_s=round(wait, 2),
            )
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()  # a newer state or close ends the wait early
            if self._is_stale(item):
                self._abandon(item)
                return

    def _finish(self, item: Delivery | SignalDelivery, result: Result, attempts: int) -> None:
        self._current = None
        fields = {
            "webhook": self.name,
            "target": self._where,
            **_described(item),
            "webhook_id": item.id,
            "attempts": attempts,
            "status": result.status,
        }
        if result.outcome is Outcome.SUCCESS:
            if isinstance(item, Delivery):
                t = item.transition
                self.delivered = Mark(t.state, t.seq, t.since)
                self._last_transition = t
            log.info("webhook_delivered", **fields)
            return
        if result.outcome is Outcome.DISABLED:
            self.disabled = True
            self._cancel_timer()
            if self._queued is not None:
                self._supersede(self._queued)
                self._queued = None
            for waiting in self._signals.values():
                self._supersede(waiting)
            self._signals.clear()
            log.error("webhook_disabled", **fields, reason=result.reason, response=result.body)
            return
        log.error("webhook_failed", **fields, reason=result.reason, response=result.body)

    def _repeat_in(self) -> float | None:
        """Seconds until the status is due again (``<= 0``: now); ``None``: no repeats."""
        if self.hook.repeat is None or self.delivered is None:
            return None
        if self._last_request is None:
            return 0.0
        return self._last_request + self.hook.repeat - time.monotonic()

    async def _repeat(self) -> None:
        """The current status once more; one attempt, whatever the answer."""
        assert self._session is not None and self.delivered is not None
        mark = self.delivered
        last = self._last_transition
        if last is None or last.seq != mark.seq:  # after a restart: only the file's mark
            last = Transition(mark.state, None, mark.since, None, mark.seq)
        request = render_repeat(self.hook, last, self._attention(), time.time())
        message_id = new_message_id()
        started = time.monotonic()
        result = await post(self._session, self.hook, request, message_id)
        self._last_request = time.monotonic()
        self._metrics.webhook_duration.labels(self.name).observe(self._last_request - started)
        fields = {"webhook": self.name, "target": self._where, "state": mark.state.value}
        if result.outcome is Outcome.SUCCESS:
            self._metrics.webhook_deliveries.labels(self.name, "repeated").inc()
            log.debug("webhook_repeated", **fields, status=result.status)
            return
        self._metrics.webhook_deliveries.labels(self.name, "repeat_failed").inc()
        log.warning(
            "webhook_repeat_failed",
            **fields,
            webhook_id=message_id,
            reason=result.reason,
            next_in_s=self.hook.repeat,
        )
        if result.outcome is Outcome.DISABLED:
            self.disabled = True
            log.error("webhook_disabled", **fields, reason=result.reason, response=result.body)

    def _retry_delay(self, failures: int, retry_after: float | None) -> float:
        schedule = self.hook.retry_schedule
        if retry_after is not None:
            # At least a second ("Retry-After: 0" must not become a busy loop), at most the cap.
            return min(max(retry_after, 1.0), max(RETRY_AFTER_CAP, schedule[-1]))
        step = schedule[min(failures, len(schedule)) - 1]
        return step * self._rng.uniform(0.8, 1.2)  # jitter: ±20 %


def _described(item: Delivery | SignalDelivery) -> dict[str, Any]:
    """What a log line says of a delivery."""
    if isinstance(item, SignalDelivery):
        event = item.event
        return {
            "signal": event.kind,
            "activity": event.activity,
            "cleared": event.cleared,
            "seq": event.seq,
        }
    return {"state": item.transition.state.value, "seq": item.transition.seq}


class WebhookSender:
    """Every configured target. ``start()`` then ``aclose(timeout)``; not reopenable.

    ``reload(hooks)`` (SIGHUP) swaps the target list: unchanged targets go on, changed
    ones carry their state over (a delivery they owe keeps its id), removed ones stop.
    """

    def __init__(
        self,
        hooks: Sequence[WebhookConfig],
        stability: Stability,
        metrics: Metrics,
        *,
        state_directory: str | Path | None,
        public_url: str | None = None,
        rng: random.Random | None = None,
        eta: EtaSource = lambda: None,
    ) -> None:
        self._eta = eta
        self._stability = stability
        self._metrics = metrics
        self._public_url = public_url
        self._rng = rng or random.Random()
        directory = Path(state_directory) if state_directory else None
        self._store = StateFile(directory, self._collect)
        self.targets: dict[str, Target] = {hook.name: self._target(hook) for hook in hooks}
        self._retired: set[asyncio.Task[None]] = set()  # stopped by reload, awaited at close
        self._session: aiohttp.ClientSession | None = None
        self._known = False
        self._warned_in_memory = False
        self._state = "new"
        self._close_task: asyncio.Task[None] | None = None

    def _target(self, hook: WebhookConfig) -> Target:
        return Target(hook, self._metrics, self._store, self._public_url, self._rng, self._eta)

    @property
    def state_file(self) -> Path | None:
        return self._store.path

    async def start(self) -> None:
        """Read the state file and start every target. Never left half-started: if reading
        fails or is cancelled, the sender is "new" again and ``start()`` can be retried."""
        if self._state in ("closing", "closed"):
            raise RuntimeError("a closed webhook sender cannot be started again")
        if self._state != "new":
            return
        self._state = "starting"
        try:
            records = await self._store.load()
        except BaseException:
            if self._state == "starting":
                self._state = "new"
            raise
        if self._state != "starting":
            return  # closed while the file was being read
        for name, target in self.targets.items():
            try:
                target.restore(records.get(name))
            except Exception:  # one unusable record must not keep every target from starting
                log.exception(
                    "webhook_state_record_unusable",
                    webhook=name,
                    consequence="this target starts without delivery state",
                )
        await self._store.start()
        # No await from here on: no transition can slip between subscribing and reading.
        self._state = "running"
        for target in self.targets.values():
            self._start_target(target)
        self._observe(self._stability.current)
        if self.targets:
            log.info(
                "webhooks_started",
                targets=[f"{t.name} ({origin(t.hook.url)})" for t in self.targets.values()],
                state_file=str(self._store.path) if self._store.path else None,
            )

    def _start_target(self, target: Target) -> None:
        if self._session is None:
            # One session for every target; redirects are never followed (per request).
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        if self._store.path is None and not self._warned_in_memory:
            self._warned_in_memory = True
            log.warning(
                "webhook_state_in_memory",
                consequence="a restart can lose or repeat a delivery",
                hint="set state_directory (or run under systemd with StateDirectory=)",
            )
        target.start(self._session)

    def on_change(self, snapshot: Snapshot) -> None:
        """A change; heard only while the sender runs (on the leader). Targets hear of states
        (not of other activities within one state) and of signals."""
        self._observe(snapshot, state=snapshot.new_state)

    def _observe(self, snapshot: Snapshot, *, state: bool = True) -> None:
        if self._state != "running":
            return
        if snapshot.state is State.UNKNOWN and not self._known:
            return  # until the true state is known, "unknown" is only start-up
        self._known = True
        for target in self.targets.values():
            target.observe_signals(snapshot)  # first: a signal's end before the state
            if state:
                target.observe(snapshot)

    def _collect(self) -> dict[str, TargetRecord]:
        return {name: target.record() for name, target in self.targets.items()}

    def reload(self, hooks: Sequence[WebhookConfig]) -> None:
        """Apply a new list of targets without losing what the kept ones owe."""
        if self._state in ("closing", "closed"):
            return
        old = dict(self.targets)
        added, changed = [], []
        targets: dict[str, Target] = {}
        for hook in hooks:
            previous = old.pop(hook.name, None)
            if previous is not None and previous.hook == hook:
                targets[hook.name] = previous
                continue
            target = self._target(hook)
            if previous is not None:
                target.restore(previous.record(), confirmed=True)
                self._retire(previous)
                changed.append(hook.name)
            else:
                added.append(hook.name)
            targets[hook.name] = target
        for gone in old.values():
            self._retire(gone)
            with contextlib.suppress(KeyError):
                self._metrics.webhook_pending.remove(gone.name)
        self.targets = targets
        if self._state == "running":
            for name in (*added, *changed):
                self._start_target(targets[name])
                if self._known:
                    targets[name].observe_signals(self._stability.current)
                    targets[name].observe(self._stability.current)
        self._store.changed()
        log.info("webhooks_reloaded", added=added, changed=changed, removed=sorted(old))

    def _retire(self, target: Target) -> None:
        target.begin_close()
        if target.task is not None and not target.task.done():
            self._retired.add(target.task)
            target.task.add_done_callback(self._retired.discard)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Let requests on the wire finish (bounded by ``timeout``), then persist what is owed.

        The close runs as its own task: a caller that is cancelled leaves it running, and
        every later call waits for that same close.
        """
        if self._close_task is None:
            started = self._state == "running"
            self._state = "closing"
            self._close_task = asyncio.create_task(
                self._close(started, timeout), name="relay-webhook-close"
            )
        await asyncio.shield(self._close_task)

    async def _close(self, started: bool, timeout: float) -> None:
        for target in self.targets.values():
            target.begin_close()
        tasks = {t.task: t.name for t in self.targets.values() if t.task is not None}
        tasks.update({task: task.get_name() for task in self._retired})
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                log.warning("webhook_stop_timeout", webhook=tasks[task], timeout_s=timeout)
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
        if self._session is not None:
            await self._session.close()
        if started:
            await self._store.aclose(timeout)
        self._state = "closed"
        owed = {t.name: t.pending for t in self.targets.values() if t.pending}
        if self.targets:
            log.info("webhooks_stopped", owed=owed)
