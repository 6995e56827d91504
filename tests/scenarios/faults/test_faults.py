"""Fault injection: real PostgreSQL, real sockets; every scenario bounded in time.

Each test names the fault and what must hold through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import psycopg

from relay.app import Relay
from relay.devtools.embedded import EmbeddedPostgres
from relay.state.stability import State
from tests.scenarios.faults.conftest import SECRETS, TOKEN
from tests.scenarios.faults.proxy import SilentProxy
from tests.support import (
    SseClient,
    base_url,
    eventually,
    execute,
    relay_config,
    running_relay,
    sample,
    sse_connect,
    truth,
)

START = "INSERT INTO public.import_job (slug, state) VALUES ('{slug}', 'processing_data')"
FINISH_ALL = "UPDATE public.import_job SET state = 'finished'"


class Watcher:
    """One SSE client in a task, recording every ``stable`` value it is sent."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.seen: list[bool | None] = []
        self.ready = asyncio.Event()
        self._session = session
        self._url = url
        self.task = asyncio.create_task(self._watch(), name="test-watcher")

    async def _watch(self) -> None:
        async with self._session.get(self._url) as response:
            assert response.status == 200
            client = SseClient(response)
            while True:
                event = await client.next_event(timeout=120)
                if event.event is None:
                    self.seen.append(event.json["stable"])
                    self.ready.set()

    @property
    def last(self) -> bool | None:
        return self.seen[-1] if self.seen else None


async def start_watchers(relay: Relay, count: int) -> tuple[aiohttp.ClientSession, list[Watcher]]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    url = base_url(relay) + "/api/system-status/live"
    watchers = [Watcher(session, url) for _ in range(count)]
    await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in watchers)), timeout=60)
    return session, watchers


async def stop_watchers(session: aiohttp.ClientSession, watchers: list[Watcher]) -> None:
    for watcher in watchers:
        watcher.task.cancel()
    await asyncio.gather(*(w.task for w in watchers), return_exceptions=True)
    await session.close()


def all_see(watchers: list[Watcher], value: bool | None) -> Callable[[], bool]:
    return lambda: all(w.last is value for w in watchers)


async def test_outages_with_500_clients_each_see_null_then_truth(
    restartable_pg: EmbeddedPostgres, secret_dsn: str
) -> None:
    """Fault 1: PostgreSQL stopped (immediate) and restarted 10 times under 500 clients."""
    reconnects = await run_outages(restartable_pg, secret_dsn, clients=500, cycles=10)
    assert reconnects >= 10


async def run_outages(server: EmbeddedPostgres, dsn: str, clients: int, cycles: int) -> float:
    """Stop the server (immediate) and start it again ``cycles`` times under ``clients`` SSE
    clients; each must see ``null`` during every outage and the truth, alternated by a commit,
    after it. Returns the relay's reconnect count."""
    async with running_relay(relay_config(dsn)) as relay:
        await eventually(lambda: relay.stability.current.stable is True)
        session, watchers = await start_watchers(relay, clients)
        try:
            for cycle in range(cycles):
                server.stop(mode="immediate")
                await eventually(all_see(watchers, None), timeout=60)
                server.start()
                expected = cycle % 2 == 1
                await execute(dsn, FINISH_ALL if expected else START.format(slug=f"o{cycle}"))
                await eventually(all_see(watchers, expected), timeout=60)
                assert await truth(dsn) is expected
            assert all(w.seen.count(None) >= cycles for w in watchers)
        finally:
            await stop_watchers(session, watchers)
        return sample(relay, "relay_reconnects_total")


async def test_listener_back_within_two_seconds_after_termination(secret_dsn: str) -> None:
    """Fault 2: the listener's backend terminated; it reconnects and re-reads the state."""
    async with running_relay(relay_config(secret_dsn)) as relay:
        await eventually(lambda: relay.listener.connected.is_set())
        for round_ in range(3):
            reconnects = sample(relay, "relay_reconnects_total")
            await execute(
                secret_dsn,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'stability-relay'",
                START.format(slug=f"while-down-{round_}"),
            )
            # Counted, not watched: the relay may be back before a check could see it gone.
            await eventually(
                lambda: sample(relay, "relay_reconnects_total") > reconnects,  # noqa: B023
                timeout=2,
            )
            started = time.monotonic()
            await eventually(lambda: relay.stability.current.state is State.PROCESSING, timeout=2)
            assert time.monotonic() - started < 2
            await execute(secret_dsn, FINISH_ALL)
            await eventually(lambda: relay.stability.current.state is State.STABLE, timeout=2)


