"""Exponential backoff with full jitter, for the reconnect loop (``relay/source/reconnect.py``:
the listener and the leader election)."""

from __future__ import annotations

import random
import time

# A short, fixed retry for a cause that clears up on its own within seconds: every host that
# answered is a standby or read-only (a promotion is under way). Not the climbing backoff.
BRIEF_RETRY = 1.0
# This many sessions in a row that end before `reset_after`: the backoff never resets and
# climbs to its cap for good. Something ends every session (a server or proxy timeout).
STUCK_AFTER = 5


class Backoff:
    """``delay()`` grows ``initial * 2**n`` up to ``cap``, each draw uniform in ``[0, bound]``.

    ``healthy()`` tells the object the connection has held; after ``reset_after`` seconds
    of health the next failure starts again from ``initial``. A session that ends sooner is
    a short one; ``short_sessions`` counts them in a row, and ``stuck`` says when there were
    ``STUCK_AFTER`` or more (``stuck_total`` counts how often that began).
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
        self.short_sessions = 0
        self.stuck_total = 0
        self.last_session_s: float | None = None
        self._rng = rng or random.Random()
        self._healthy_since: float | None = None

    @property
    def stuck(self) -> bool:
        return self.short_sessions >= STUCK_AFTER

    def delay(self) -> float:
        """The next wait: full jitter in ``[0, min(cap, initial * 2**attempt)]``."""
        self._session_ended()
        bound = min(self.cap, self.initial * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        return self._rng.uniform(0, bound)

    def brief(self) -> float:
        """A short wait that does not climb: uniform in ``[b/2, b]``, ``b`` = ``BRIEF_RETRY``
        (or ``cap`` when that is shorter)."""
        self._session_ended()
        bound = min(self.cap, BRIEF_RETRY)
        return self._rng.uniform(bound / 2, bound)

    def healthy(self) -> None:
        """Mark the start of a healthy period (a successful connection)."""
        self._healthy_since = time.monotonic()

    def _session_ended(self) -> None:
        if self._healthy_since is None:
            return
        lasted = time.monotonic() - self._healthy_since
        self._healthy_since = None
        self.last_session_s = lasted
        if lasted >= self.reset_after:
            self.attempt = 0
            self.short_sessions = 0
            return
        self.short_sessions += 1
        if self.short_sessions == STUCK_AFTER:
            self.stuck_total += 1
