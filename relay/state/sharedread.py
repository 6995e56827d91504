"""A read of the database taken after the request arrived, shared by the requests in line.

A request joins the next read that has not started yet, never one already running (its
snapshot may predate the request): at most one read runs and one waits, however many
requests there are. Bound: ``max_waiting`` requests in line; past that,
:class:`DatabaseUnavailable` (the routes answer 503). Used for fresh reads of the activities
(``relay/state/waits.py``) and for the indicators (``relay/state/details.py``).

The details' rounds (``Details._round`` in ``relay/state/details.py``) are the other single
flight, and do join a round already running: they promise consistency with the state that
was current when the request arrived (a round per state number), not read-your-writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from prometheus_client import Counter

from relay.errors import DatabaseUnavailable
from relay.logs import get_logger
from relay.tasks import cancel_and_wait

log = get_logger("relay.state.sharedread")
T = TypeVar("T")


class SharedRead(Generic[T]):
    def __init__(
        self,
        read: Callable[[], Awaitable[T]],
        *,
        name: str,
        max_waiting: int,
        counter: Counter | None = None,
    ) -> None:
        self._read = read
        self._name = name
        self._max_waiting = max_waiting
        self._counter = counter
        self._waiting = 0
        self._running: asyncio.Task[None] | None = None
        self._current: asyncio.Future[T] | None = None  # the read running
        self._next: asyncio.Future[T] | None = None  # the next, not started
        self._closed = False

    async def read(self) -> T:
        if self._closed:
            raise DatabaseUnavailable(f"{self._name}: stopping")
        if self._waiting >= self._max_waiting:
            raise DatabaseUnavailable(f"too many {self._name} requests waiting")
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._next.add_done_callback(_retrieve)
            if self._running is None:
                self._start()
        future = self._next if self._next is not None else self._current
        assert future is not None
        self._waiting += 1
        try:
            # Shielded: a caller that goes away must not cancel the read the others share.
            return await asyncio.shield(future)
        finally:
            self._waiting -= 1

    def _start(self) -> None:
        future, self._next = self._next, None
        assert future is not None
        self._current = future
        self._running = asyncio.create_task(self._run(future), name=f"relay-{self._name}")

    async def _run(self, future: asyncio.Future[T]) -> None:
        if self._counter is not None:
            self._counter.inc()
        try:
            result = await self._read()
        except DatabaseUnavailable as error:  # every waiter gets it; the next may do better
            if not future.done():
                future.set_exception(error)
        except Exception as error:  # a bug: logged, and the waiters hear "unavailable"
            log.exception("shared_read_failed", read=self._name)
            if not future.done():
                future.set_exception(DatabaseUnavailable(type(error).__name__))
        else:
            if not future.done():
                future.set_result(result)
        finally:
            self._running = None
            if self._next is not None and not self._closed:
                self._start()

    async def aclose(self, timeout: float | None = None) -> None:
        """Every request in line hears "unavailable"; the read running is cancelled.
        Idempotent."""
        self._closed = True
        for future in (self._current, self._next):
            if future is not None and not future.done():
                future.set_exception(DatabaseUnavailable(f"{self._name}: stopping"))
        self._next = None
        await cancel_and_wait(self._running, timeout)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: waiters that left never would
