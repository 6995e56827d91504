"""What one client asked of a feed (``relay/fanout/feeds.py``): its filter values and scope,
and its connection id (``relay/http/streams.py`` reads it from the request's query); and a
feed's clients indexed by it, to find whom an event is for."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from relay import __version__
from relay.fanout import shape
from relay.fanout.replay import Audience
from relay.fanout.sse import Client


class Subscription:
    """What one client asked of a feed: its filter values and scope, and its connection id."""

    __slots__ = ("connection_id", "inserts", "keys", "scope", "silent", "values")

    def __init__(
        self,
        values: list[Any],
        keys: frozenset[str] | None,
        *,
        scope: str | None = None,
        inserts: bool = False,
        silent: bool = False,
    ) -> None:
        self.values = values  # as listed ($ids)
        self.keys = keys  # None: every payload
        self.scope = scope
        self.inserts = inserts  # also every new row (statbus's default scope)
        self.silent = silent  # no payload at all (ids_only without ids)
        self.connection_id = shape.connection_id()

    def wants(self, audience: Audience) -> bool:
        if audience is None:
            return True
        if self.silent:
            return False
        if self.keys is None:
            return True
        key, insert = audience
        return (key is not None and key in self.keys) or (insert and self.inserts)

    def variables(self, now: str) -> dict[str, Any]:
        return {
            "$version": __version__,
            "$now": now,
            "$connection_id": self.connection_id,
            "$ids": self.values,
            "$scope": self.scope,
            "$id_count": len(self.values),
        }


EVERYONE = Subscription([], None)


def of(keys: Any) -> Subscription:
    """A client's subscription, as the fan-out keeps it (``Client.keys``; None: everything)."""
    return keys if isinstance(keys, Subscription) else EVERYONE


class Index:
    """A feed's clients by their subscriptions: every payload, some keys (and perhaps every
    new row), or nothing at all."""

    __slots__ = ("_by_key", "_inserts", "_unfiltered")

    def __init__(self) -> None:
        self._unfiltered: set[Client] = set()
        self._by_key: dict[str, set[Client]] = {}
        self._inserts: set[Client] = set()

    def add(self, client: Client) -> None:
        sub = of(client.keys)
        if sub.silent:
            return
        if sub.keys is None:
            self._unfiltered.add(client)
            return
        for key in sub.keys:
            self._by_key.setdefault(key, set()).add(client)
        if sub.inserts:
            self._inserts.add(client)

    def remove(self, client: Client) -> None:
        sub = of(client.keys)
        self._unfiltered.discard(client)
        self._inserts.discard(client)
        for key in sub.keys or ():
            clients = self._by_key.get(key)
            if clients is not None:
                clients.discard(client)
                if not clients:
                    del self._by_key[key]

    def recipients(self, audience: tuple[str | None, bool]) -> Iterable[Client]:
        """The clients an event is for (an event for everyone goes to every client)."""
        key, insert = audience
        matching = self._by_key.get(key) if key is not None else None
        if insert and self._inserts:
            extra = self._inserts if not matching else self._inserts - matching
            return [*self._unfiltered, *(matching or ()), *extra]
        if not matching:
            return self._unfiltered
        return [*self._unfiltered, *matching]
