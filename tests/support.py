"""Test helpers: a real relay on a loopback port, a real SSE client, database shortcuts."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psycopg
from aiohttp import web
from prometheus_client import CollectorRegistry
from psycopg import sql

from relay.app import Relay
from relay.config import Config, load_config
from relay.state.stability import Snapshot, State


@dataclass
class Event:
    id: str | None = None
    event: str | None = None
    data: str = ""
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.data)


class SseClient:
    """A real SSE client over aiohttp: parses the stream the way a browser does."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []
        self.retry: int | None = None

    async def next_event(self, timeout: float = 5.0) -> Event:
        """The next event with data (comments and retry lines are recorded, not returned)."""
        return await asyncio.wait_for(self._read_event(), timeout)

    async def _read_event(self) -> Event:
        current = Event()
        while True:
            raw = await self.response.content.readline()
            if not raw:
                raise EOFError("stream ended")
            line = raw.decode().rstrip("\n")
            if line == "":
                if current.data or current.event:
                    current.data = current.data.removesuffix("\n")
                    return current
                current = Event()
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                self.comments.append(value)
            elif name == "data":
                current.data += value + "\n"
            elif name == "id":
                current.id = value
            elif name == "event":
                current.event = value
            elif name == "retry":
                self.retry = int(value)

    async def wait_for_state(self, state: str, timeout: float = 10.0) -> Event:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"state {state!r} not seen within {timeout}s")
            event = await self.next_event(remaining)
            if event.event is None and event.json["state"] == state:
                return event


@asynccontextmanager
async def sse_connect(
    url: str, headers: dict[str, str] | None = None, session: aiohttp.ClientSession | None = None
) -> AsyncIterator[SseClient]:
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        async with session.get(url, headers=headers or {}) as response:
            assert response.status == 200, response.status
            yield SseClient(response)
    finally:
        if own:
            await session.close()


