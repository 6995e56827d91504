"""The harness the queue profile tests share (tests/scenarios/test_river_profile.py and
tests/scenarios/test_oban_profile.py): a reproduction of the queue's job table with our hints
installed, a relay on the hint path alone, and the truth read from the rows. Each test file keeps
its queue's own facts: the statements its runtime issues, its enum, its tests.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from relay.app import Relay
from relay.config import Config
from relay.config.activities import Activity
from relay.config.profiles import load_profile
from relay.source.install import install
from relay.state.stability import State
from tests.support import (
    HINTS_ONLY,
    HintLog,
    eventually,
    fresh_database,
    hint_log,
    relay_config,
    running_relay,
    sample,
)

Conn = psycopg.AsyncConnection[Any]
HINTED = 2.0  # seconds: a hinted change is seen well within it, an unhinted one is not

Step = Callable[[Conn, random.Random], Awaitable[None]]
"""One random step of one of the queue's processes."""
DrainStep = Callable[[Conn], Awaitable[bool]]
"""One pass at working everything off; true when it fetched some job."""


async def hint_path(relay: Relay) -> None:
    """Past any poll (every session starts with one, a hold is one: relay/source/hold.py):
    from now on only a hint makes the relay read."""
    await eventually(lambda: relay.listener.connected.is_set())
    await eventually(lambda: sample(relay, "relay_polling") == 0)


async def started(relay: Relay) -> None:
    await eventually(lambda: relay.stability.current.state is State.STABLE)
    await hint_path(relay)