async def test_half_open_connection_is_noticed_and_recovered(
    pg_server: EmbeddedPostgres | None, secret_dsn: str
) -> None:
    """Fault 3: a proxy between relay and PostgreSQL goes silent without closing.

    With the default heartbeat (5 s interval, 5 s timeout) the relay must report unknown
    within 15 s, and come back once the path works again.
    """
    port = (
        pg_server.port
        if pg_server is not None
        else int(psycopg.conninfo.conninfo_to_dict(secret_dsn)["port"])
    )
    async with SilentProxy(port) as proxy:
        dsn = psycopg.conninfo.make_conninfo(secret_dsn, host="127.0.0.1", port=proxy.port)
        config = relay_config(
            dsn,
            database={
                "heartbeat_interval": "5s",
                "heartbeat_timeout": "5s",
                "connect_timeout": "5s",
            },
        )
        async with running_relay(config) as relay:
            await eventually(lambda: relay.stability.current.stable is True, timeout=10)
            proxy.pause()
            paused_at = time.monotonic()
            await eventually(lambda: relay.stability.current.stable is None, timeout=16)
            noticed_after = time.monotonic() - paused_at
            assert noticed_after <= 15.5, f"noticed after {noticed_after:.1f}s"
            await execute(secret_dsn, START.format(slug="during-partition"))
            proxy.resume()
            await eventually(lambda: relay.stability.current.state is State.PROCESSING, timeout=20)


