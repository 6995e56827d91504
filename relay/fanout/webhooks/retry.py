"""How long a target waits before it tries a delivery again."""

from __future__ import annotations

import random
from collections.abc import Sequence

# A receiver's Retry-After is honoured up to the longer of this and the target's last
# retry step: a misconfigured "Retry-After: 86400" must not silence a target for a day.
RETRY_AFTER_CAP = 60.0


def retry_delay(
    schedule: Sequence[float], failures: int, retry_after: float | None, rng: random.Random
) -> float:
    """Seconds before the next attempt, after ``failures`` failed ones: the receiver's
    ``retry_after`` (bounded) if it gave one, else the schedule's step, jittered."""
    if retry_after is not None:
        # At least a second ("Retry-After: 0" must not become a busy loop), at most the cap.
        return min(max(retry_after, 1.0), max(RETRY_AFTER_CAP, schedule[-1]))
    step = schedule[min(failures, len(schedule)) - 1]
    return step * rng.uniform(0.8, 1.2)  # jitter: ±20 %
