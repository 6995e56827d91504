"""What a webhook says: a :class:`Transition`, as a Standard Webhooks JSON body or a Slack message.

Each body is encoded once per delivery; every retry sends the same bytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from relay.state.eta import eta_text, human_duration
from relay.state.stability import State, iso_timestamp

CHANGED = "system.stability.changed"
TEST = "system.stability.test"

Format = Literal["json", "slack"]


@dataclass(frozen=True, slots=True)
class Transition:
    """One state a target is told about, and what it replaced (from that target's view)."""

    state: State
    previous_state: State | None
    since: float
    previous_duration: float | None
    seq: int
    running: tuple[str, ...] = ()  # the labels of the activities running at the transition
    eta: dict[str, Any] | None = None  # the estimate of the time left then (relay/state/eta.py)

    def to_record(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "previous_state": self.previous_state.value if self.previous_state else None,
            "since": self.since,
            "previous_duration": self.previous_duration,
            "seq": self.seq,
            "running": list(self.running),
            "eta": self.eta,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Transition:
        previous = record.get("previous_state")
        duration = record.get("previous_duration")
        return cls(
            state=State(record["state"]),
            previous_state=State(previous) if previous is not None else None,
            since=record_number(record["since"]),
            previous_duration=record_number(duration) if duration is not None else None,
            seq=record_int(record["seq"]),
            running=tuple(str(label) for label in record.get("running", ())),
            eta=record.get("eta") if isinstance(record.get("eta"), dict) else None,
        )


def record_int(value: Any) -> int:
    """An integer as a record holds it: a JSON integer only (``int()`` would also take ``true``,
    ``2.7`` and the text ``"٣"``)."""
    if type(value) is not int:
        raise ValueError(f"expected an integer, got {value!r:.40}")
    return value


def record_number(value: Any) -> float:
    """A finite JSON number (``1e999`` reads as an infinity; text and ``true`` are refused)."""
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r:.40}")
    return float(value)


def encode(fmt: Format, transition: Transition, public_url: str | None) -> bytes:
    """The request body for ``transition`` in the target's format."""
    if fmt == "slack":
        return _dump(slack_message(transition, public_url))
    return _dump(envelope(CHANGED, transition.since, _data(transition)))


def encode_test(fmt: Format, name: str, public_url: str | None, now: float) -> bytes:
    """A clearly marked test event (``stability-relay webhook test``)."""
    if fmt == "slack":
        text = f'Test: stability-relay can post here (webhook "{name}"). No state has changed.'
        section = {"type": "section", "text": {"type": "mrkdwn", "text": text}}
        return _dump({"text": text, "blocks": [section, *_link_block(public_url)]})
    sample = Transition(State.STABLE, State.PROCESSING, now, 0.0, 0)
    return _dump(envelope(TEST, now, {**_data(sample), "test": True}))


def envelope(kind: str, timestamp: float, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "timestamp": iso_timestamp(timestamp), "data": data}


def _data(transition: Transition) -> dict[str, Any]:
    duration = transition.previous_duration
    return {
        "stable": transition.state.stable,
        "state": transition.state.value,
        "previous_state": transition.previous_state.value if transition.previous_state else None,
        "since": iso_timestamp(transition.since),
        "previous_duration_seconds": round(duration, 3) if duration is not None else None,
        "seq": transition.seq,
        "running": list(transition.running),
        "eta": transition.eta,
    }


_HEADLINE = {
    State.STABLE: (":white_check_mark:", "Data is stable"),
    State.PROCESSING: (":hourglass_flowing_sand:", "Processing data"),
    State.UNKNOWN: (":grey_question:", "Status unknown: the relay has no database connection"),
}


def slack_message(transition: Transition, public_url: str | None) -> dict[str, Any]:
    """``text`` (notifications, old clients) plus ``blocks`` that read well in a channel."""
    emoji, headline = _HEADLINE[transition.state]
    if transition.state is State.PROCESSING and transition.running:
        headline = f"{headline}: {', '.join(transition.running)}"
    if transition.state is State.PROCESSING and transition.eta:
        headline = f"{headline}, {eta_text(transition.eta)}"
    detail = _previous_detail(transition)
    text = f"{emoji} {headline}" + (f" ({detail})" if detail else "")
    context = [f"{detail[0].upper()}{detail[1:]}." if detail else None]
    context.append(f"Since {_clock(transition.since)}.")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} *{headline}*"}},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": " ".join(c for c in context if c)}],
        },
        *_link_block(public_url),
    ]
    return {"text": text, "blocks": blocks}


def _previous_detail(transition: Transition) -> str | None:
    previous, duration = transition.previous_state, transition.previous_duration
    if previous is None:
        return None
    if duration is None:
        return f"was {previous.value}"
    took = human_duration(duration)
    if previous is State.PROCESSING:
        return f"processing took {took}"
    if previous is State.STABLE:
        return f"stable for {took} before"
    return f"status was unknown for {took}"


def _link_block(public_url: str | None) -> list[dict[str, Any]]:
    if not public_url:
        return []
    link = f"<{_slack_escape(public_url)}|Open the status page>"
    return [{"type": "section", "text": {"type": "mrkdwn", "text": link}}]


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _dump(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