@dataclass(frozen=True)
class QueueProfile:
    """A queue's profile (``name``: relay/config/profiles/<name>.yaml) on its job
    ``table`` (tests/fixtures/<name>.sql), whose ``enum_type`` state is work while in
    ``active``."""

    name: str
    table: str
    enum_type: str
    active: frozenset[str]

    @property
    def fixture(self) -> Path:
        return Path(__file__).parent / "fixtures" / f"{self.name}.sql"

    @property
    def profile_yaml(self) -> Path:
        profiles = Path(__file__).parent.parent / "relay" / "config" / "profiles"
        return profiles / f"{self.name}.yaml"

    @property
    def activities(self) -> tuple[Activity, ...]:
        return load_profile(self.name).activities

    @asynccontextmanager
    async def database(self, admin_dsn: str) -> AsyncIterator[str]:
        """A fresh database with the fixture's table and our hints installed."""
        async with fresh_database(admin_dsn, self.name) as dsn:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                async with conn.transaction():
                    await conn.execute(self.fixture.read_bytes())
            await install(dsn, activities=self.activities, profile=self.name)
            yield dsn

    def config(self, dsn: str) -> Config:
        """The hint path alone: heartbeat and reconcile a minute away, and no hold (a hold polls,
        which would cover a statement our triggers missed)."""
        return relay_config(
            dsn,
            profile=self.name,
            database=HINTS_ONLY,
            stability={
                "reconcile_interval": "60s",
                "hold_when_busy": False,
                "hold_release_after": "0.2s",  # the poll every session starts with
            },
        )

    @asynccontextmanager
    async def session(self, dsn: str) -> AsyncIterator[tuple[Conn, Relay]]:
        """A connection to write with and a relay on the hint path (``config``), started."""
        async with (
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
            running_relay(self.config(dsn)) as relay,
        ):
            await started(relay)
            yield conn, relay

    # -- the truth ----------------------------------------------------------------------------

    async def active_count(self, conn: Conn) -> int:
        cursor = await conn.execute(
            f"SELECT count(*) FROM {self.table} WHERE state::text = ANY(%s)",
            (sorted(self.active),),
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async def ids_in(self, conn: Conn, state: str) -> list[int]:
        cursor = await conn.execute(
            f"SELECT id FROM {self.table} WHERE state = %s::{self.enum_type} ORDER BY id",
            (state,),
        )
        return [row[0] for row in await cursor.fetchall()]

    async def random_id(self, conn: Conn) -> int | None:
        cursor = await conn.execute(f"SELECT id FROM {self.table} ORDER BY random() LIMIT 1")
        row = await cursor.fetchone()
        return None if row is None else int(row[0])

    # -- the fixture's catalog and the profile's file -----------------------------------------

    async def enum_labels(self, conn: Conn) -> list[str]:
        cursor = await conn.execute(
            "SELECT enumlabel::text FROM pg_enum"
            f" WHERE enumtypid = '{self.enum_type}'::regtype ORDER BY enumsortorder"
        )
        return [row[0] for row in await cursor.fetchall()]

    async def state_indexes(self, conn: Conn) -> list[str]:
        """The table's indexes that lead with its state column."""
        cursor = await conn.execute(
            "SELECT indexrelid::regclass::text FROM pg_index AS i JOIN pg_attribute AS a"
            " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
            f" WHERE i.indrelid = '{self.table}'::regclass AND a.attname = 'state'"
            " ORDER BY 1"
        )
        return [row[0] for row in await cursor.fetchall()]

    async def triggers(self, conn: Conn) -> list[tuple[Any, ...]]:
        """(name, per statement) of the table's own triggers."""
        cursor = await conn.execute(
            "SELECT tgname, tgtype & 1 = 0 AS per_statement FROM pg_trigger"
            f" WHERE tgrelid = '{self.table}'::regclass AND NOT tgisinternal ORDER BY tgname"
        )
        return await cursor.fetchall()

    def commented_states(self) -> set[str]:
        """The states the profile's file comments on (``# - <state>:``)."""
        text = self.profile_yaml.read_text()
        return set(re.findall(r"^\s*# - (\w+):", text, re.MULTILINE))

    # -- the relay ----------------------------------------------------------------------------

    async def exact(self, relay: Relay, conn: Conn, log: HintLog | None = None) -> bool:
        """With the writers done: the relay comes to say what the rows say, overall and per
        activity, on the hints the writes sent. On the hint path (``hint_path``), with
        heartbeat, reconcile and hold out of the way, a hint is answered within a read (50 ms),
        and nothing else makes the relay read within the bounded wait (its other reads come
        about 5 s apart here), so a statement our triggers missed fails here.
        With ``log``, it still says so once every hint committed so far has been read (the
        log's marker makes it read once more)."""
        busy = await self.active_count(conn) > 0

        def agrees() -> bool:
            current = relay.stability.current
            return current.state is State.from_truth(not busy) and dict(current.activities) == {
                "jobs": busy
            }

        await eventually(agrees, timeout=HINTED)
        if log is not None:
            await log.caught_up()
            assert agrees(), relay.stability.current
        await hint_path(relay)  # the next writes are seen by their hints, not by a poll
        return busy

    # -- concurrent writers -------------------------------------------------------------------

    @staticmethod
    async def writer(dsn: str, seed: int, steps: int, step: Step) -> None:
        """One of the queue's processes: ``steps`` random steps on its own connection. A step
        rolled back by a deadlock or a serialization failure is let go: the queue's services
        and producers retry on their next tick."""
        rng = random.Random(seed)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for _ in range(steps):
                with suppress(pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                    await step(conn, rng)

    async def drain(self, conn: Conn, step: DrainStep) -> None:
        """Work everything off, a ``step`` at a time, until a step fetches nothing and no row
        is active."""
        for _ in range(200):
            fetched = await step(conn)
            if not fetched and await self.active_count(conn) == 0:
                return
        raise AssertionError("the queue did not drain")

    async def writers_settle(self, dsn: str, step: Step, drain_step: DrainStep) -> set[bool]:
        """Six rounds of five concurrent writers (25 steps each), after each of which the relay
        says what the rows say; every second round drained after, and then the relay says
        idle. Returns what the rounds left: busy, idle or both."""
        seen: set[bool] = set()
        async with self.session(dsn) as (conn, relay), hint_log(relay, dsn) as log:
            for round_ in range(6):
                await asyncio.gather(
                    *(self.writer(dsn, seed=round_ * 10 + w, steps=25, step=step) for w in range(5))
                )
                seen.add(await self.exact(relay, conn, log))
                if round_ % 2:
                    await self.drain(conn, drain_step)
                    assert await self.exact(relay, conn, log) is False
        return seen