async def test_slow_clients_are_dropped_while_normal_ones_get_everything(secret_dsn: str) -> None:
    """Fault 4: clients that never read, next to clients that do."""
    config = relay_config(secret_dsn, http={"client_buffer": "32KiB"})
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.stable is True)
        loop = asyncio.get_running_loop()
        slow_sockets = []
        for _ in range(20):
            import socket

            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", relay.port))
            await loop.sock_sendall(
                sock, b"GET /api/system-status/live HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            slow_sockets.append(sock)
        try:
            async with aiohttp.ClientSession() as http:
                url = base_url(relay) + "/api/system-status/live"
                async with (
                    sse_connect(url, session=http) as fast_a,
                    sse_connect(url, session=http) as fast_b,
                ):
                    await fast_a.next_event()
                    await fast_b.next_event()
                    await eventually(lambda: len(relay.hub) == 22)
                    pad = "p" * 4000
                    peak = 0
                    for i in range(3000):
                        relay.hub.publish_event("flood", f'{{"i":{i},"pad":"{pad}"}}')
                        peak = max(peak, _buffered_bytes(relay))
                        for fast in (fast_a, fast_b):
                            assert (await fast.next_event()).json["i"] == i
                    assert len(relay.hub) == 2, "every slow client was dropped"
                    # Bounded: never more than the per-client bound (plus one frame) each.
                    assert peak <= 22 * (32 * 1024 + 5000)
        finally:
            for sock in slow_sockets:
                sock.close()


def _buffered_bytes(relay: Relay) -> int:
    return sum(c.transport.get_write_buffer_size() for c in relay.hub._clients)


# 2,000 clients at once on a shared machine can starve the listener's heartbeat for seconds:
# that is not the fault under test, so the relay waits longer before it calls the database gone.
STARVED = {"heartbeat_timeout": "30s"}


async def test_reconnect_storm_of_2000_clients_with_last_event_id(secret_dsn: str) -> None:
    """Fault 5: 2,000 clients reconnect at once with Last-Event-ID; none refused."""
    async with running_relay(relay_config(secret_dsn, database=STARVED)) as relay:
        await eventually(lambda: relay.stability.current.stable is True)
        last_id = str(relay.stability.current.seq)
        await execute(secret_dsn, START.format(slug="storm"))
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        url = base_url(relay) + "/api/system-status/live"
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def reconnect() -> bool | None:
                async with http.get(url, headers={"Last-Event-ID": last_id}) as response:
                    assert response.status == 200
                    event = await SseClient(response).next_event(timeout=60)
                    return bool(event.json["stable"]) if event.json["stable"] is not None else None

            results = await asyncio.gather(*(reconnect() for _ in range(2000)))
        assert results == [False] * 2000, "every client got the newer state"
        assert sample(relay, "relay_sse_clients_refused_total") == 0


async def test_bad_notifications_are_counted_and_dropped(
    secret_dsn: str, relay_output: io.StringIO
) -> None:
    """Fault 6: garbage payloads, unknown channels, and a notification queue filling up."""
    config = relay_config(secret_dsn, channels=["import_job_progress"])
    async with running_relay(config) as relay:
        await eventually(lambda: relay.listener.connected.is_set())
        # A session that LISTENs inside an open transaction holds the queue's tail.
        blocker = await psycopg.AsyncConnection.connect(secret_dsn)
        try:
            await blocker.execute("LISTEN import_job_progress")
            await blocker.commit()  # LISTEN takes effect at commit
            await blocker.execute("SELECT 1")  # then stays in a transaction: it never consumes
            async with await psycopg.AsyncConnection.connect(secret_dsn, autocommit=True) as noisy:
                for i in range(300):
                    payload = "x" * 7000 if i % 3 == 0 else ("[1]" if i % 3 == 1 else "{bad")
                    await noisy.execute("SELECT pg_notify('import_job_progress', %s)", (payload,))
                    await noisy.execute("SELECT pg_notify('nobody_listens_here', 'x')")
                    await noisy.execute("SELECT pg_notify('system_stability', %s)", (payload,))
            dropped = "relay_notifications_dropped_total"
            channel = "import_job_progress"
            await eventually(
                lambda: (
                    sum(
                        sample(relay, dropped, channel=channel, reason=r)
                        for r in ("not_json", "not_an_object")
                    )
                    == 300
                )
            )
            usage = "relay_notify_queue_usage_ratio"
            await eventually(lambda: sample(relay, usage) > 0, timeout=15)
        finally:
            await blocker.close()
        assert relay.listener.connected.is_set()
        assert relay.stability.current.state is State.STABLE
        assert relay_output.getvalue().count('"notification_dropped"') <= 2


async def _chaos_transaction(dsn: str, rng: random.Random) -> None:
    statements = [
        "INSERT INTO public.import_job (slug, state) VALUES ('c{n}', 'analysing_data')",
        "UPDATE public.import_job SET state = 'finished' WHERE id = "
        "(SELECT id FROM public.import_job WHERE state <> 'finished' "
        "LIMIT 1 FOR UPDATE SKIP LOCKED)",
        "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'pending')",
        "UPDATE worker.tasks SET state = 'failed' WHERE id = "
        "(SELECT id FROM worker.tasks WHERE state = 'pending' LIMIT 1 FOR UPDATE SKIP LOCKED)",
    ]
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for _ in range(rng.randint(1, 3)):
            await conn.execute(rng.choice(statements).format(n=rng.getrandbits(48)))
            await asyncio.sleep(rng.random() * 0.005)
        await (conn.rollback() if rng.random() < 0.1 else conn.commit())


async def test_exact_after_chaos_100_of_100_runs(secret_dsn: str) -> None:
    """Fault 7: random concurrent transactions interleaved with listener kills."""
    exact = await run_chaos(secret_dsn, random.Random(7), runs=100, writers=6, kills=0.3)
    assert exact == 100


async def _deadlock_aborts(transaction: Awaitable[None]) -> None:
    """A writer PostgreSQL picks as a deadlock's victim is rolled back: as in production,
    the truth is then what the others committed (the relay must still match it)."""
    with contextlib.suppress(psycopg.errors.DeadlockDetected):
        await transaction


async def run_chaos(dsn: str, rng: random.Random, runs: int, writers: int, kills: float) -> int:
    """Rounds of concurrent random transactions (and sometimes a kill of the listener's
    backend); after each round the relay must settle on the truth. Returns the exact rounds.
    Reconcile and heartbeat are pushed out: only hints and reconnects can make it right."""
    config = relay_config(
        dsn, database={"heartbeat_interval": "60s"}, stability={"reconcile_interval": "60s"}
    )
    exact_runs = 0
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.stable is not None)
        for run in range(runs):
            work = [_chaos_transaction(dsn, rng) for _ in range(rng.randint(2, writers))]
            if rng.random() < kills:
                work.append(
                    execute(
                        dsn,
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'stability-relay'",
                    )
                )
            if run % 10 == 9:
                work.append(execute(dsn, FINISH_ALL, "UPDATE worker.tasks SET state = 'completed'"))
            await asyncio.gather(*(_deadlock_aborts(w) for w in work))
            expected = State.from_truth(await truth(dsn))
            await eventually(lambda e=expected: relay.stability.current.state is e, timeout=10)
            exact_runs += 1
    return exact_runs


async def test_status_and_metrics_never_show_secrets(secret_dsn: str) -> None:
    """Secrets stay out of every answer, too (the logs are checked for the whole suite)."""
    config = relay_config(secret_dsn, auth={"bearer_tokens": [TOKEN]})
    async with running_relay(config) as relay, aiohttp.ClientSession() as http:
        await eventually(lambda: relay.listener.connected.is_set())
        headers = {"Authorization": f"Bearer {TOKEN}"}
        bodies: list[Any] = []
        for path in ("/api/system-status", "/metrics", "/readyz", "/api/system-status/details"):
            async with http.get(base_url(relay) + path, headers=headers) as response:
                bodies.append(await response.text())
        text = "\n".join(bodies)
        for secret in SECRETS:
            assert secret not in text
