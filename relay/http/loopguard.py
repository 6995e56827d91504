"""What the event loop reports on its own, said once in a while instead of thousands of times.

At the open-file limit asyncio reports every failed ``accept()`` through the loop's exception
handler (``socket.accept() out of system resource``, with a traceback), thousands of lines a
second. This handler logs each kind of message at most once per ``every`` seconds, without the
traceback, with how many were folded in, and counts them all in
``relay_loop_errors_total{kind}``.

The relay's HTTP listener no longer goes through asyncio's accept loop
(``relay/http/listening.py`` accepts, and pauses by itself at the limit); this stays for
whatever else the loop reports, and for the plain-TCPSite fallback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from relay.logs import get_logger

log = get_logger("relay.loop")
LOG_EVERY = 10.0


class LoopErrors:
    def __init__(
        self,
        counter: Counter,
        every: float = LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counter = counter
        self._every = every
        self._clock = clock
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def install(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Become the loop's handler; returns what puts the previous one back."""
        previous = loop.get_exception_handler()
        loop.set_exception_handler(self)
        return lambda: loop.set_exception_handler(previous)

    def __call__(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "event loop error")
        error = context.get("exception")
        kind = message.split(":")[0][:80]
        self._counter.labels(kind).inc()
        now = self._clock()
        if now - self._last.get(kind, -self._every) < self._every:
            self._folded[kind] = self._folded.get(kind, 0) + 1
            return
        self._last[kind] = now
        folded = self._folded.pop(kind, 0)
        log.error(
            "event_loop_error",
            message=message,
            error=f"{type(error).__name__}: {error}" if error is not None else None,
            folded_since_last=folded,
            note=f"logged at most every {self._every:g} s; see relay_loop_errors_total",
        )
