"""One target's worker: the named task (``relay-webhook-<name>``) that empties its mailbox.

It sends what is owed in snapshot order, one delivery at a time, retrying on the
schedule (relay/fanout/webhooks/retry.py) until delivered, failed, superseded or
disabled; on close it leaves a delivery owed (the state file keeps it). While idle, a
status monitor's target is told the current status again every ``repeat``
(relay/fanout/webhooks/sender.py says the policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Protocol

import aiohttp

from relay.config import WebhookConfig
from relay.fanout.webhooks.delivery import Outcome, Result, origin, post
from relay.fanout.webhooks.kinds import render_repeat
from relay.fanout.webhooks.mailbox import Mailbox
from relay.fanout.webhooks.owed import Delivery, Owed, described
from relay.fanout.webhooks.payloads import SignalEvent, Transition
from relay.fanout.webhooks.records import Mark
from relay.fanout.webhooks.retry import retry_delay
from relay.fanout.webhooks.signing import new_message_id
from relay.fanout.webhooks.statefile import StateFile
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.tasks import spawn

log = get_logger("relay.fanout.webhooks")

# Longest wait for the state file before a first attempt (write-ahead of the webhook-id).
FLUSH_WAIT = 5.0


class Owner(Protocol):
    """What the worker reads and changes of its target (relay/fanout/webhooks/target.py)."""

    name: str
    hook: WebhookConfig
    box: Mailbox
    delivered: Mark | None  # set by the worker when a transition is delivered
    disabled: bool
    closing: bool

    def is_moot(self, item: Delivery) -> bool: ...
    def attention(self) -> list[SignalEvent]: ...
    def disable(self) -> None: ...


class Worker:
    """The delivering side of one target."""

    def __init__(
        self, target: Owner, metrics: Metrics, store: StateFile, rng: random.Random
    ) -> None:
        self._target = target
        self._box = target.box
        self.name = target.name
        self._metrics = metrics
        self._store = store
        self._rng = rng
        self._where = origin(target.hook.url)
        # Status monitors: the last transition delivered (what a repeat says again) and when
        # the target was last sent anything (time.monotonic()).
        self._last_transition: Transition | None = None
        self._last_request: float | None = None
        self._wake: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self, session: aiohttp.ClientSession) -> None:
        """Start the task; a second call is a no-op."""
        if self.task is not None:
            return
        self._session = session
        self._wake = asyncio.Event()
        self.task = spawn(self._run(), f"relay-webhook-{self.name}")

    def wake(self) -> None:
        """Something is owed, or the target closes: end an idle or retry wait at once."""
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        target, box = self._target, self._box
        while not target.closing:
            item = box.take_next()
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
                    if target.disabled:
                        return
                continue
            box.current = item
            try:
                if isinstance(item, Delivery) and target.is_moot(item):
                    box.supersede(item)
                    box.current = None
                else:
                    await self._deliver(item)
            except Exception:  # one broken delivery must not end the target's worker
                log.exception("webhook_delivery_crashed", webhook=self.name, webhook_id=item.id)
                self._metrics.webhook_deliveries.labels(self.name, "failed").inc()
                box.current = None
            self._store.changed()
            if target.disabled:
                return

    async def _deliver(self, item: Owed) -> None:
        """Attempt until delivered, failed, superseded or disabled; on close, leave it owed."""
        assert self._session is not None and self._wake is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_WAIT):
                await self._store.flush()  # its webhook-id is on disk before anyone sees it
        hook = self._target.hook
        failures = 0
        while not self._target.closing:
            started = time.monotonic()
            result = await post(self._session, hook, item.request, item.id)
            self._last_request = time.monotonic()
            self._metrics.webhook_duration.labels(self.name).observe(self._last_request - started)
            self._metrics.webhook_deliveries.labels(self.name, result.outcome.value).inc()
            if result.outcome is not Outcome.RETRY:
                self._finish(item, result, failures + 1)
                return
            failures += 1
            if self._box.is_stale(item):
                self._box.abandon(item)
                return
            wait = retry_delay(hook.retry_schedule, failures, result.retry_after, self._rng)
            log.warning(
                "webhook_retry",
                webhook=self.name,
                target=self._where,
                **described(item),
                webhook_id=item.id,
                attempt=failures,
                reason=result.reason,
                retry_in_s=round(wait, 2),
            )
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()  # a newer state or close ends the wait early
            if self._box.is_stale(item):
                self._box.abandon(item)
                return

    def _finish(self, item: Owed, result: Result, attempts: int) -> None:
        self._box.current = None
        fields = {
            "webhook": self.name,
            "target": self._where,
            **described(item),
            "webhook_id": item.id,
            "attempts": attempts,
            "status": result.status,
        }
        if result.outcome is Outcome.SUCCESS:
            if isinstance(item, Delivery):
                t = item.transition
                self._target.delivered = Mark(t.state, t.seq, t.since)
                self._last_transition = t
            log.info("webhook_delivered", **fields)
            return
        if result.outcome is Outcome.DISABLED:
            self._target.disable()
            log.error("webhook_disabled", **fields, reason=result.reason, response=result.body)
            return
        log.error("webhook_failed", **fields, reason=result.reason, response=result.body)

    def _repeat_in(self) -> float | None:
        """Seconds until the status is due again (``<= 0``: now); ``None``: no repeats."""
        repeat = self._target.hook.repeat
        if repeat is None or self._target.delivered is None:
            return None
        if self._last_request is None:
            return 0.0
        return self._last_request + repeat - time.monotonic()

    async def _repeat(self) -> None:
        """The current status once more; one attempt, whatever the answer."""
        target = self._target
        assert self._session is not None and target.delivered is not None
        mark = target.delivered
        last = self._last_transition
        if last is None or last.seq != mark.seq:  # after a restart: only the file's mark
            last = Transition(mark.state, None, mark.since, None, mark.seq)
        request = render_repeat(target.hook, last, target.attention(), time.time())
        message_id = new_message_id()
        started = time.monotonic()
        result = await post(self._session, target.hook, request, message_id)
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
            next_in_s=target.hook.repeat,
        )
        if result.outcome is Outcome.DISABLED:
            target.disabled = True
            log.error("webhook_disabled", **fields, reason=result.reason, response=result.body)
