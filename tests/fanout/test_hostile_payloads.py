"""Hostile NOTIFY payloads through a running relay: real pg_notify, a real feed over HTTP.

What a feed sends must be JSON a browser's ``JSON.parse`` takes back: a payload that Python
reads only as a float infinity (``1e999``) is dropped and counted, never relayed as
``Infinity``; the payloads around it still arrive, in order.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests import support
from tests.support import base_url, eventually, notify, relay_config, running_relay, sample
from tests.support import sse_connect as connect

FEED = support.STATBUS_FEED
OVERFLOWING = [
    '{"big": 1e999}',
    '{"type":"x",\n"big": -1e999}',  # a line break: the relay would re-encode this one
    '{"nested": {"list": [1, 2.5E+400]}}',
]


def _refuse(literal: str) -> Any:
    raise ValueError(f"{literal} is not JSON")


def _finite(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{literal} does not survive a round trip")
    return value


def as_browser_reads(data: str) -> Any:
    return json.loads(data, parse_constant=_refuse, parse_float=_finite)


@pytest.mark.parametrize("payload", OVERFLOWING)
async def test_a_payload_with_a_number_past_the_float_range_never_reaches_a_feed(
    db_dsn: str, payload: str
) -> None:
    config = relay_config(db_dsn, feeds=[FEED])
    async with running_relay(config) as relay:
        await eventually(lambda: relay.listener.connected.is_set())
        async with connect(base_url(relay) + FEED["path"]) as client:
            assert (await client.next_event()).event == "connected"
            await notify(db_dsn, "worker_status", payload)
            await notify(db_dsn, "worker_status", '{"type":"after","n":1.5e300}')
            event = await client.next_event()
            while event.event == "heartbeat":
                event = await client.next_event()
            assert as_browser_reads(event.data) == {"type": "after", "n": 1.5e300}
        reason = {"channel": "worker_status", "reason": "not_finite"}
        assert sample(relay, "relay_notifications_dropped_total", **reason) == 1
        assert sample(relay, "relay_feed_dropped_total", feed=FEED["path"]) == 1
