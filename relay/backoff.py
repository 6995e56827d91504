"""Exponential backoff with full jitter, for the listener's reconnect loop."""

from __future__ import annotations

import random
import time


class Backoff:
    """``delay()`` grows ``initial * 2**n`` up to ``cap``, each draw uniform in ``[0, bound]``.

    ``healthy()`` tells the object the connection has held; after ``reset_after`` seconds
    of health the next failure starts again from ``initial``.
    """

    def __init__(
        self,
        initial: float,
        cap: float,
        reset_after: float,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self.reset_after = reset_after
        self.attempt = 0
        self._rng = rng or random.Random()
        self._healthy_since: float | None = None

    def delay(self) -> float:
        """The next wait: full jitter in ``[0, min(cap, initial * 2**attempt)]``."""
        if self._healthy_since is not None:
            if time.monotonic() - self._healthy_since >= self.reset_after:
                self.attempt = 0
            self._healthy_since = None
        bound = min(self.cap, self.initial * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        return self._rng.uniform(0, bound)

    def healthy(self) -> None:
        """Mark the start of a healthy period (a successful connection)."""
        self._healthy_since = time.monotonic()
