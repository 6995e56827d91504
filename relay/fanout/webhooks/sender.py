"""The webhook sender: stability transitions in, one ordered delivery stream per target out.

This module owns the targets: it starts them, tells them of each change, swaps them on
reload (SIGHUP) and closes them. Per target (relay/fanout/webhooks/target.py), from the
stability observer (synchronous, cheap: no I/O, no await):

    snapshot ─▶ hysteresis (``min_duration``) ─▶ settled state ─▶ ``on`` filter ─▶ mailbox

and one named task per target (``relay-webhook-<name>``, relay/fanout/webhooks/worker.py)
that empties the mailbox (relay/fanout/webhooks/mailbox.py).

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
import random
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from relay.config import WebhookConfig
from relay.fanout.webhooks.delivery import origin
from relay.fanout.webhooks.records import TargetRecord
from relay.fanout.webhooks.statefile import StateFile
from relay.fanout.webhooks.target import EtaSource, Target
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.state.stability import Snapshot, Stability, State

log = get_logger("relay.fanout.webhooks")


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
        """Read the state file and start every target; a second call is a no-op. Never left
        half-started: if reading fails or is cancelled, the sender is "new" again and
        ``start()`` can be retried. Not reopenable: after ``aclose()`` it raises."""
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

    async def aclose(self, timeout: float | None = None) -> None:
        """Let requests on the wire finish, then persist what is owed; nothing owed is sent.
        Idempotent. ``timeout`` (if given) bounds each of the two steps: the requests (a
        worker still busy then is cancelled, its delivery still owed) and the state file's
        last write, so that what is owed is written even when the requests took it all.

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

    async def _close(self, started: bool, timeout: float | None) -> None:
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
