"""The live stream, end to end: real PostgreSQL, real relay, real HTTP over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import aiohttp

from tests.support import (
    base_url,
    eventually,
    execute,
    relay_config,
    running_relay,
    sample,
    sse_connect,
)

START_JOB = "INSERT INTO public.import_job (slug, state) VALUES ('job-1', 'processing_data')"
FINISH_JOB = "UPDATE public.import_job SET state = 'finished' WHERE slug = 'job-1'"


async def test_sends_current_state_on_connect_with_seed_headers(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.stable is not None)
        async with sse_connect(base_url(relay) + "/api/system-status/live") as client:
            headers = client.response.headers
            assert headers["Content-Type"] == "text/event-stream"
            assert headers["Cache-Control"] == "no-cache, no-transform"
            assert headers["X-Accel-Buffering"] == "no"
            event = await client.next_event()
            assert event.event is None, "stability events must be unnamed (seed's onmessage)"
            assert event.json["stable"] is True
            assert event.json["state"] == "stable"
            assert event.id == str(event.json["seq"])
            assert event.json["since"].endswith("Z")
            assert client.retry == 3000


async def test_flips_both_ways_reach_a_connected_client(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.stable is not None)
        async with sse_connect(base_url(relay) + "/api/system-status/live") as client:
            first = await client.next_event()
            assert first.json["stable"] is True
            await execute(db_dsn, START_JOB)
            processing = await client.next_event()
            assert processing.json == {**processing.json, "stable": False, "state": "processing"}
            await execute(db_dsn, FINISH_JOB)
            stable = await client.next_event()
            assert stable.json["stable"] is True
            assert int(first.id or 0) < int(processing.id or 0) < int(stable.id or 0)


async def test_last_event_id_skips_the_event_the_client_already_has(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.stable is not None)
        url = base_url(relay) + "/api/system-status/live"
        async with sse_connect(url) as client:
            first = await client.next_event()
        assert first.id is not None
        async with sse_connect(url, headers={"Last-Event-ID": first.id}) as client:
            await execute(db_dsn, START_JOB)
            event = await client.next_event()
            assert event.json["state"] == "processing", "the up-to-date state was resent"
        async with sse_connect(url, headers={"Last-Event-ID": first.id}) as client:
            event = await client.next_event()
            assert event.json["state"] == "processing"
            assert int(event.id or 0) > int(first.id)


async def test_heartbeat_comments_arrive(db_dsn: str) -> None:
    config = relay_config(db_dsn, http={"heartbeat": "0.2s"})
    async with running_relay(config) as relay:
        async with sse_connect(base_url(relay) + "/api/system-status/live") as client:
            await client.next_event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    while True:  # read whatever comes (a state change may, too) for a second
                        await client.next_event(timeout=2.0)
            assert client.comments.count("ping") >= 3


async def test_client_that_never_reads_is_dropped_and_memory_stays_bounded(db_dsn: str) -> None:
    config = relay_config(db_dsn, http={"heartbeat": "0.01s", "client_buffer": "16KiB"})
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.stable is not None)
        # A raw socket with a tiny receive buffer that never reads.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", relay.port))
        await loop.sock_sendall(sock, b"GET /api/system-status/live HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(lambda: len(relay.hub) == 1, timeout=5)
        # Flood named events so the unsent bytes grow past the bound quickly.
        payload = '{"x":"' + "y" * 2000 + '"}'
        for _ in range(2000):
            relay.hub.publish_event("flood", payload)
            if len(relay.hub) == 0:
                break
            await asyncio.sleep(0)
        await eventually(lambda: len(relay.hub) == 0, timeout=5)
        dropped = sample(relay, "relay_sse_clients_dropped_total")
        assert dropped == 1
        sock.close()


async def test_normal_clients_keep_receiving_while_a_slow_one_is_dropped(db_dsn: str) -> None:
    config = relay_config(db_dsn, http={"client_buffer": "16KiB"})
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.stable is not None)
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
        slow.connect(("127.0.0.1", relay.port))
        try:
            slow.sendall(b"GET /api/system-status/live HTTP/1.1\r\nHost: x\r\n\r\n")
            async with sse_connect(base_url(relay) + "/api/system-status/live") as fast:
                await fast.next_event()
                await eventually(lambda: len(relay.hub) == 2)
                pad = "z" * 4000  # 12 MB in all: past what the kernel's socket buffers absorb
                for i in range(3000):
                    relay.hub.publish_event("flood", f'{{"i":{i},"pad":"{pad}"}}')
                    received = await fast.next_event()
                    assert received.json["i"] == i
                assert len(relay.hub) == 1, "the slow client was dropped, the fast one kept"
                assert sample(relay, "relay_sse_clients_dropped_total") == 1
        finally:
            slow.close()


async def test_refuses_clients_over_the_limit_with_429(db_dsn: str) -> None:
    config = relay_config(db_dsn, http={"max_clients": 2})
    async with running_relay(config) as relay:
        url = base_url(relay) + "/api/system-status/live"
        async with aiohttp.ClientSession() as session:
            async with sse_connect(url, session=session), sse_connect(url, session=session):
                await eventually(lambda: len(relay.hub) == 2)
                async with session.get(url) as refused:
                    assert refused.status == 429
                    assert refused.headers["Retry-After"]


async def test_a_client_that_hangs_up_leaves_the_hub(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay:
        url = base_url(relay) + "/api/system-status/live"
        async with sse_connect(url) as client:
            await client.next_event()
            assert len(relay.hub) == 1
        await eventually(lambda: len(relay.hub) == 0, timeout=5)


async def test_a_per_address_slot_is_freed_when_its_stream_ends(db_dsn: str) -> None:
    config = relay_config(db_dsn, http={"max_clients_per_address": 1})
    async with running_relay(config) as relay, aiohttp.ClientSession() as session:
        # The database has no job: once connected, the relay says stable, and stays so.
        await eventually(lambda: relay.stability.current.stable is not None)
        url = base_url(relay) + "/api/system-status/live"
        async with sse_connect(url, session=session) as client:
            assert (await client.next_event()).json["state"] == "stable"
            async with session.get(url) as refused:
                assert refused.status == 429, "the open stream holds the address's only slot"
        await eventually(lambda: len(relay.hub) == 0, timeout=5)
        async with sse_connect(url, session=session) as client:
            event = await client.next_event()
            assert event.json["state"] == "stable", "a stream on the freed slot is served"


async def test_the_stream_refusals_are_plain_text(db_dsn: str) -> None:
    config = relay_config(db_dsn, http={"max_clients": 1})
    async with running_relay(config) as relay, aiohttp.ClientSession() as session:
        url = base_url(relay) + "/api/system-status/live"
        async with sse_connect(url, session=session):
            await eventually(lambda: len(relay.hub) == 1)
            async with session.get(url) as full:
                assert full.status == 429
                assert full.headers["Retry-After"] == "5"
                assert full.content_type == "text/plain"
                assert await full.text() == "too many live clients\n"
        await relay.hub.aclose()
        async with session.get(url) as closing:
            assert closing.status == 503
            assert closing.headers["Retry-After"] == "1"
            assert closing.content_type == "text/plain"


async def test_the_hub_starts_once_and_closes_once_within_its_timeout(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.stable is not None)
        await relay.hub.start()  # already started by the relay: nothing more
        async with sse_connect(base_url(relay) + "/api/system-status/live") as client:
            await client.next_event()
            await relay.hub.aclose(timeout=1.0)
            await relay.hub.aclose(timeout=1.0)  # closed already: nothing more
            try:
                extra = await client.next_event()
            except EOFError:
                pass  # the stream ended
            else:
                raise AssertionError(f"an event after the close: {extra}")
        await eventually(lambda: len(relay.hub) == 0, timeout=5)
