"""Both ways of holding a stream (relay/fanout/takeover.py) serve the same stream: the fast
path, taken over from aiohttp, and the public path an untested aiohttp gets."""

from __future__ import annotations

import pytest

from relay.app import Relay
from relay.fanout import takeover
from tests.support import (
    base_url,
    eventually,
    execute,
    relay_config,
    running_relay,
    sample,
    sse_connect,
)

LIVE = "/api/system-status/live"
START_JOB = "INSERT INTO public.import_job (slug, state) VALUES ('job-1', 'processing_data')"
FINISH_JOB = "UPDATE public.import_job SET state = 'finished' WHERE slug = 'job-1'"


def aiohttp_connections(relay: Relay) -> int:
    """Connections aiohttp's server still handles (``web.Server.connections``)."""
    runner = relay._runner  # the relay's AppRunner: no public accessor, a test may look
    assert runner is not None and runner.server is not None
    return len(runner.server.connections)


def test_the_fast_path_is_taken_only_on_a_tested_aiohttp() -> None:
    assert takeover.fast_path_refusal("3.14.5", {}) is None
    refused = takeover.fast_path_refusal("3.15.0", {})
    assert refused is not None and "3.15.0" in refused and "3.14" in refused
    assert takeover.fast_path_refusal("4.0.0a1", {}) is not None
    assert takeover.fast_path_refusal("3.14.5", {"RELAY_SSE_TAKEOVER": "off"}) is not None


@pytest.mark.parametrize("path", ["takeover", "public"])
async def test_both_paths_stream_flips_and_end_cleanly(
    path: str, db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "public":
        monkeypatch.setenv("RELAY_SSE_TAKEOVER", "off")
    config = relay_config(db_dsn, http={"retry": "2s"})
    async with running_relay(config) as relay:
        assert sample(relay, "relay_sse_takeover") == (1 if path == "takeover" else 0)
        await eventually(lambda: relay.stability.current.stable is True)
        url = base_url(relay) + LIVE
        async with sse_connect(url) as first, sse_connect(url) as second:
            for client in (first, second):
                assert (await client.next_event()).json["state"] == "stable"
            await eventually(lambda: len(relay.hub) == 2)
            # Which path holds them: taken over, aiohttp has forgotten both connections;
            # on the public path both are still its own.
            assert aiohttp_connections(relay) == (0 if path == "takeover" else 2)
            await execute(db_dsn, START_JOB)
            for client in (first, second):
                assert (await client.next_event()).json["state"] == "processing"
        # Both clients hung up: both are forgotten, whichever path held them.
        await eventually(lambda: len(relay.hub) == 0)
        async with sse_connect(url) as client:
            assert (await client.next_event()).json["state"] == "processing"
            await execute(db_dsn, FINISH_JOB)
            assert (await client.next_event()).json["state"] == "stable"
            client.retry = None
            await relay.hub.aclose()  # the relay stopping: a final retry, then the end
            with pytest.raises(EOFError):
                await client.next_event(timeout=5)
            assert client.retry == 2000
        await eventually(lambda: len(relay.hub) == 0)
