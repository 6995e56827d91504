"""What a target owes a receiver: a transition or a signal event, each with its fixed
``webhook-id`` and request, in snapshot order, and what a log line says of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.fanout.webhooks.kinds import Request
from relay.fanout.webhooks.payloads import SignalEvent, Transition

SignalKey = tuple[str, str]  # (kind, activity)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One transition owed to one target: fixed id and body, whatever the attempts."""

    id: str
    transition: Transition
    request: Request
    generation: int


@dataclass(frozen=True, slots=True)
class SignalDelivery:
    """One signal event owed to one target; ``generation`` is its key's (a newer event for
    the same key supersedes it)."""

    id: str
    event: SignalEvent
    request: Request
    generation: int


Owed = Delivery | SignalDelivery


def signal_first(item: Owed) -> tuple[int, int]:
    """Sort key: snapshot order, and within one snapshot a signal before the state."""
    if isinstance(item, SignalDelivery):
        return (item.event.seq, 0)
    return (item.transition.seq, 1)


def described(item: Owed) -> dict[str, Any]:
    """What a log line says of a delivery."""
    if isinstance(item, SignalDelivery):
        event = item.event
        return {
            "signal": event.kind,
            "activity": event.activity,
            "cleared": event.cleared,
            "seq": event.seq,
        }
    return {"state": item.transition.state.value, "seq": item.transition.seq}
