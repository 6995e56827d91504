"""Through Debian's real PgBouncer (issue 14, item 2), stock: no ``ignore_startup_parameters``.

Session pooling works: the relay gets past PgBouncer's refusal of ``options`` and flips come
by notification. Transaction pooling cannot carry LISTEN: the relay refuses it clearly and
reports nothing. The election never ends a backend that the pooler gave another client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from relay.source import pg
from relay.source.election import Leadership
from relay.state.stability import State
from tests.ops_support import PROCESSING, STABLE, running_pgbouncer
from tests.scenarios.faults.proxy import SilentProxy
from tests.support import (
    base_url,
    events,
    eventually,
    execute,
    hints_only_config,
    relay_config,
    running_relay,
)


def server_port(dsn: str) -> int:
    return int(conninfo_to_dict(dsn)["port"])


async def test_session_pooling_connects_through_stock_pgbouncer_and_flips_by_notification(
    db_dsn: str, tmp_path: Path
) -> None:
    async with running_pgbouncer(tmp_path, server_port(db_dsn), pool_mode="session") as bouncer:
        # Heartbeat and reconcile a minute away: a flip seen within seconds came by NOTIFY.
        config = hints_only_config(bouncer.dsn(db_dsn))
        with structlog.testing.capture_logs() as logs:
            async with running_relay(config) as relay:
                await eventually(lambda: relay.stability.current.state is State.STABLE, 15)
                assert relay.listener.pooled is True  # PgBouncer's pid is not the backend's
                assert relay.listener.refusal is None
                await execute(db_dsn, PROCESSING)
                await eventually(lambda: relay.stability.current.state is State.PROCESSING, 5)
                await execute(db_dsn, STABLE)
                await eventually(lambda: relay.stability.current.state is State.STABLE, 5)
                # One sender through the pooler: this relay leads, and its lock holds.
                await eventually(lambda: relay.leadership.is_leader, 10)
                async with aiohttp.ClientSession() as session:
                    async with session.get(base_url(relay) + "/readyz") as response:
                        assert response.status == 200
        assert events(logs, "pooler_refuses_options"), "PgBouncer accepted `options`?"
        (connected,) = events(logs, "database_connected")
        assert connected["pooled"] is True
        assert not events(logs, "database_refused")
        assert "unsupported startup parameter: options" in bouncer.output()


async def test_transaction_pooling_is_refused_clearly_and_nothing_is_reported(
    db_dsn: str, tmp_path: Path
) -> None:
    await execute(db_dsn, PROCESSING)
    async with running_pgbouncer(tmp_path, server_port(db_dsn), pool_mode="transaction") as bouncer:
        config = relay_config(bouncer.dsn(db_dsn))
        with structlog.testing.capture_logs() as logs:
            async with running_relay(config) as relay:

                def refused_twice() -> bool:
                    lost = events(logs, "database_disconnected")
                    return sum("transaction" in entry["reason"] for entry in lost) >= 2

                await eventually(refused_twice, 30)
                assert relay.listener.refusal_kind == "pooler"
                assert relay.listener.refusal is not None
                assert "session-pooling pool" in relay.listener.refusal
                # Never a state from a session that cannot carry notifications: not one
                # read of the truth, the state unknown, not ready, no leader.
                assert relay.metrics.registry.get_sample_value("relay_stability_queries_total") == 0
                assert relay.stability.current.state is State.UNKNOWN
                assert not relay.leadership.is_leader
                async with aiohttp.ClientSession() as session:
                    async with session.get(base_url(relay) + "/readyz") as response:
                        assert response.status == 503
                        answer = await response.json()
                        assert answer["refused"] == "pooler"
                        assert "session-pooling pool" in answer["reason"]
                registry = relay.metrics.registry
                assert registry.get_sample_value("relay_database_refused", {"kind": "pooler"}) == 1
                assert registry.get_sample_value("relay_database_refused", {"kind": "standby"}) == 0
                assert registry.get_sample_value("relay_database_pooled") == 1
        (refused,) = events(logs, "database_refused")
        assert refused["log_level"] == "error"
        assert (
            "point the relay at PostgreSQL directly or at a session-pooling pool"
            in (refused["fix"])
        )
        assert not events(logs, "database_connected")
        assert not events(logs, "leader_elected")


async def test_connections_never_prepare_statements_a_pooler_could_move(
    db_dsn: str, tmp_path: Path
) -> None:
    """Transaction pooling hands each statement's backend around: a statement psycopg had
    prepared on one (after 5 runs, by default) is missing on the next."""
    async with running_pgbouncer(
        tmp_path, server_port(db_dsn), pool_mode="transaction", settings={"default_pool_size": "2"}
    ) as bouncer:
        settings = relay_config(bouncer.dsn(db_dsn)).database
        conns = [await pg.connect(settings, f"relay-test-{n}") for n in range(3)]
        try:
            for _ in range(20):
                for conn in conns:
                    await conn.execute("SELECT %s::int + pg_backend_pid() * 0", [1])
        finally:
            for conn in conns:
                await conn.close()


async def test_a_connector_remembers_the_poolers_refusal_of_options_for_itself(
    db_dsn: str, tmp_path: Path
) -> None:
    """Each connector learns once that PgBouncer refuses ``options``; its later connects, and
    its pool's, go straight to ``set_config()``. Another connector learns it for itself."""
    async with running_pgbouncer(tmp_path, server_port(db_dsn), pool_mode="session") as bouncer:
        settings = relay_config(bouncer.dsn(db_dsn)).database
        options = pg.connect_options(settings, "relay-test-pool")
        first, second = pg.Connector(), pg.Connector()
        with structlog.testing.capture_logs() as logs:
            for conn in [
                await first.connect(settings, "relay-test-1"),
                await first.connect(settings, "relay-test-2"),
                await first.connection_class.connect(settings.dsn, **options),
            ]:
                await conn.close()
            assert len(events(logs, "pooler_refuses_options")) == 1
            assert first.options_refused == {settings.dsn}
            assert second.options_refused == set()
            conn = await second.connect(settings, "relay-test-3")
            await conn.close()
            assert len(events(logs, "pooler_refuses_options")) == 2
        assert second.options_refused == {settings.dsn}


