"""Three relays on one PostgreSQL behind Caddy's load balancing (deploy/Caddyfile)."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp

from relay.app import Relay
from tests.ops_support import PROCESSING, STABLE, running_caddy
from tests.support import SseClient, eventually, execute, relay_config
from tests.webhook_receiver import Receiver

LIVE = "/api/system-status/live"
BROWSERS = 6


class Browser:
    """What EventSource does: reconnect when the stream ends, sending Last-Event-ID."""

    def __init__(self, session: aiohttp.ClientSession, url: str, name: str) -> None:
        self.session = session
        self.url = url
        self.state: str | None = None
        self.last_id: str | None = None
        self.connections = 0
        self.task = asyncio.create_task(self._run(), name=name)

    async def _run(self) -> None:
        while True:
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            with contextlib.suppress(EOFError, aiohttp.ClientError, TimeoutError):
                async with self.session.get(self.url, headers=headers) as response:
                    if response.status == 200:
                        self.connections += 1
                        client = SseClient(response)
                        while True:
                            event = await client.next_event(timeout=3600)
                            if event.event is None:
                                self.state, self.last_id = event.json["state"], event.id
            await asyncio.sleep(0.1)  # the relay's retry: is 3 s; no need to wait here

    async def aclose(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def _ready(relay: Relay) -> bool:
    return relay.stability.current.stable is not None and relay.listener.connected.is_set()


async def test_three_relays_behind_caddy_share_clients_and_send_each_webhook_once(
    db_dsn: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(Receiver())
        relays: list[Relay] = []
        for index in range(3):
            config = relay_config(
                db_dsn,
                http={"heartbeat": "500ms"},
                webhooks=[{"name": "ci", "url": receiver.url}],
                state_directory=str(tmp_path / f"relay-{index}"),
            )
            relay = Relay(config)
            await relay.start()
            stack.push_async_callback(relay.aclose)
            relays.append(relay)
        # Caddy's first health check runs at its start: a relay not yet ready then gets no
        # clients until the next check, and least_conn could not spread them.
        await eventually(lambda: all(_ready(relay) for relay in relays))
        ports = [relay.port for relay in relays]
        caddy = await stack.enter_async_context(
            running_caddy(tmp_path, ports, health_interval="300ms")
        )
        session = await stack.enter_async_context(aiohttp.ClientSession())
        browsers: list[Browser] = []
        for index in range(BROWSERS):
            browser = Browser(session, caddy.app_url + LIVE, f"browser-{index}")
            stack.push_async_callback(browser.aclose)
            browsers.append(browser)
            await eventually(lambda b=browser: b.state == "stable")  # type: ignore[misc]

        # least_conn spreads the streams over the three relays.
        assert sorted(len(relay.hub) for relay in relays) == [2, 2, 2]
        await eventually(lambda: sum(r.leadership.is_leader for r in relays) == 1)
        leader = next(r for r in relays if r.leadership.is_leader)
        await asyncio.sleep(1.0)  # let the leader's start-up delivery (if any) land
        baseline = len(receiver.states)

        # A flip reaches the clients of all three; the webhook goes out once.
        await execute(db_dsn, PROCESSING)
        await eventually(lambda: all(b.state == "processing" for b in browsers))
        await eventually(lambda: len(receiver.states) > baseline)
        await asyncio.sleep(1.0)  # room for duplicates to show up, if there were any
        assert receiver.states[baseline:] == ["processing"], receiver.states

        # Stopping a relay moves its clients to the other two; they resync.
        stopped = next(r for r in relays if r is not leader)
        await stopped.aclose()
        rest = [r for r in relays if r is not stopped]
        await eventually(lambda: sum(len(r.hub) for r in rest) == BROWSERS, timeout=10)
        await eventually(lambda: sum(b.connections for b in browsers) == BROWSERS + 2)
        await execute(db_dsn, STABLE)
        await eventually(lambda: all(b.state == "stable" for b in browsers))
        await asyncio.sleep(1.0)
        assert receiver.states[baseline:] == ["processing", "stable"], receiver.states

        # Stopping the leader hands webhooks to the last relay: the next flip is sent once
        # (the new leader may first repeat the current state: it cannot know what the old
        # one delivered, and deliveries are at-least-once).
        await leader.aclose()
        last = next(r for r in relays if r not in (stopped, leader))
        await eventually(lambda: last.leadership.is_leader, timeout=10)
        await eventually(lambda: len(last.hub) == BROWSERS, timeout=10)
        await asyncio.sleep(1.0)
        after_takeover = len(receiver.states)
        assert receiver.states[baseline + 2 :] in ([], ["stable"]), receiver.states
        await execute(db_dsn, PROCESSING)
        await eventually(lambda: all(b.state == "processing" for b in browsers))
        await eventually(lambda: len(receiver.states) > after_takeover)
        await asyncio.sleep(1.0)
        assert receiver.states[after_takeover:] == ["processing"], receiver.states
