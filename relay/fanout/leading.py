"""What only the elected relay runs (``relay/source/election.py`` elects it): a term.

A term is a history writer and a webhook sender, new for each election and closed for good
when it ends; the next term shares nothing with it but what the sender saved in its state file
(what each target was told and is owed) and the targets of the last reload. The next term's
sender is built ahead and left unstarted, so that a relay that does not lead exports its
targets' ``relay_webhook_pending`` (0) and takes reloads, as the leader does.

    elected     → a new term: the history writer starts (it catches up with the state at
                  election), then the webhook sender (it tells each target the state);
                  ``relay_webhook_leader`` is 1 only once the sender runs
    not leading → ``relay_webhook_leader`` 0; the history writer stops, then the webhooks
                  finish what is on the wire (within ``close_timeout``) and save what they
                  owe, for whoever leads next

A term that fails to start is started again by the election each interval (the same term).
Transitions reach the running term only, the history writer first. Once the relay is
``stopping()``, an election starts nothing and a lost one closes nothing: ``aclose()``, a
step of the relay's shutdown, closes the term in its own order, the webhooks first, while this
relay still holds the lock, so that no other relay takes over a delivery still on the wire
here; then the history writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relay.config import WebhookConfig
from relay.fanout.webhooks import WebhookSender
from relay.metrics import Metrics
from relay.state.history import HistoryWriter
from relay.state.stability import Snapshot


@dataclass
class Term:
    history: HistoryWriter
    webhooks: WebhookSender


class Leading:
    """The election's callback (:meth:`on_leadership`) and an observer of the state
    (:meth:`on_change`). ``aclose(timeout)`` is idempotent."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        history: Callable[[], HistoryWriter],
        webhooks: Callable[[Sequence[WebhookConfig]], WebhookSender],
        hooks: Sequence[WebhookConfig],
        close_timeout: float,
    ) -> None:
        self._metrics = metrics
        self._history = history
        self._webhooks = webhooks
        self._hooks = tuple(hooks)
        self._close_timeout = close_timeout
        self._term: Term | None = None
        # The next term's sender, built and not started: on a relay that does not lead, its
        # targets export their pending count (0) and take reloads, as on the leader.
        self._next: WebhookSender | None = webhooks(self._hooks)
        self._stopping = False

    @property
    def webhooks(self) -> WebhookSender | None:
        """The running (or last) term's sender, else the next term's, built and not started."""
        return self._term.webhooks if self._term is not None else self._next

    async def on_leadership(self, leading: bool) -> None:
        if self._stopping:
            return  # elected while stopping: the term is closing or never was; start nothing
        if leading:
            if self._term is None:
                sender, self._next = self._next or self._webhooks(self._hooks), None
                self._term = Term(self._history(), sender)
            await self._term.history.start()
            await self._term.webhooks.start()
            self._metrics.webhook_leader.set(1)  # only once the sender really runs
        else:
            self._metrics.webhook_leader.set(0)
            term, self._term = self._term, None  # dropped even if a close fails: never reused
            if term is not None:
                try:
                    await term.history.aclose()
                    await term.webhooks.aclose(timeout=self._close_timeout)
                finally:
                    self._next = self._webhooks(self._hooks)

    def on_change(self, snapshot: Snapshot) -> None:
        """A transition, for the running term (each part ignores it until started)."""
        if self._term is not None:
            self._term.history.observe(snapshot)
            self._term.webhooks.on_change(snapshot)

    def reload(self, hooks: Sequence[WebhookConfig]) -> None:
        """New webhook targets: the running term's (or the next's), and every later term's."""
        self._hooks = tuple(hooks)
        if self.webhooks is not None:
            self.webhooks.reload(self._hooks)

    def stopping(self) -> None:
        """The relay is stopping: from now on an election changes nothing."""
        self._stopping = True

    async def aclose(self, timeout: float | None = None) -> None:
        """Close the webhooks (still the leader), then stop the history writer; within
        ``timeout`` when given, else ``close_timeout`` for the webhooks."""
        self._stopping = True
        if self._next is not None:  # never started: nothing on the wire, nothing to write
            sender, self._next = self._next, None
            await sender.aclose(timeout)
        if self._term is None:
            return
        loop = asyncio.get_running_loop()
        given = self._close_timeout if timeout is None else timeout
        deadline = loop.time() + given
        try:
            await self._term.webhooks.aclose(timeout=given)
        finally:
            left = None if timeout is None else max(0.1, deadline - loop.time())
            await self._term.history.aclose(left)
