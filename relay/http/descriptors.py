"""How many file descriptors the relay has open, and how many it may: what tells the socket gate
(``relay/http/gate.py``) that connections must go to the reserve.

Open descriptors are the gate's own count of connections plus the others (database, files, the
loop's own), sampled from ``/proc/self/fd`` in a thread every 2 s, twice a second near the limit.
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Callable

SAMPLE_EVERY = 2.0  # /proc/self/fd read this often (in a thread)...
SAMPLE_EVERY_NEAR = 0.5  # ...and this often within twice the reserve of the limit
PROC_FD = "/proc/self/fd"
OTHERS_WITHOUT_PROC = 32  # descriptors assumed open besides connections where /proc is absent


class Descriptors:
    """How many file descriptors are open, and how many may be.

    Open: the relay's connections (counted exactly, as they are accepted and closed) plus
    the others, sampled from ``/proc/self/fd`` in a thread: listing it takes tens of
    milliseconds at 20,000 descriptors, too long for the event loop.
    """

    def __init__(self, reserve: int) -> None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.limit: int | None = None if soft == resource.RLIM_INFINITY or soft < 0 else soft
        self.reserve = reserve
        self._proc = os.path.isdir(PROC_FD) and self.limit is not None
        self._others = OTHERS_WITHOUT_PROC
        self._near = False

    @property
    def budget(self) -> int | None:
        """Descriptors open at most before connections go to the reserve."""
        return None if self.limit is None else self.limit - self.reserve

    def used(self, connections: int) -> int:
        """Open descriptors, ``connections`` of them the relay's HTTP connections."""
        used = self._others + connections
        budget = self.budget
        self._near = budget is not None and used > budget - self.reserve
        return used

    def sample(self, connections: int) -> None:
        """Read the others now (at start, while there are few)."""
        if self._proc:
            self._update(_count_open(), connections, connections)

    async def watch(self, connections: Callable[[], int]) -> None:
        """Sample the others every ``SAMPLE_EVERY`` (``SAMPLE_EVERY_NEAR`` near the limit)."""
        if not self._proc:
            return
        while True:
            await asyncio.sleep(SAMPLE_EVERY_NEAR if self._near else SAMPLE_EVERY)
            before = connections()
            try:
                count = await asyncio.to_thread(_count_open)
            except RuntimeError:  # no thread to be had: keep the last estimate
                continue
            self._update(count, before, connections())

    def _update(self, count: int | None, before: int, after: int) -> None:
        if count is None:
            # Not even one descriptor to read the directory with: the limit is reached.
            assert self.limit is not None
            self._others = self.limit
        else:
            self._others = max(0, count - (before + after) // 2)
        self.used(after)


def _count_open() -> int | None:
    try:
        return len(os.listdir(PROC_FD)) - 1  # less the one listdir opened
    except OSError:
        return None
