"""``/wait`` and ``stability-relay wait`` end early on stalled or overdue work: a real PostgreSQL
makes the relay busy, the signals are set on the relay's own Stability (as its reader does),
the answers come over real HTTP and from the real command line."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from relay.app import Relay
from relay.cli.wait import EXIT_OVERDUE, EXIT_STALLED, EXIT_TIMEOUT, EXIT_USAGE
from relay.state.stability import State
from tests.state.test_waits import FINISH, START, cli_wait, finished
from tests.support import base_url, eventually, execute, relay_config, running_relay, sample

HALF_HOUR_AGO = 1800.0
# The relay's signals reader reads once when work begins, then not for an hour: the tests set
# the signals on the relay's Stability themselves (test_killed_worker.py has the reader's).
QUIET = {"interval": "1h", "read_timeout": "5s"}


def config(db_dsn: str) -> Any:
    return relay_config(db_dsn, signals=QUIET)


async def wait(relay: Relay, **params: str) -> tuple[int, dict[str, Any]]:
    url = base_url(relay) + "/api/system-status/wait"
    async with aiohttp.ClientSession() as http, http.get(url, params=params) as response:
        return response.status, await response.json()


async def busy(relay: Relay, db_dsn: str) -> None:
    """Busy, and the reader's first read of the busy period done: the next is an hour away
    (QUIET), so the signals a test sets stay as set."""
    await execute(db_dsn, START)
    await eventually(lambda: relay.stability.current.state is State.PROCESSING)
    await eventually(lambda: sample(relay, "relay_signals_reads_total", outcome="ok") >= 1)


async def test_a_wait_for_stable_on_stalled_work_answers_409_stalled_at_once(
    db_dsn: str,
) -> None:
    async with running_relay(config(db_dsn)) as relay:
        await busy(relay, db_dsn)
        relay.stability.update_signals({"importing": time.time() - HALF_HOUR_AGO}, {})
        status, body = await wait(relay, until="stable", timeout="10m")
        assert status == 409
        assert body["result"] == "stalled"
        assert body["state"] == "processing"
        [signal] = body["signals"]
        assert signal["signal"] == "stalled"
        assert (signal["activity"], signal["label"]) == ("importing", "Importing data")
        assert HALF_HOUR_AGO <= signal["for_s"] < HALF_HOUR_AGO + 100
        # The same for the activity, and the work it waits for only.
        status, body = await wait(relay, until="stable", activity="importing", timeout="10m")
        assert (status, body["result"]) == (409, "stalled")
        # Waiting for processing: stalled work is processing, the condition is met.
        status, body = await wait(relay, until="processing")
        assert (status, body["result"]) == (200, "met")


async def test_end_on_chooses_which_signals_end_a_wait(db_dsn: str) -> None:
    async with running_relay(config(db_dsn)) as relay:
        await busy(relay, db_dsn)
        began = time.time() - 7800
        relay.stability.update_signals({}, {"importing": (began, 2400.0)})
        status, body = await wait(relay, until="stable", timeout="10m")
        assert (status, body["result"]) == (409, "overdue")
        assert body["signals"][0]["bound_s"] == 2400.0
        status, body = await wait(relay, until="stable", timeout="0.5s", end_on="stalled")
        assert (status, body["result"]) == (408, "timeout")
        status, body = await wait(relay, until="stable", timeout="0.5s", end_on="none")
        assert (status, body["result"]) == (408, "timeout")
        # Both: the worse is named first.
        relay.stability.update_signals({"importing": time.time()}, {"importing": (began, 2400.0)})
        status, body = await wait(relay, until="stable", timeout="10m")
        assert (status, body["result"]) == (409, "stalled")
        assert [s["signal"] for s in body["signals"]] == ["stalled", "overdue"]
        status, body = await wait(relay, until="stable", end_on="sometimes")
        assert status == 400 and "end_on" in body["error"]


async def test_a_wait_under_way_ends_when_its_work_stalls(db_dsn: str) -> None:
    async with running_relay(config(db_dsn)) as relay:
        await busy(relay, db_dsn)
        waiting = asyncio.create_task(wait(relay, until="stable", timeout="10m"))
        await eventually(lambda: relay.metrics.registry.get_sample_value("relay_waiters") == 1)
        assert not waiting.done()
        relay.stability.update_signals({"importing": time.time()}, {})
        status, body = await waiting
        assert (status, body["result"]) == (409, "stalled")


async def test_stable_work_is_met_whatever_signals_said_before(db_dsn: str) -> None:
    async with running_relay(config(db_dsn)) as relay:
        await busy(relay, db_dsn)
        relay.stability.update_signals({"importing": time.time()}, {})
        await execute(db_dsn, FINISH)
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        assert relay.stability.current.stalled == ()
        status, body = await wait(relay, until="stable", timeout="10m")
        assert (status, body["result"]) == (200, "met")


async def test_the_command_exits_4_on_stalled_and_5_on_overdue_saying_why(db_dsn: str) -> None:
    async with running_relay(config(db_dsn)) as relay:
        url = base_url(relay)
        await busy(relay, db_dsn)
        relay.stability.update_signals({"importing": time.time() - HALF_HOUR_AGO}, {})
        code, err = await finished(cli_wait(url, "--timeout", "10m"))
        assert code == EXIT_STALLED, err
        assert "stalled: not waiting out the timeout" in err
        assert "Importing data has made no progress for 30 min" in err
        assert "Traceback" not in err

        began = time.time() - 7800
        relay.stability.update_signals({}, {"importing": (began, 2400.0)})
        code, err = await finished(cli_wait(url, "--timeout", "10m"))
        assert code == EXIT_OVERDUE, err
        assert "Importing data is overdue: running 2 h 10 min, expected within 40 min" in err

        # --end-on chooses: stalled only lets the overdue work be waited out; none likewise.
        code, err = await finished(cli_wait(url, "--timeout", "1s", "--end-on", "stalled"))
        assert code == EXIT_TIMEOUT, err
        code, err = await finished(cli_wait(url, "--timeout", "1s", "--end-on", "none"))
        assert code == EXIT_TIMEOUT, err
        code, err = await finished(cli_wait(url, "--timeout", "10m", "--end-on", "overdue"))
        assert code == EXIT_OVERDUE, err
        code, err = await finished(cli_wait(url, "--end-on", "sometimes"))
        assert code == EXIT_USAGE and "--end-on: expected stalled, overdue" in err, err

        # No signal: the command waits out its timeout as before.
        relay.stability.update_signals({}, {})
        code, err = await finished(cli_wait(url, "--timeout", "1s"))
        assert code == EXIT_TIMEOUT, err