async def backend_pid(conn: psycopg.AsyncConnection[Any]) -> int:
    cursor = await conn.execute("SELECT pg_backend_pid()")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_the_election_never_ends_a_backend_the_pooler_gave_another_client(
    db_dsn: str, tmp_path: Path
) -> None:
    """The leader's connection ends; PgBouncer resets its server backend and hands it to
    another client, which takes an advisory lock of its own. The relay comes back, finds its
    lock taken, and must not end that backend (same pid, same start time: it was its own)."""
    key = 0x5EB0_0C3E
    changes: list[bool] = []

    async def changed(leading: bool) -> None:
        changes.append(leading)

    async with (
        running_pgbouncer(tmp_path, server_port(db_dsn), pool_mode="session") as bouncer,
        SilentProxy(bouncer.port) as forwarder,
    ):
        via_forwarder = make_conninfo(bouncer.dsn(db_dsn), port=forwarder.port)
        settings = relay_config(via_forwarder).database
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as admin:

            async def lock_backend() -> int | None:
                cursor = await admin.execute(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND objid = %s::bigint::oid",
                    [key],
                )
                row = await cursor.fetchone()
                return int(row[0]) if row else None

            leadership = Leadership(settings, changed, key=key, interval=0.2)
            await leadership.start()
            try:
                await eventually(lambda: leadership.is_leader)
                own = await lock_backend()
                assert own is not None
                forwarder.hold()  # the relay's reconnect waits
                forwarder.close_all()  # PgBouncer sees its client leave: resets the backend

                async def released() -> bool:
                    return await lock_backend() is None

                await eventually(released)
                # Someone else holds the relay's lock; another client gets its old backend.
                await admin.execute("SELECT pg_advisory_lock(%s)", [key])
                async with await psycopg.AsyncConnection.connect(
                    bouncer.dsn(db_dsn), autocommit=True
                ) as other:
                    assert await backend_pid(other) == own, "PgBouncer gave another backend"
                    await other.execute("SELECT pg_advisory_lock(4242)")
                    forwarder.release()

                    async def tried() -> bool:
                        cursor = await admin.execute(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name "
                            "LIKE '%%(leader election)' AND query LIKE '%%pg_try_advisory_lock%%' "
                            "AND state = 'idle'"
                        )
                        row = await cursor.fetchone()
                        return bool(row and row[0])

                    await eventually(tried)
                    await admin.execute("SELECT pg_advisory_unlock(%s)", [key])

                    async def leads_again() -> bool:
                        return leadership.is_leader and await lock_backend() is not None

                    await eventually(leads_again)  # back once the lock is free
                    assert changes == [True, False, True]
                    # The other client's backend lived through it all.
                    assert await backend_pid(other) == own
            finally:
                await leadership.aclose()
