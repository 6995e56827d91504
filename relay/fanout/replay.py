"""A feed's last events, for clients that reconnect with ``Last-Event-ID``.

Every event a feed sends carries ``id: <epoch>-<n>``: ``epoch`` is drawn once per run of
the relay (an id from another run, or another relay, is recognised as such), ``n`` counts
the feed's events. The ring keeps the last ones, bounded in events and in bytes (policy when
full: the oldest is forgotten). A client that names the last event it saw gets every later
one it is owed (its filter applies); when one of those is no longer kept, or the id is not of
this run, it cannot be told what it missed and gets ``event: resync`` instead.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# Who an event is for, as the feed's filter needs it: None for every client, else the
# payload's filter key and whether it is a new row (statbus's scope).
Audience = tuple[str | None, bool] | None


@dataclass(frozen=True, slots=True)
class Kept:
    number: int
    raw: bytes  # the whole event, `id:` line included, as it was written
    audience: Audience


class Ring:
    """The last events of one feed and the numbering of its ids."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.epoch = secrets.token_hex(4)
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._events: deque[Kept] = deque()
        self._bytes = 0
        self.last = 0  # the number of the last event sent (0: none yet)

    def __len__(self) -> int:
        return len(self._events)

    @property
    def size(self) -> int:
        return self._bytes

    def next_id(self) -> tuple[int, str]:
        self.last += 1
        return self.last, f"{self.epoch}-{self.last}"

    def keep(self, number: int, raw: bytes, audience: Audience) -> None:
        """Called for every event sent, in the order of their numbers."""
        if self._max_events == 0:
            return
        self._events.append(Kept(number, raw, audience))
        self._bytes += len(raw)
        while len(self._events) > self._max_events or (
            self._bytes > self._max_bytes and len(self._events) > 1
        ):
            self._bytes -= len(self._events.popleft().raw)

    def position(self, last_event_id: str) -> int | None:
        """The number after which a client that saw ``last_event_id`` resumes, or None when it
        cannot: an id of another run, one not yet sent, or one whose successors are gone."""
        epoch, _, text = last_event_id.strip().partition("-")
        if epoch != self.epoch or not text.isascii() or not text.isdigit() or len(text) > 18:
            return None
        number = int(text)
        if number > self.last:
            return None
        oldest = self._events[0].number if self._events else self.last + 1
        if number + 1 < oldest:
            return None  # what came right after it is no longer kept
        return number

    def after(
        self, number: int, wanted: Callable[[Audience], bool], until: int | None = None
    ) -> Iterator[bytes]:
        """The kept events after ``number`` (up to ``until``) that ``wanted`` accepts, oldest
        first."""
        if not self._events:
            return
        # Every numbered event is kept, in order: the one after `number` is at a known index.
        start = max(0, number + 1 - self._events[0].number)
        for index in range(start, len(self._events)):
            event = self._events[index]
            if until is not None and event.number > until:
                return
            if wanted(event.audience):
                yield event.raw
