"""relay/fanout/leading.py: a fresh term (history writer, webhook sender) at each election,
closed for good when leadership is lost; reloaded targets kept for the next term; nothing
started once the relay stops. The state stays unknown here, so no term writes or sends."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from relay.config import Config, WebhookConfig
from relay.fanout.leading import Leading
from relay.fanout.webhooks import WebhookSender
from relay.metrics import Metrics
from relay.state.history import HistoryWriter
from relay.state.readpool import ReadPool
from relay.state.stability import Stability
from tests.support import registry_sample, relay_config
from tests.webhook_receiver import hook

UNREACHABLE = "http://127.0.0.1:9/hook"  # never asked: nothing is sent while unknown


class Built:
    """A Leading with real parts, and every writer and sender it built, in order."""

    def __init__(self, config: Config) -> None:
        self.metrics = Metrics()
        stability = Stability({a.name: a.label for a in config.activities})
        pool = ReadPool(config.database, config.details)  # never started: nothing is written
        self.writers: list[HistoryWriter] = []
        self.senders: list[WebhookSender] = []

        def history() -> HistoryWriter:
            self.writers.append(HistoryWriter(stability, pool, config.history.retention))
            return self.writers[-1]

        def webhooks(hooks: Sequence[WebhookConfig]) -> WebhookSender:
            sender = WebhookSender(
                hooks, stability, self.metrics, state_directory=config.state_directory
            )
            self.senders.append(sender)
            return sender

        self.leading = Leading(
            self.metrics,
            history=history,
            webhooks=webhooks,
            hooks=config.webhooks,
            close_timeout=1.0,
        )

    @property
    def leader_gauge(self) -> float:
        return registry_sample(self.metrics.registry, "relay_webhook_leader")


def config(tmp_path: Path, *hooks: dict[str, str]) -> Config:
    return relay_config(
        "postgresql://127.0.0.1:1/unused", webhooks=list(hooks), state_directory=str(tmp_path)
    )


async def assert_closed_for_good(writer: HistoryWriter, sender: WebhookSender) -> None:
    for part in (writer, sender):
        with pytest.raises(RuntimeError):
            await part.start()


async def test_each_election_builds_a_fresh_term_and_losing_closes_it(tmp_path: Path) -> None:
    built = Built(config(tmp_path))
    leading = built.leading
    assert leading.webhooks is built.senders[0] and built.leader_gauge == 0  # the next term's
    assert built.writers == []
    await leading.on_leadership(True)
    first = leading.webhooks
    assert first is built.senders[0] and built.leader_gauge == 1
    await leading.on_leadership(True)  # the election repeating a call: the same term
    assert leading.webhooks is first and len(built.writers) == 1 and len(built.senders) == 1
    await leading.on_leadership(False)
    assert leading.webhooks is built.senders[1] and built.leader_gauge == 0
    await assert_closed_for_good(built.writers[0], first)
    await leading.on_leadership(True)
    assert leading.webhooks is built.senders[1] and built.leader_gauge == 1
    assert len(built.writers) == 2 and len(built.senders) == 2
    await leading.aclose(timeout=1.0)
    await assert_closed_for_good(built.writers[1], built.senders[1])


async def test_reloaded_targets_go_to_the_running_term_and_to_the_next(tmp_path: Path) -> None:
    built = Built(config(tmp_path, hook("ci", UNREACHABLE)))
    leading = built.leading
    try:
        reloaded = config(tmp_path, hook("ci", UNREACHABLE), hook("chat", UNREACHABLE))
        leading.reload(reloaded.webhooks)  # not leading: kept for the first term
        await leading.on_leadership(True)
        assert leading.webhooks is not None
        assert list(leading.webhooks.targets) == ["ci", "chat"]
        leading.reload(config(tmp_path, hook("chat", UNREACHABLE)).webhooks)
        assert list(leading.webhooks.targets) == ["chat"]
        await leading.on_leadership(False)
        await leading.on_leadership(True)
        assert leading.webhooks is built.senders[1]
        assert list(leading.webhooks.targets) == ["chat"]
        assert len(built.senders) == 2
    finally:
        await leading.aclose(timeout=1.0)


async def test_an_election_while_the_relay_stops_starts_nothing(tmp_path: Path) -> None:
    built = Built(config(tmp_path))
    leading = built.leading
    leading.stopping()
    await leading.on_leadership(True)
    assert built.writers == [] and built.leader_gauge == 0
    await leading.aclose(timeout=1.0)
    with pytest.raises(RuntimeError):  # the next term's sender, closed unstarted
        await built.senders[0].start()


async def test_closing_ends_the_term_and_a_later_election_changes_nothing(
    tmp_path: Path,
) -> None:
    built = Built(config(tmp_path))
    leading = built.leading
    await leading.on_leadership(True)
    await leading.aclose(timeout=1.0)
    await leading.aclose(timeout=1.0)  # idempotent
    await assert_closed_for_good(built.writers[0], built.senders[0])
    await leading.on_leadership(False)
    await leading.on_leadership(True)
    assert built.senders == [leading.webhooks], "no new term; the closed one is still shown"


async def test_a_relay_that_does_not_lead_exports_its_targets_and_takes_reloads(
    tmp_path: Path,
) -> None:
    """Its targets' pending counts are exported (0) before any election and after a lost one,
    as the leader's are; a target a reload removes is no longer exported."""
    built = Built(config(tmp_path, hook("ci", UNREACHABLE), hook("chat", UNREACHABLE)))
    leading = built.leading

    def pending(name: str) -> float:
        return registry_sample(built.metrics.registry, "relay_webhook_pending", webhook=name)

    try:
        assert pending("ci") == 0 and pending("chat") == 0
        leading.reload(config(tmp_path, hook("ci", UNREACHABLE)).webhooks)
        assert pending("ci") == 0
        with pytest.raises(KeyError):
            pending("chat")
        await leading.on_leadership(True)
        await leading.on_leadership(False)
        assert leading.webhooks is built.senders[1]
        assert pending("ci") == 0
    finally:
        await leading.aclose(timeout=1.0)
