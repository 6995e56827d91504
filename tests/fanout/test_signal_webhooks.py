"""Stalled and overdue as webhook events: real PostgreSQL commits make the relay busy, the
signals are set on the relay's own Stability (as its reader does), real HTTP receivers on
loopback hear them, signed, in snapshot order, and across a restart without repeats."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from relay.app import Relay
from relay.state.stability import State
from tests.support import eventually, execute, relay_config, running_relay, sample
from tests.webhook_receiver import SECRET, Answer, Receiver, hook, verify_signature

START = "INSERT INTO public.import_job (slug, state) VALUES ('x', 'approved')"
FINISH = "UPDATE public.import_job SET state = 'finished' WHERE slug = 'x'"


# The relay's signals reader reads once when work begins, then not for an hour: the tests set
# the signals on the relay's Stability themselves (test_killed_worker.py has the reader's).
QUIET = {"interval": "1h", "read_timeout": "5s"}


def config(db_dsn: str, tmp_path: Path, *hooks: dict[str, Any]) -> Any:
    return relay_config(db_dsn, webhooks=list(hooks), state_directory=str(tmp_path), signals=QUIET)


async def busy(relay: Relay, db_dsn: str) -> None:
    """Busy, and the reader's first read of the busy period done: the next is an hour away
    (QUIET), so the signals a test sets stay as set."""
    await execute(db_dsn, START)
    await eventually(lambda: relay.stability.current.state is State.PROCESSING)
    await eventually(lambda: sample(relay, "relay_signals_reads_total", outcome="ok") >= 1)


def kinds(receiver: Receiver) -> list[str]:
    return [request.json["type"] for request in receiver.requests]


async def test_a_stalled_activity_is_an_event_of_its_own_and_so_is_its_end(
    db_dsn: str, tmp_path: Path
) -> None:
    async with Receiver() as ci, Receiver() as slack:
        hooks = (hook("ci", ci.url, secret=SECRET), hook("slack", slack.url, format="slack"))
        async with running_relay(config(db_dsn, tmp_path, *hooks)) as relay:
            await ci.wait_for(1)  # the state at start
            await busy(relay, db_dsn)
            await ci.wait_for(2)
            await slack.wait_for(2)
            since = time.time() - 1800
            assert relay.stability.update_signals({"importing": since}, {})
            await ci.wait_for(3)
            await slack.wait_for(3)
            assert relay.stability.update_signals({}, {})  # the worker came back
            await ci.wait_for(4)
            await slack.wait_for(4)

    assert kinds(ci) == [
        "system.stability.changed",
        "system.stability.changed",
        "system.stability.stalled",
        "system.stability.signal_cleared",
    ]
    for request in ci.requests:
        assert verify_signature(SECRET, request.headers, request.body)
    stalled, cleared = ci.requests[2].json, ci.requests[3].json
    assert stalled["data"]["signal"] == "stalled"
    assert stalled["data"]["activity"] == "importing"
    assert stalled["data"]["label"] == "Importing data"
    assert stalled["data"]["bound_seconds"] is None
    assert stalled["data"]["cleared"] is None
    assert 1800 <= stalled["data"]["duration_seconds"] < 1900
    assert stalled["data"]["text"] == "Importing data has made no progress for 30 min"
    assert cleared["data"]["signal"] == "stalled"
    assert cleared["data"]["cleared"] == "recovered"
    assert cleared["data"]["since"] == stalled["data"]["since"]
    assert cleared["data"]["seq"] == stalled["data"]["seq"] + 1
    texts = [request.json["text"] for request in slack.requests]
    assert texts[2] == ":warning: Importing data has made no progress for 30 min"
    assert texts[3] == ":white_check_mark: Importing data is making progress again"


async def test_overdue_ends_with_its_activity_before_the_state_says_stable(
    db_dsn: str, tmp_path: Path
) -> None:
    async with Receiver() as ci, Receiver() as slack:
        hooks = (hook("ci", ci.url), hook("slack", slack.url, format="slack"))
        async with running_relay(config(db_dsn, tmp_path, *hooks)) as relay:
            await ci.wait_for(1)
            await busy(relay, db_dsn)
            began = time.time() - (2 * 3600 + 10 * 60)
            assert relay.stability.update_signals({}, {"importing": (began, 2400.0)})
            await ci.wait_for(3)
            # A new bound for the same busy period is no news.
            assert relay.stability.update_signals({}, {"importing": (began, 3000.0)})
            await execute(db_dsn, FINISH)
            await ci.wait_for(5)
            await slack.wait_for(5)

    assert kinds(ci)[2:] == [
        "system.stability.overdue",
        "system.stability.signal_cleared",
        "system.stability.changed",
    ]
    overdue, cleared, stable = (request.json["data"] for request in ci.requests[2:])
    assert overdue["bound_seconds"] == 2400.0
    assert overdue["text"].startswith("Importing data is overdue: running 2 h 10 min")
    assert overdue["text"].endswith(", expected within 40 min")
    assert cleared["cleared"] == "finished"
    assert cleared["seq"] == stable["seq"]  # told with the snapshot that ended it, first
    assert stable["state"] == "stable"
    assert slack.requests[2].json["text"].startswith(":warning: Importing data is overdue")
    assert slack.requests[3].json["text"] == (
        ":white_check_mark: Importing data is no longer overdue: it finished"
    )


async def test_a_target_that_hears_only_stable_hears_no_signals(
    db_dsn: str, tmp_path: Path
) -> None:
    async with Receiver() as done, Receiver() as all_states:
        hooks = (hook("done", done.url, on=["stable"]), hook("all", all_states.url))
        async with running_relay(config(db_dsn, tmp_path, *hooks)) as relay:
            await done.wait_for(1)
            await busy(relay, db_dsn)
            assert relay.stability.update_signals({"importing": time.time()}, {})
            await all_states.wait_for(3)
            await execute(db_dsn, FINISH)
            await done.wait_for(2)  # the sentinel: anything sent before it arrived first
            await all_states.wait_for(5)
    assert [request.json["type"] for request in done.requests] == ["system.stability.changed"] * 2
    assert kinds(all_states)[2:4] == ["system.stability.stalled", "system.stability.signal_cleared"]
    assert all_states.requests[2].json["data"]["text"] == (
        "Importing data has stopped making progress"
    )


async def test_a_signal_that_came_and_went_unsent_is_never_sent(
    db_dsn: str, tmp_path: Path
) -> None:
    async with Receiver(Answer(hang=True)) as ci:
        async with running_relay(config(db_dsn, tmp_path, hook("ci", ci.url))) as relay:
            await ci.wait_for(1)  # the state at start: its answer hangs until the 2 s timeout
            await busy(relay, db_dsn)
            assert relay.stability.update_signals({"importing": time.time()}, {})
            assert relay.stability.update_signals({}, {})
            await execute(db_dsn, FINISH)
            target = relay.webhooks.targets["ci"]
            await eventually(lambda: target.pending == 0)
    # The start's state timed out; everything owed after it was superseded by the last state.
    assert kinds(ci) == ["system.stability.changed"] * 2
    assert [request.state for request in ci.requests] == ["stable", "stable"]


async def test_an_owed_signal_survives_a_restart_with_its_id_and_is_not_repeated(
    db_dsn: str, tmp_path: Path
) -> None:
    since = time.time() - 120
    async with Receiver() as ci:
        target = hook("ci", ci.url, retry_schedule=["1h"])
        async with running_relay(config(db_dsn, tmp_path, target)) as relay:
            await ci.wait_for(1)
            await busy(relay, db_dsn)
            await ci.wait_for(2)
            ci.answer(Answer(status=503))  # the stalled event fails and waits an hour
            assert relay.stability.update_signals({"importing": since}, {})
            await ci.wait_for(3)
        first = ci.requests[2]
        assert first.json["type"] == "system.stability.stalled"

        async with running_relay(config(db_dsn, tmp_path, target)) as relay:
            await ci.wait_for(4)
            await eventually(lambda: relay.stability.current.state is State.PROCESSING)
            await eventually(lambda: relay.webhooks.targets["ci"].pending == 0)
            await eventually(lambda: sample(relay, "relay_signals_reads_total", outcome="ok") >= 1)
            # The new process's reader finds the same stall again, from its own first read (a
            # later since): the target was told already, so nothing new is sent.
            assert relay.stability.update_signals({"importing": since + 300}, {})
            await execute(db_dsn, FINISH)
            await ci.wait_for(6)
    again = ci.requests[3]
    assert again.id == first.id and again.body == first.body
    assert kinds(ci)[4:] == ["system.stability.signal_cleared", "system.stability.changed"]
    assert ci.requests[4].json["data"]["cleared"] == "finished"


async def test_a_start_never_delivered_takes_its_end_with_it(db_dsn: str, tmp_path: Path) -> None:
    """The stalled event fails and waits for its retry; the stall ends meanwhile (the worker
    came back): the receiver hears of neither, never "making progress again" alone."""
    async with Receiver() as ci:
        target = hook("ci", ci.url, retry_schedule=["1h"])
        async with running_relay(config(db_dsn, tmp_path, target)) as relay:
            await ci.wait_for(1)
            await busy(relay, db_dsn)
            await ci.wait_for(2)
            ci.answer(Answer(status=503))  # the stalled event fails and waits an hour
            assert relay.stability.update_signals({"importing": time.time() - 60}, {})
            await ci.wait_for(3)
            ci.answer(Answer())
            assert relay.stability.update_signals({}, {})  # recovered before any retry
            await eventually(lambda: relay.webhooks.targets["ci"].pending == 0)
            await execute(db_dsn, FINISH)
            await ci.wait_for(4)
    assert kinds(ci) == [
        "system.stability.changed",
        "system.stability.changed",
        "system.stability.stalled",  # answered 503
        "system.stability.changed",
    ]