def relay_config(dsn: str, **sections: Any) -> Config:
    """A config for tests: loopback port 0, fast heartbeats, quick reconnects."""
    tree: dict[str, Any] = {
        "database": {
            "dsn": dsn,
            "heartbeat_interval": "1s",
            "heartbeat_timeout": "2s",
            "reconnect_initial": "0.1s",
            "reconnect_max": "0.5s",
            "connect_timeout": "2s",
        },
        "http": {"listen": "127.0.0.1:0", "heartbeat": "15s"},
        "stability": {"reconcile_interval": "5s"},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            tree.setdefault(section, {}).update(values)
        else:
            tree[section] = values
    return _config_from_tree(tree)


def _config_from_tree(tree: dict[str, Any]) -> Config:
    return Config.model_validate(tree) if tree else load_config(None)


@asynccontextmanager
async def running_relay(config: Config, **options: Any) -> AsyncIterator[Relay]:
    relay = Relay(config, **options)
    try:
        await relay.start()  # inside: a start that fails half-way still closes what it opened
        yield relay
    finally:
        await relay.aclose()


@asynccontextmanager
async def serve_on_loopback(
    app: web.Application, port: int = 0, **runner_options: Any
) -> AsyncIterator[int]:
    """Serve an aiohttp app on loopback (a stand-in web app, receiver, ...), on ``port`` (0: a
    free one); yields the port."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def base_url(relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.port}"


@asynccontextmanager
async def fresh_database(admin_dsn: str, prefix: str = "test") -> AsyncIterator[str]:
    """An empty database of its own (no demo schema, no relay SQL), dropped afterwards."""
    dbname = f"{prefix}_{uuid.uuid4().hex}"
    name = sql.Identifier(dbname)
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
    try:
        yield psycopg.conninfo.make_conninfo(admin_dsn, dbname=dbname)
    finally:
        async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as admin:
            await admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))


# statbus's /api/sse/worker_status framing (as the statbus profile serves it), for feed tests.
STATBUS_FEED = {
    "path": "/api/sse/worker_status",
    "channels": ["worker_status"],
    "events": "unnamed",
    "on_connect": "event",
    "connect_event": "connected",
    "connect_data": "true",
    "heartbeat": "event",
}


async def execute(dsn: str, *statements: str) -> None:
    """Run statements in one committed transaction."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for statement in statements:
            await conn.execute(statement)


async def truth(dsn: str) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT public.is_system_stable()")
        row = await cursor.fetchone()
        assert row is not None
        return bool(row[0])


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    interval: float = 0.05,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


# Heartbeat and reconcile pushed far out: what a test sees within seconds is the hint (and
# hold) path alone; a missed commit would stay missed for a minute.
HINTS_ONLY = {"heartbeat_interval": "60s", "heartbeat_timeout": "5s"}


def hints_only_config(dsn: str, **stability: Any) -> Config:
    return relay_config(
        dsn, database=HINTS_ONLY, stability={"reconcile_interval": "60s", **stability}
    )


async def activities_truth(dsn: str) -> dict[str, bool]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT public.system_stability_activities()")
        row = await cursor.fetchone()
        assert row is not None
        return dict(row[0])


async def settled(relay: Relay, dsn: str, timeout: float = 5.0) -> None:
    """Wait until the relay's state is the database's truth, overall and per activity."""
    expected = State.from_truth(await truth(dsn))
    activities = await activities_truth(dsn)

    def agrees() -> bool:
        current = relay.stability.current
        return current.state is expected and dict(current.activities) == activities

    await eventually(agrees, timeout=timeout)


# Writes for randomized concurrency tests; each `{slug}` gets a fresh value.
RANDOM_WRITES = [
    "INSERT INTO public.import_job (slug, state) VALUES ('{slug}', 'processing_data')",
    "UPDATE public.import_job SET state = 'finished' WHERE id = "
    "(SELECT id FROM public.import_job WHERE state <> 'finished' ORDER BY random() LIMIT 1)",
    "INSERT INTO worker.tasks (command, state) VALUES ('derive_statistical_unit', 'pending')",
    "UPDATE worker.tasks SET state = 'completed' WHERE id = "
    "(SELECT id FROM worker.tasks WHERE state <> 'completed' ORDER BY random() LIMIT 1)",
    "INSERT INTO worker.tasks (command, state) VALUES ('task_cleanup', 'pending')",
]


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The log lines named ``name`` among those ``structlog.testing.capture_logs()`` caught."""
    return [entry for entry in logs if entry["event"] == name]


def sample(relay: Relay, name: str, **labels: str) -> float:
    """A metric's value as a scrape of the relay's registry reads it (``name`` as exported,
    e.g. ``relay_reconnects_total``). A counter's labelled child that was never incremented
    reads 0; a name the registry does not export is an error, never a silent 0."""
    return registry_sample(relay.metrics.registry, name, **labels)


def registry_sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """:func:`sample` on a registry of its own (a component tested without a relay)."""
    value = registry.get_sample_value(name, labels)
    if value is not None:
        return value
    for family in registry.collect():
        if family.type == "counter" and name == f"{family.name}_total":
            return 0.0
    raise KeyError(f"the relay exports no sample {name}{labels or ''}")


def reads(relay: Relay) -> float:
    """How many reads of the truth the listener has begun."""
    return sample(relay, "relay_stability_queries_total")


PROBE_HINT = "tests.support: probe"  # a hint no trigger sends


async def notify(dsn: str, channel: str, payload: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


async def reads_completed(
    relay: Relay, count: int = 1, *, hint_dsn: str | None = None, timeout: float = 10.0
) -> None:
    """Wait until ``count`` reads of the truth, each begun after this call, are over.

    The listener reads one at a time and counts a read as it begins, so once the count has
    grown by ``count + 1`` the first ``count`` reads have been answered and applied. Without
    ``hint_dsn`` only the relay itself makes it read (a poll during a hold or a drain): one
    that should poll and does not fails here. With ``hint_dsn`` a hint is sent on its
    stability channel whenever no read has begun for 0.25 s; hints that far apart are each
    answered at once and never make a relay take a hold (tests/source/test_hold.py).
    """
    target = reads(relay) + count + 1
    started = last_change = time.monotonic()
    last = reads(relay)
    while (current := reads(relay)) < target:
        now = time.monotonic()
        if now - started > timeout:
            raise TimeoutError(f"{count} reads not over within {timeout}s ({current} < {target})")
        if current != last:
            last, last_change = current, now
        elif hint_dsn is not None and now - last_change >= 0.25:
            await notify(hint_dsn, relay.config.database.channel, PROBE_HINT)
            last_change = time.monotonic()
        await asyncio.sleep(0.01)


@contextmanager
def transitions(relay: Relay) -> Iterator[list[Snapshot]]:
    """Every change of the relay's state while the block runs, in order."""
    seen: list[Snapshot] = []
    observer = seen.append
    relay.stability.subscribe(observer)
    try:
        yield seen
    finally:
        relay.stability.unsubscribe(observer)


class HintLog:
    """A second listener on the relay's stability channel: it sees every notification the
    relay is sent, so it can tell when the relay has dispatched all of them."""

    def __init__(self, relay: Relay, dsn: str) -> None:
        self.relay = relay
        self.dsn = dsn
        self.channel = relay.config.database.channel
        self.payloads: list[str] = []
        self.arrived = asyncio.Event()
        self.relay_count_before = 0.0

    def heard(self, note: psycopg.Notify) -> None:
        self.payloads.append(note.payload)
        self.arrived.set()

    def relay_count(self) -> float:
        return sample(self.relay, "relay_notifications_total", channel=self.channel)

    async def caught_up(self, timeout: float = 10.0) -> None:
        """Every notification committed before this call has been dispatched by the relay,
        and a read begun after that is over (its answer applied).

        A marker is sent after them; notifications reach each listener in commit order, so
        once the relay has counted as many as this log holds up to the marker, the relay has
        dispatched the marker and everything before it.
        """
        marker = f"tests.support: marker {uuid.uuid4().hex}"
        await notify(self.dsn, self.channel, marker)
        async with asyncio.timeout(timeout):
            while marker not in self.payloads:
                self.arrived.clear()
                await self.arrived.wait()
        expected = self.relay_count_before + self.payloads.index(marker) + 1
        await eventually(lambda: self.relay_count() >= expected, timeout=timeout)
        await reads_completed(self.relay, 1, hint_dsn=self.dsn, timeout=timeout)


@asynccontextmanager
async def hint_log(relay: Relay, dsn: str) -> AsyncIterator[HintLog]:
    """A :class:`HintLog` from here on. Enter while no notification is on its way to the
    relay (it is counted from here, by both)."""
    log = HintLog(relay, dsn)
    async with listening(dsn, [log.channel], log.heard):
        log.relay_count_before = log.relay_count()
        yield log


@asynccontextmanager
async def listening(
    dsn: str, channels: Iterable[str], heard: Callable[[psycopg.Notify], None]
) -> AsyncIterator[None]:
    """A connection of its own LISTENing on ``channels``: each notification to ``heard``,
    from the moment the block begins until it ends."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for channel in channels:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

        async def collect() -> None:
            async with aclosing(conn.notifies()) as notifies:
                async for note in notifies:
                    heard(note)

        task = asyncio.create_task(collect(), name="tests-listening")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
