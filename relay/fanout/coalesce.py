"""A feed's coalescing (``coalesce:`` in a channel's rules): a trailing debounce per key.

Each payload waits ``window`` for a later one of the same key, which replaces it and starts
the key's timer again (at most ``max_wait`` after the first, when set); then the last one is
emitted. Bound: at most ``max_pending`` keys wait (each payload under 8000 bytes); when full,
the key that has waited longest is emitted at once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from relay.config import ChannelRules
from relay.fanout import shape
from relay.metrics import Metrics


@dataclass(slots=True)
class _Waiting:
    """A coalescing key's last payload and its timer."""

    channel: str
    data: str
    first: float
    timer: asyncio.TimerHandle | None = None


class Coalescer:
    """One feed's debounce, for every channel whose rules coalesce; ``emit(channel, data)``
    gets what is sent on (at once for the channels that do not coalesce)."""

    def __init__(
        self,
        label: str,
        rules: Mapping[str, ChannelRules],
        emit: Callable[[str, str], None],
        metrics: Metrics,
    ) -> None:
        self._label = label
        self._rules = rules
        self._emit = emit
        self._metrics = metrics
        self._waiting: OrderedDict[tuple[str, str], _Waiting] = OrderedDict()

    def submit(self, channel: str, data: str, payload: Mapping[str, Any]) -> None:
        """A checked payload of one of the feed's channels."""
        rule = self._rules[channel].coalesce
        if rule is None:
            self._emit(channel, data)
            return
        value = shape.key_text(payload.get(rule.key)) if rule.key is not None else None
        key = (channel, value or "")
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiting = self._waiting.get(key)
        if waiting is not None:
            # Trailing: the payload waiting is replaced and its key's timer starts again.
            self._metrics.feed_coalesced.labels(self._label).inc()
            waiting.data = data
            if waiting.timer is not None:
                waiting.timer.cancel()
        else:
            if len(self._waiting) >= rule.max_pending:
                # Policy when full: the key that has waited longest is sent now.
                oldest = next(iter(self._waiting))
                self._fire(oldest)
            waiting = _Waiting(channel, data, now)
            self._waiting[key] = waiting
        delay = rule.window
        if rule.max_wait is not None:
            delay = max(0.0, min(delay, waiting.first + rule.max_wait - now))
        waiting.timer = loop.call_later(delay, self._fire, key)

    def _fire(self, key: tuple[str, str]) -> None:
        waiting = self._waiting.pop(key, None)
        if waiting is None:
            return
        if waiting.timer is not None:
            waiting.timer.cancel()
        self._emit(waiting.channel, waiting.data)

    def flush(self) -> None:
        """Send every payload waiting for its debounce now, oldest first."""
        for key in list(self._waiting):
            self._fire(key)
