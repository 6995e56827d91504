"""Hostile webhook receivers: real HTTP answers on loopback that no delivery may die of.

A receiver's ``Retry-After`` is its own text. One that is not exactly RFC 9110's grammar
(``²`` passes ``str.isdigit()``, ``٣`` passes ``float()``, a year or hour past any integer
type) is ignored: the target's retry schedule applies, and the delivery is sent again with the
same id, never dropped.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

from relay.app import Relay
from tests.support import eventually, relay_config, running_relay, sample
from tests.webhook_receiver import Answer, Receiver, hook

HOSTILE_RETRY_AFTER = [
    "²",  # superscript two: str.isdigit() is True, float() refuses it
    "³⁰",
    "٣",  # Arabic-Indic three: float() reads it as 3
    "1e3",
    "-1",
    "1.5",
    "0x10",
    "\u3000 5",  # an ideographic space is not optional whitespace
    "5, 7",
    "Sun, 06 Nov 99999999999999999999 08:49:37 GMT",  # a year past a C long
    "Sun, 06 Nov 1994 99999999999:49:37 GMT",  # an hour past a C int
    "Sun, 31 Feb 2094 08:49:37 GMT",
    "Sun, 06 Nov 2094 08:49:37 +0000",  # not GMT: not an HTTP-date
]


def outcomes(relay: Relay, name: str) -> dict[str, float]:
    return {
        outcome: sample(relay, "relay_webhook_deliveries_total", webhook=name, outcome=outcome)
        for outcome in ("retry", "success", "failed")
    }


async def test_a_hostile_retry_after_falls_back_to_the_schedule_and_the_delivery_is_retried(
    db_dsn: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        receivers = []
        for index, value in enumerate(HOSTILE_RETRY_AFTER):
            status = 429 if index % 2 else 503
            answer = Answer(status, headers={"Retry-After": value})
            receivers.append(await stack.enter_async_context(Receiver(answer)))
        # The schedule (0.2 s) is what a retry waits; a day's Retry-After would not end here.
        hooks = [hook(f"t{i}", r.url, retry_schedule=["0.2s"]) for i, r in enumerate(receivers)]
        config = relay_config(db_dsn, webhooks=hooks, state_directory=str(tmp_path))
        async with running_relay(config) as relay:
            for receiver in receivers:
                await receiver.wait_for(2)
            names = [f"t{index}" for index in range(len(receivers))]
            await eventually(lambda: all(outcomes(relay, n)["success"] == 1 for n in names))
            for name, receiver, value in zip(names, receivers, HOSTILE_RETRY_AFTER, strict=True):
                first, second = receiver.requests[:2]
                assert second.id == first.id, value
                assert receiver.states[:2] == ["stable", "stable"], value
                assert outcomes(relay, name) == {"retry": 1, "success": 1, "failed": 0}, value
