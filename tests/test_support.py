"""tests/support.py's running_relay: a relay whose start fails half-way is closed all the same
(the autouse fixtures then find no task and no session of it left behind)."""

from __future__ import annotations

import socket

import pytest

from relay.app import Relay
from tests.support import relay_config, running_relay


async def test_a_relay_whose_start_fails_is_closed(db_dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = relay_config(db_dsn, http={"listen": f"127.0.0.1:{port}"})
        seen: list[Relay] = []
        with pytest.raises(OSError):
            async with running_relay(config) as relay:
                seen.append(relay)  # never reached: the port is taken
        assert seen == []
