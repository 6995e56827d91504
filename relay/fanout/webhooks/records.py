"""What the state file (relay/fanout/webhooks/statefile.py) holds per target, and its format.

Per target: the last state that held (``settled``), the last state delivered, the seq of
the last state the target filtered out, and the delivery still owed (with its
``webhook-id``, so a retry after a restart keeps the id receivers deduplicate on); and for
signals (stalled, overdue): the ones the target was told of (``told``, so a restart neither
repeats nor forgets them) and the signal events still owed, each with its ``webhook-id``.
A file written before signals existed reads as none told and none owed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from relay.fanout.webhooks.payloads import SignalEvent, Transition, record_int, record_number
from relay.state.stability import State

Item = TypeVar("Item", Transition, SignalEvent)


@dataclass(frozen=True, slots=True)
class Mark:
    """A state a target reached: which, its sequence number, since when (unix seconds)."""

    state: State
    seq: int
    since: float

    def to_record(self) -> dict[str, Any]:
        return {"state": self.state.value, "seq": self.seq, "since": self.since}

    @classmethod
    def from_record(cls, record: Any) -> Mark | None:
        if record is None:
            return None
        seq, since = record_int(record["seq"]), record_number(record["since"])
        return cls(State(record["state"]), seq, since)


@dataclass(frozen=True, slots=True)
class Pending(Generic[Item]):
    """A delivery still owed: its ``webhook-id`` and what it says (a transition, or a
    signal event). Built as ``Pending(id, item)``: Python 3.11 cannot set the type argument
    on a frozen slotted instance, so ``Pending[Transition](...)`` raises."""

    id: str
    item: Item


@dataclass(frozen=True, slots=True)
class TargetRecord:
    settled: Mark | None = None
    delivered: Mark | None = None
    filtered_seq: int | None = None
    pending: Pending[Transition] | None = None
    # The signals the target was told of (as events that appeared), in the order told.
    told: tuple[SignalEvent, ...] = ()
    signals: tuple[Pending[SignalEvent], ...] = ()  # owed, oldest first

    def to_record(self) -> dict[str, Any]:
        pending = self.pending
        return {
            "told": [event.to_record() for event in self.told],
            "signals": [{"id": p.id, "event": p.item.to_record()} for p in self.signals],
            "settled": self.settled.to_record() if self.settled else None,
            "delivered": self.delivered.to_record() if self.delivered else None,
            "filtered_seq": self.filtered_seq,
            "pending": (
                {"id": pending.id, "transition": pending.item.to_record()} if pending else None
            ),
        }

    @classmethod
    def from_record(cls, record: Any) -> TargetRecord:
        pending = record.get("pending")
        filtered = record.get("filtered_seq")
        return cls(
            settled=Mark.from_record(record.get("settled")),
            delivered=Mark.from_record(record.get("delivered")),
            filtered_seq=record_int(filtered) if filtered is not None else None,
            pending=(
                Pending(str(pending["id"]), Transition.from_record(pending["transition"]))
                if pending
                else None
            ),
            told=tuple(SignalEvent.from_record(event) for event in record.get("told") or ()),
            signals=tuple(
                Pending(str(item["id"]), SignalEvent.from_record(item["event"]))
                for item in record.get("signals") or ()
            ),
        )


VERSION = 1  # of the file format


def parse(text: str) -> dict[str, TargetRecord]:
    """The file's content. Malformed content raises; which exception depends on where it
    breaks (``ValueError``, ``KeyError``, ``AttributeError``, ...), so callers catch them all."""
    tree = json.loads(text, parse_constant=_reject_constant)
    if not isinstance(tree, dict) or tree.get("version") != VERSION:
        raise ValueError(f"expected an object with version {VERSION}")
    targets = tree["targets"]
    if not isinstance(targets, dict):
        raise ValueError('"targets" is not an object')
    return {str(name): TargetRecord.from_record(record) for name, record in targets.items()}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid number here")
