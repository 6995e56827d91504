"""The reconnect loop the listener and the leader election share: connect, run one session on
that connection, and after any end (an error, a refusal, a bug, a session that returned) wait
out the jittered backoff (``relay/backoff.py``) and connect again, until the owner closes.

The owner decides what an end means: ``ended(error, farewell)`` is called inside the
``except`` block (so ``log.exception`` has the traceback), with ``error`` None when the session
returned and ``farewell`` None when no connection was made; it logs what it must and answers
whether the retry is brief (a standby about to be promoted) rather than the climbing backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from psycopg import AsyncConnection

from relay.backoff import Backoff
from relay.source import pg

Connect = Callable[[], Awaitable[AsyncConnection[Any]]]
Session = Callable[[AsyncConnection[Any]], Awaitable[None]]
Ended = Callable[[BaseException | None, pg.Farewell | None], bool]


def _nothing() -> None:
    pass


def _no_delay(_delay: float) -> None:
    pass


class Reconnect:
    """One loop per owner, run by the owner's task (``await loop.run()``); ``conn`` is the
    session's connection while one runs (for the owner's ``aclose`` to sever it)."""

    def __init__(
        self,
        backoff: Backoff,
        *,
        connect: Connect,
        session: Session,
        ended: Ended,
        closed: Callable[[], bool],
        disconnected: Callable[[], None] = _nothing,
        retrying: Callable[[float], None] = _no_delay,
    ) -> None:
        self.backoff = backoff
        self.conn: AsyncConnection[Any] | None = None
        self._connect = connect
        self._session = session
        self._ended = ended
        self._closed = closed
        self._disconnected = disconnected  # the session's connection is gone (also on cancel)
        self._retrying = retrying  # the delay is drawn; the wait follows

    async def run(self) -> None:
        while not self._closed():
            brief = await self._attempt()
            if self._closed():
                return
            delay = self.backoff.brief() if brief else self.backoff.delay()
            self._retrying(delay)
            await asyncio.sleep(delay)

    async def _attempt(self) -> bool:
        try:
            conn = await self._connect()
        except Exception as error:
            return self._ended(error, None)
        self.conn = conn
        farewell = pg.Farewell(conn)
        try:
            await self._session(conn)
        except Exception as error:  # a bug must not end the loop either: the owner logs it
            return self._ended(error, farewell)
        finally:
            self.conn = None
            self._disconnected()
            with contextlib.suppress(Exception):
                await conn.close()
        return self._ended(None, farewell)


__all__ = ["Reconnect"]
