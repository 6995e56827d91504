"""Enrichment: a feed's payloads turned into what it sends by a SQL function, in batches.

The function (``config.Enrich``) takes a JSON array of payloads and answers an array as long:
for each, the object to send or null (nothing is sent). Single flight per feed: one call at a
time, with every payload that arrived meanwhile, identical ones once (a burst of a thousand
notifications about one row costs one call and one event). A payload of another channel of
the same feed waits in the same line, so the feed's events keep their order of arrival.

Bounds and policies: at most ``max_pending`` payloads wait for the next call (when full, all of
them are dropped, counted in ``relay_feed_enrich_dropped_total``, and the feed's clients are
told ``event: resync``: they re-read rather than miss something silently). A call has
``timeout`` from the pool to the answer. A failed call is counted
(``relay_feed_enrich_failures_total``) and logged once per run of failures; its payloads
are not sent and the clients are told ``event: resync``. A call that fails on a value the
function's types refuse (a data error) is tried again one payload at a time, so one bad
payload costs only itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from relay.fanout.shape import parse
from relay.logs import get_logger
from relay.metrics import Metrics
from relay.state.readpool import ReadPool
from relay.tasks import cancel_and_wait, spawn

log = get_logger("relay.fanout.enrich")

# The function's name (schema.name) and the payloads as a JSON array; the answer's JSON text.
Call = Callable[[str, str], Awaitable[str]]
# What the enricher hands back, in order: the channel, then the object to send (None: the
# payload itself, for a channel that is not enriched; the text is the payload as notified).
Deliver = Callable[[str, str, Any], None]


@dataclass(slots=True)
class _Item:
    channel: str
    data: str
    function: str | None  # None: passes through, in its place in the line
    resync: bool = False  # the line overflowed here: the clients are told, in order


class EnrichFailed(Exception):
    """The function's answer is not an array as long as the payloads."""


def pool_call(pool: ReadPool) -> Call:
    """Calls on the relay's read pool (``relay/state/readpool.py``; the functions run as their
    owner)."""

    async def call(function: str, payloads: str) -> str:
        schema, name = function.split(".")
        query = sql.SQL("SELECT {}.{}(%s::pg_catalog.jsonb)::pg_catalog.text").format(
            sql.Identifier(schema), sql.Identifier(name)
        )
        async with pool.connection() as conn:
            cursor = await conn.execute(query, (payloads,))
            row = await cursor.fetchone()
        return str(row[0]) if row is not None else "null"

    return call


@dataclass(eq=False, repr=False)
class Enricher:
    """One feed's line of payloads and its one call in flight. ``start()`` then ``aclose()``;
    both idempotent, not reopenable."""

    label: str
    call: Call
    _: KW_ONLY
    timeout: float
    max_pending: int
    deliver: Deliver
    resync: Callable[[str], None]
    metrics: Metrics
    _line: list[_Item] = field(default_factory=list, init=False)
    # (channel, payload) already in line
    _waiting: set[tuple[str, str]] = field(default_factory=set, init=False)
    _wake: asyncio.Event | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _failing: bool = field(default=False, init=False)
    _closed: bool = field(default=False, init=False)

    def __len__(self) -> int:
        return len(self._line)

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError(f"a closed enricher ({self.label}) cannot be started again")
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = spawn(self._run(), f"relay-enrich-{self.label}")

    async def aclose(self, timeout: float | None = None) -> None:
        self._closed = True
        await cancel_and_wait(self._task, timeout)
        self._line.clear()
        self._waiting.clear()

    def submit(self, channel: str, data: str, function: str | None) -> None:
        """A payload, in its place in line (``function`` None: sent as it is, in order)."""
        if self._closed or self._wake is None:
            return
        if function is not None:
            if (channel, data) in self._waiting:
                self.metrics.feed_coalesced.labels(self.label).inc()
                return  # the same payload waits already: one answer serves both
            self._waiting.add((channel, data))
        if len(self._line) >= self.max_pending:
            # Policy when full: drop what waits, and tell the clients (they re-read).
            dropped = sum(1 for item in self._line if not item.resync)
            self.metrics.feed_enrich_dropped.labels(self.label).inc(dropped)
            log.warning("feed_enrich_line_full", feed=self.label, dropped=dropped)
            self._line = [_Item("", "", None, resync=True)]
            self._waiting = {(channel, data)} if function is not None else set()
        self._line.append(_Item(channel, data, function))
        self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._line:
                batch, self._line = self._line, []
                self._waiting = set()
                try:
                    await self._process(batch)
                except Exception:  # one batch must never stop the line
                    log.exception("feed_enrich_batch_failed", feed=self.label)
                    self.resync("enrich_failed")

    async def _process(self, batch: list[_Item]) -> None:
        answers: dict[int, Any] = {}
        failed = False
        by_function: dict[str, list[int]] = {}
        for index, item in enumerate(batch):
            if item.function is not None:
                by_function.setdefault(item.function, []).append(index)
        for function, indexes in by_function.items():
            got = await self._answers(function, [batch[i].data for i in indexes])
            if got is None:
                failed = True
                continue
            for index, answer in zip(indexes, got, strict=True):
                if answer is not _FAILED:
                    answers[index] = answer
                else:
                    failed = True
        for index, item in enumerate(batch):
            if item.resync:
                self.resync("enrich_overflow")
            elif item.function is None:
                self.deliver(item.channel, item.data, None)
            elif answers.get(index) is not None:
                self.deliver(item.channel, item.data, answers[index])
        if failed:
            self.resync("enrich_failed")

    async def _answers(self, function: str, payloads: list[str]) -> list[Any] | None:
        """Each payload's answer (``_FAILED`` for one that failed alone), or None."""
        try:
            return await self._once(function, payloads)
        except psycopg.errors.DataError as error:
            if len(payloads) == 1:
                self._failed(function, error, len(payloads))
                return [_FAILED]
        except Exception as error:
            self._failed(function, error, len(payloads))
            return None
        results: list[Any] = []
        for payload in payloads:  # a value its types refuse: each alone, so one costs itself
            try:
                results.extend(await self._once(function, [payload]))
            except Exception as error:
                self._failed(function, error, 1)
                results.append(_FAILED)
        return results

    async def _once(self, function: str, payloads: list[str]) -> list[Any]:
        self.metrics.feed_enrich_calls.labels(self.label).inc()
        text = "[" + ",".join(payloads) + "]"  # each is a checked JSON object already
        async with asyncio.timeout(self.timeout):
            answer = parse(await self.call(function, text))
        if not isinstance(answer, list) or len(answer) != len(payloads):
            raise EnrichFailed(f"{function} did not answer an array of {len(payloads)}")
        if self._failing:
            self._failing = False
            log.info("feed_enrich_recovered", feed=self.label, function=function)
        return answer

    def _failed(self, function: str, error: BaseException, count: int) -> None:
        self.metrics.feed_enrich_failures.labels(self.label).inc()
        if not self._failing:  # once per run of failures: a failing database is one line
            self._failing = True
            log.error(
                "feed_enrich_failed",
                feed=self.label,
                function=function,
                payloads=count,
                error=f"{type(error).__name__}: {error}"[:300],
                note="logged once until a call succeeds; see relay_feed_enrich_failures_total",
            )


_FAILED = object()

__all__ = ["Call", "Enricher", "pool_call"]
