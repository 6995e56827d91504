"""Webhooks end to end: real PostgreSQL commits flip the state, real HTTP receivers on loopback.

Every target first receives the state the relay finds at start (it has no delivery record
yet); the tests wait for that, then drive flips with commits. "Nothing more was sent" is
checked with a later sentinel delivery: deliveries to one target are ordered, so anything
sent in between would have arrived first.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from relay.app import Relay
from relay.fanout.webhooks import WebhookSender
from relay.state.stability import State
from tests.support import (
    base_url,
    eventually,
    execute,
    relay_config,
    running_relay,
    sample,
    sse_connect,
)
from tests.webhook_receiver import SECRET, Answer, Receiver, hook, verify_signature

START = "INSERT INTO public.import_job (slug, state) VALUES ('x', 'approved')"
FINISH = "UPDATE public.import_job SET state = 'finished' WHERE slug = 'x'"
RESTART = "UPDATE public.import_job SET state = 'approved' WHERE slug = 'x'"


def config(db_dsn: str, tmp_path: Path, *hooks: dict[str, Any], **sections: Any) -> Any:
    return relay_config(db_dsn, webhooks=list(hooks), state_directory=str(tmp_path), **sections)


def deliveries(relay: Relay, name: str, outcome: str) -> float:
    return sample(relay, "relay_webhook_deliveries_total", webhook=name, outcome=outcome)


async def state_is(relay: Relay, state: State) -> None:
    await eventually(lambda: relay.stability.current.state is state)


async def test_flip_sends_exactly_one_signed_post_per_target(db_dsn: str, tmp_path: Path) -> None:
    async with Receiver() as ci, Receiver(path="/services/T0/B0/token") as slack:
        hooks = (
            hook("ci", ci.url, secret=SECRET, headers={"X-Token": "ci-token-123"}),
            hook("slack", slack.url, format="slack"),
        )
        async with running_relay(
            config(db_dsn, tmp_path, *hooks, http={"public_url": "https://status.example"})
        ) as relay:
            await ci.wait_for(1)
            await slack.wait_for(1)
            await execute(db_dsn, START)
            await ci.wait_for(2)
            await slack.wait_for(2)
            await execute(db_dsn, FINISH)
            await ci.wait_for(3)
            await slack.wait_for(3)
            assert relay.webhooks.targets["ci"].pending == 0

    assert ci.states == ["stable", "processing", "stable"]
    ids = [request.id for request in ci.requests]
    assert len(set(ids)) == 3
    for request in ci.requests:
        assert verify_signature(SECRET, request.headers, request.body)
        assert request.headers["X-Token"] == "ci-token-123"
        assert request.headers["Content-Type"] == "application/json"
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    processing, stable = ci.requests[1].json, ci.requests[2].json
    assert processing["type"] == "system.stability.changed"
    assert processing["data"]["stable"] is False
    assert processing["data"]["previous_state"] == "stable"
    assert stable["data"] == {
        "stable": True,
        "state": "stable",
        "previous_state": "processing",
        "since": stable["data"]["since"],
        "previous_duration_seconds": stable["data"]["previous_duration_seconds"],
        "seq": processing["data"]["seq"] + 1,
        "running": [],
        "eta": None,
    }
    assert processing["data"]["running"] == ["Importing data"]
    assert stable["timestamp"] == stable["data"]["since"]
    assert 0 <= stable["data"]["previous_duration_seconds"] < 10

    texts = [request.json["text"] for request in slack.requests]
    assert texts[1].startswith(":hourglass_flowing_sand: Processing data: Importing data")
    assert texts[2].startswith(":white_check_mark: Data is stable (processing took ")
    blocks = json.dumps(slack.requests[2].json["blocks"])
    assert "<https://status.example|Open the status page>" in blocks
    assert "webhook-signature" not in slack.requests[0].headers


async def test_on_filter_sends_only_the_listed_states(db_dsn: str, tmp_path: Path) -> None:
    async with Receiver() as done, Receiver() as busy:
        hooks = (hook("done", done.url, on=["stable"]), hook("busy", busy.url, on=["processing"]))
        async with running_relay(config(db_dsn, tmp_path, *hooks)) as relay:
            await done.wait_for(1)  # the state at start: stable
            steps = [(START, State.PROCESSING), (FINISH, State.STABLE)]
            steps += [(RESTART, State.PROCESSING), (FINISH, State.STABLE)]
            for statement, state in steps:
                await execute(db_dsn, statement)
                await state_is(relay, state)
            await done.wait_for(3)
            await busy.wait_for(2)
    assert done.states == ["stable", "stable", "stable"]
    assert [r.json["data"]["previous_state"] for r in done.requests[1:]] == ["processing"] * 2
    assert busy.states == ["processing", "processing"]


async def test_unknown_is_opt_in(db_dsn: str, tmp_path: Path) -> None:
    async with Receiver() as plain, Receiver() as everything:
        hooks = (
            hook("plain", plain.url),
            hook("everything", everything.url, on=["stable", "processing", "unknown"]),
        )
        async with running_relay(config(db_dsn, tmp_path, *hooks)) as relay:
            await plain.wait_for(1)
            await everything.wait_for(1)
            # The listener's connection is killed: unknown until it reconnects.
            await execute(
                db_dsn,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'stability-relay'",
            )
            await everything.wait_for(3)
            await execute(db_dsn, START)
            await plain.wait_for(2)
            await everything.wait_for(4)
            assert relay.stability.current.state is State.PROCESSING
    assert everything.states == ["stable", "unknown", "stable", "processing"]
    assert everything.requests[1].json["data"]["stable"] is None
    assert plain.states == ["stable", "processing"], "an outage is invisible without `unknown`"


async def test_hysteresis_flapping_shorter_sends_nothing_longer_sends_once(
    db_dsn: str, tmp_path: Path
) -> None:
    hold = 1.0
    async with Receiver() as calm, Receiver() as eager:
        hooks = (hook("calm", calm.url, min_duration=f"{hold}s"), hook("eager", eager.url))
        async with running_relay(config(db_dsn, tmp_path, *hooks)) as relay:
            await calm.wait_for(1)
            # A flap shorter than min_duration.
            flap_started = time.monotonic()
            await execute(db_dsn, START)
            await state_is(relay, State.PROCESSING)
            await execute(db_dsn, FINISH)
            await state_is(relay, State.STABLE)
            assert time.monotonic() - flap_started < hold, "the flap must be short to test this"
            await eager.wait_for(3)
            # Processing that holds.
            await execute(db_dsn, RESTART)
            await state_is(relay, State.PROCESSING)
            held_from = time.monotonic()
            await calm.wait_for(2)
            assert calm.requests[1].at - held_from >= hold * 0.9
            await eager.wait_for(4)
    assert eager.states == ["stable", "processing", "stable", "processing"]
    assert calm.states == ["stable", "processing"]
    assert calm.requests[1].json["data"]["seq"] == eager.requests[3].json["data"]["seq"]


async def test_500_then_200_is_delivered_once_with_the_same_id(db_dsn: str, tmp_path: Path) -> None:
    async with Receiver(Answer(500), Answer(200)) as ci:
        hooks = (hook("ci", ci.url, secret=SECRET),)
        async with running_relay(config(db_dsn, tmp_path, *hooks)) as relay:
            first, second = await ci.wait_for(2)
            await execute(db_dsn, START)
            await ci.wait_for(3)
            assert deliveries(relay, "ci", "retry") == 1
            assert deliveries(relay, "ci", "success") == 2
            histogram = relay.metrics.registry.get_sample_value(
                "relay_webhook_delivery_duration_seconds_count", {"webhook": "ci"}
            )
            assert histogram == 3
    assert first.id == second.id
    assert first.body == second.body
    assert verify_signature(SECRET, first.headers, first.body)
    assert verify_signature(SECRET, second.headers, second.body)
    assert ci.states == ["stable", "stable", "processing"]


async def test_429_retry_after_is_respected(db_dsn: str, tmp_path: Path) -> None:
    too_many = Answer(429, headers={"Retry-After": "1"})
    async with Receiver(too_many, Answer(200)) as ci:
        async with running_relay(config(db_dsn, tmp_path, hook("ci", ci.url))):
            first, second = await ci.wait_for(2)
    assert first.id == second.id
    # The schedule says 0.2 s; the receiver asked for 1 s.
    assert second.at - first.at >= 1.0


async def test_410_disables_the_target_until_restart(db_dsn: str, tmp_path: Path) -> None:
    async with Receiver(Answer(410)) as gone, Receiver() as control:
        hooks = (hook("gone", gone.url), hook("control", control.url))
        async with running_relay(config(db_dsn, tmp_path, *hooks)) as relay:
            await gone.wait_for(1)
            await control.wait_for(1)
            target = relay.webhooks.targets["gone"]
            await eventually(lambda: target.disabled)
            assert target.task is not None
            await eventually(target.task.done)
            await execute(db_dsn, START)
            await control.wait_for(2)
            assert deliveries(relay, "gone", "disabled") == 1
            assert target.pending == 0
        assert len(gone.requests) == 1
        async with running_relay(config(db_dsn, tmp_path, *hooks)):
            await gone.wait_for(2)  # enabled again after the restart, told the current state
    assert gone.states == ["stable", "processing"]


async def test_permanent_4xx_and_redirects_fail_without_retry(db_dsn: str, tmp_path: Path) -> None:
    moved = Answer(301, headers={"Location": "http://127.0.0.1:9/elsewhere"})
    async with Receiver(Answer(404)) as missing, Receiver(moved) as redirecting:
        hooks = (hook("missing", missing.url), hook("redirecting", redirecting.url))
        async with running_relay(config(db_dsn, tmp_path, *hooks)) as relay:
            await missing.wait_for(1)
            await redirecting.wait_for(1)
            await execute(db_dsn, START)
            await missing.wait_for(2)
            await redirecting.wait_for(2)
            assert deliveries(relay, "missing", "failed") == 1
            assert deliveries(relay, "redirecting", "failed") == 1
            assert deliveries(relay, "redirecting", "retry") == 0
    # No retry of the failed one: the next request is the next state.
    assert missing.states == redirecting.states == ["stable", "processing"]


async def test_hanging_receiver_delays_neither_other_targets_nor_sse(
    db_dsn: str, tmp_path: Path
) -> None:
    async with Receiver(Answer(200), Answer(hang=True)) as slow, Receiver() as fast:
        hooks = (hook("slow", slow.url, timeout="1s"), hook("fast", fast.url))
        async with running_relay(config(db_dsn, tmp_path, *hooks)) as relay:
            await slow.wait_for(1)
            await fast.wait_for(1)
            async with sse_connect(base_url(relay) + "/api/system-status/live") as client:
                await client.wait_for_state("stable")
                await execute(db_dsn, START)
                await client.wait_for_state("processing")
                seen_by_sse = time.monotonic()
                await fast.wait_for(2)
                await slow.wait_for(3)  # the hang, then the retry after the timeout
            assert deliveries(relay, "slow", "retry") == 1
    hung, retried = slow.requests[1], slow.requests[2]
    assert hung.id == retried.id
    assert retried.at - hung.at >= 1.0  # the timeout, then the retry
    assert fast.requests[1].at < retried.at
    assert seen_by_sse < retried.at


async def test_newer_state_supersedes_one_waiting_for_retry(db_dsn: str, tmp_path: Path) -> None:
    async with Receiver(Answer(200), Answer(500)) as ci:
        hooks = (hook("ci", ci.url, retry_schedule=["3s"]),)
        async with running_relay(config(db_dsn, tmp_path, *hooks)) as relay:
            await ci.wait_for(1)
            await execute(db_dsn, START)
            await ci.wait_for(2)  # processing, answered 500: waiting 3 s to retry
            await execute(db_dsn, FINISH)
            await state_is(relay, State.STABLE)  # supersedes it, and the receiver has "stable"
            await execute(db_dsn, RESTART)  # processing again: a fresh delivery
            await ci.wait_for(3, timeout=2.0)  # sooner than the 3 s retry
            target = relay.webhooks.targets["ci"]
            await eventually(lambda: target.pending == 0)
            # The waiting "processing", then "stable" (the receiver already had it).
            assert deliveries(relay, "ci", "superseded") == 2
    assert ci.states == ["stable", "processing", "processing"]
    assert ci.requests[1].id != ci.requests[2].id


async def test_shutdown_is_bounded_and_the_owed_delivery_is_sent_after_restart(
    db_dsn: str, tmp_path: Path
) -> None:
    async with Receiver(Answer(hang=True)) as ci:
        hooks = (hook("ci", ci.url, timeout="30s"),)
        cfg = config(db_dsn, tmp_path, *hooks, http={"shutdown_timeout": "0.5s"})
        relay = Relay(cfg)
        await relay.start()
        try:
            await ci.wait_for(1)
        finally:
            stopping = time.monotonic()
            await relay.aclose()
        assert time.monotonic() - stopping < 3.0
        saved = json.loads((tmp_path / "webhooks.json").read_text())
        assert saved["targets"]["ci"]["pending"]["id"] == ci.requests[0].id
        async with running_relay(cfg):
            await ci.wait_for(2)
    assert ci.requests[1].id == ci.requests[0].id
    assert ci.states == ["stable", "stable"]


async def test_corrupt_state_file_is_reported_and_replaced(db_dsn: str, tmp_path: Path) -> None:
    state_file = tmp_path / "webhooks.json"
    state_file.write_text("{ this is not json")
    async with Receiver() as ci:
        with structlog.testing.capture_logs() as logs:
            async with running_relay(config(db_dsn, tmp_path, hook("ci", ci.url))):
                await ci.wait_for(1)
    corrupt = [line for line in logs if line["event"] == "webhook_state_corrupt"]
    assert corrupt and corrupt[0]["moved_to"].endswith("webhooks.json.corrupt")
    assert (tmp_path / "webhooks.json.corrupt").read_text() == "{ this is not json"
    saved = json.loads(state_file.read_text())
    assert saved["targets"]["ci"]["delivered"]["state"] == "stable"


@pytest.mark.parametrize(
    "content",
    [
        '{"version": 1, "targets": {"a": []}}',
        '{"version": 1, "targets": {"ci": {"settled": {"state": "stable", "seq": Infinity,'
        ' "since": 0}}}}',
    ],
)
async def test_a_malformed_state_file_never_silences_webhooks(
    db_dsn: str, tmp_path: Path, content: str
) -> None:
    (tmp_path / "webhooks.json").write_text(content)
    async with Receiver() as ci:
        with structlog.testing.capture_logs() as logs:
            async with running_relay(config(db_dsn, tmp_path, hook("ci", ci.url))):
                await ci.wait_for(1)
    assert "webhook_state_corrupt" in [line["event"] for line in logs]
    assert (tmp_path / "webhooks.json.corrupt").read_text() == content
    assert ci.states == ["stable"]


async def test_a_record_that_cannot_be_sent_is_dropped_and_the_target_starts(
    db_dsn: str, tmp_path: Path
) -> None:
    """Parsable, but its owed delivery cannot be encoded (a date past year 9999)."""
    transition = {
        "state": "processing",
        "previous_state": "stable",
        "since": 1e300,
        "previous_duration": None,
        "seq": 5,
    }
    owed = {"settled": None, "delivered": None, "filtered_seq": None}
    owed["pending"] = {"id": "msg_unsendable", "transition": transition}
    tree = {"version": 1, "targets": {"ci": owed}}
    (tmp_path / "webhooks.json").write_text(json.dumps(tree))
    async with Receiver() as ci, Receiver() as other:
        hooks = (hook("ci", ci.url), hook("other", other.url))
        with structlog.testing.capture_logs() as logs:
            async with running_relay(config(db_dsn, tmp_path, *hooks)):
                await ci.wait_for(1)
                await other.wait_for(1)
    unusable = [line for line in logs if line["event"] == "webhook_state_record_unusable"]
    assert [line["webhook"] for line in unusable] == ["ci"]
    assert ci.states == ["stable"]
    assert ci.requests[0].id != "msg_unsendable"


async def test_a_cancelled_close_is_completed_by_the_next_call(db_dsn: str, tmp_path: Path) -> None:
    async with Receiver(Answer(200), Answer(hang=True)) as ci:
        hooks = (hook("ci", ci.url, timeout="30s"),)
        async with running_relay(config(db_dsn, tmp_path, *hooks)) as relay:
            await ci.wait_for(1)
            await execute(db_dsn, START)
            await ci.wait_for(2)  # on the wire, unanswered
            sender = relay.webhooks
            first = asyncio.create_task(sender.aclose(timeout=1.0))
            await asyncio.sleep(0.2)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            with structlog.testing.capture_logs() as logs:
                await sender.aclose(timeout=1.0)  # waits for the close the first call began
            target = sender.targets["ci"]
            assert target.task is not None and target.task.done()
            assert "webhooks_stopped" in [line["event"] for line in logs]
            saved = json.loads((tmp_path / "webhooks.json").read_text())
            assert saved["targets"]["ci"]["pending"]["id"] == ci.requests[1].id


async def test_without_a_state_directory_it_warns_once_and_works(db_dsn: str) -> None:
    async with Receiver() as ci:
        cfg = relay_config(db_dsn, webhooks=[hook("ci", ci.url)])
        with structlog.testing.capture_logs() as logs:
            async with running_relay(cfg):
                await ci.wait_for(1)
    warnings = [line for line in logs if line["event"] == "webhook_state_in_memory"]
    assert len(warnings) == 1


async def test_reload_adds_changes_and_removes_targets(db_dsn: str, tmp_path: Path) -> None:
    async with Receiver() as kept, Receiver() as moved, Receiver() as added:
        async with running_relay(config(db_dsn, tmp_path, hook("kept", kept.url))) as relay:
            await kept.wait_for(1)
            # Answered too: a request still on the wire at the reload is owed by the new target.
            await eventually(lambda: relay.webhooks.targets["kept"].pending == 0)
            new = config(db_dsn, tmp_path, hook("kept", moved.url), hook("added", added.url))
            relay.reload(new)
            await added.wait_for(1)  # a new target is told the current state
            await execute(db_dsn, START)
            await moved.wait_for(1)
            await added.wait_for(2)
            relay.reload(config(db_dsn, tmp_path, hook("kept", moved.url)))
            await execute(db_dsn, FINISH)
            await moved.wait_for(2)
            assert list(relay.webhooks.targets) == ["kept"]
    assert kept.states == ["stable"]
    assert moved.states == ["processing", "stable"], "the kept target's history carried over"
    assert added.states == ["stable", "processing"]


async def test_a_new_sender_takes_over_from_a_closed_one_through_the_state_file(
    db_dsn: str, tmp_path: Path
) -> None:
    """What happens when leadership moves: the old sender closes for good, a new one starts
    from the state file and sends only what the target has not had."""
    async with Receiver() as ci:
        cfg = config(db_dsn, tmp_path, hook("ci", ci.url))
        async with running_relay(cfg) as relay:
            await ci.wait_for(1)
            old = relay.webhooks
            await old.aclose()
            with pytest.raises(RuntimeError):
                await old.start()
            await execute(db_dsn, START)
            await state_is(relay, State.PROCESSING)
            # The next leader's sender: a sender of its own, hearing the same transitions.
            new = WebhookSender(
                cfg.webhooks, relay.stability, relay.metrics, state_directory=tmp_path
            )
            relay.stability.subscribe(new.on_change)
            await new.start()
            try:
                await ci.wait_for(2)
                await execute(db_dsn, FINISH)
                await ci.wait_for(3)
            finally:
                await new.aclose()
    assert ci.states == ["stable", "processing", "stable"]
