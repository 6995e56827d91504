"""What a webhook says: a :class:`Transition` or a :class:`SignalEvent` (work stalled or
overdue, and when that ends), as a Standard Webhooks JSON body or a Slack message.

Each body is encoded once per delivery; every retry sends the same bytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from relay.config import WebhookFormat as Format
from relay.state.eta import eta_text, human_duration
from relay.state.stability import State, iso_timestamp

CHANGED = "system.stability.changed"
TEST = "system.stability.test"
STALLED = "system.stability.stalled"
OVERDUE = "system.stability.overdue"
SIGNAL_CLEARED = "system.stability.signal_cleared"

SignalKind = Literal["stalled", "overdue"]
SIGNAL_KINDS: tuple[SignalKind, ...] = ("stalled", "overdue")
# Why a signal ended: the activity still runs and the signal no longer holds (``recovered``),
# or the activity is no longer active (``finished``).
ClearReason = Literal["recovered", "finished"]


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


@dataclass(frozen=True, slots=True)
class SignalEvent:
    """A signal (``stalled`` or ``overdue``) that appeared, or ended (``cleared``), for one
    activity. ``since`` and ``bound`` are the signal's (relay/state/stability.py's Signal);
    ``at`` is when the relay saw the change, ``seq`` the snapshot that carried it."""

    kind: SignalKind
    activity: str
    label: str
    since: float
    bound: float | None
    at: float
    seq: int
    cleared: ClearReason | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.activity)

    def to_record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "activity": self.activity,
            "label": self.label,
            "since": self.since,
            "bound": self.bound,
            "at": self.at,
            "seq": self.seq,
            "cleared": self.cleared,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SignalEvent:
        kind, cleared, bound = record["kind"], record.get("cleared"), record.get("bound")
        if kind not in SIGNAL_KINDS:
            raise ValueError(f"unknown signal kind {kind!r:.40}")
        if cleared not in (None, "recovered", "finished"):
            raise ValueError(f"unknown clear reason {cleared!r:.40}")
        return cls(
            kind=kind,
            activity=str(record["activity"]),
            label=str(record["label"]),
            since=record_number(record["since"]),
            bound=record_number(bound) if bound is not None else None,
            at=record_number(record["at"]),
            seq=record_int(record["seq"]),
            cleared=cleared,
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


def encode_signal(fmt: Format, event: SignalEvent, public_url: str | None) -> bytes:
    """The request body for a signal event in the target's format."""
    if fmt == "slack":
        return _dump(signal_slack_message(event, public_url))
    kind = SIGNAL_CLEARED if event.cleared else (STALLED if event.kind == "stalled" else OVERDUE)
    return _dump(envelope(kind, event.at, _signal_data(event)))


def _signal_data(event: SignalEvent) -> dict[str, Any]:
    return {
        "signal": event.kind,
        "activity": event.activity,
        "label": event.label,
        "since": iso_timestamp(event.since),
        "bound_seconds": round(event.bound, 3) if event.bound is not None else None,
        "duration_seconds": round(max(0.0, event.at - event.since), 3),
        "cleared": event.cleared,
        "seq": event.seq,
        "text": signal_text(event),
    }


def signal_text(event: SignalEvent) -> str:
    """One sentence, the same on the status page: "Importing data has made no progress for
    30 min", "Importing data is overdue: running 2 h 10 min, expected within 40 min"."""
    label = event.label
    if event.cleared == "finished":
        return f"{label} is no longer {event.kind}: it finished"
    if event.cleared == "recovered":
        return (
            f"{label} is making progress again"
            if event.kind == "stalled"
            else (f"{label} is no longer overdue")
        )
    elapsed = event.at - event.since
    if event.kind == "stalled":
        if elapsed < 1:
            return f"{label} has stopped making progress"
        return f"{label} has made no progress for {human_duration(elapsed)}"
    text = f"{label} is overdue: running {human_duration(elapsed)}"
    return text + (f", expected within {human_duration(event.bound)}" if event.bound else "")


def signal_slack_message(event: SignalEvent, public_url: str | None) -> dict[str, Any]:
    emoji = ":white_check_mark:" if event.cleared else ":warning:"
    sentence = _slack_escape(signal_text(event))
    context = f"Since {_clock(event.since)}." if not event.cleared else f"At {_clock(event.at)}."
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} *{sentence}*"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        *_link_block(public_url),
    ]
    return {"text": f"{emoji} {sentence}", "blocks": blocks}


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


def headline(transition: Transition) -> str:
    """The words every chat format leads with: "Processing data: Importing data, about 4 min
    left", "Data is stable"."""
    text = _HEADLINE[transition.state][1]
    if transition.state is State.PROCESSING and transition.running:
        text = f"{text}: {', '.join(transition.running)}"
    if transition.state is State.PROCESSING and transition.eta:
        text = f"{text}, {eta_text(transition.eta)}"
    return text


def emoji(transition: Transition) -> str:
    """The Slack shortcode of the state (chat formats without shortcodes map it)."""
    return _HEADLINE[transition.state][0]


def plain_text(transition: Transition) -> str:
    """Slack's ``text`` without its emoji: "Data is stable (processing took 12 min)"."""
    detail = previous_detail(transition)
    return headline(transition) + (f" ({detail})" if detail else "")


def clock(timestamp: float) -> str:
    return _clock(timestamp)


def slack_message(transition: Transition, public_url: str | None) -> dict[str, Any]:
    """``text`` (notifications, old clients) plus ``blocks`` that read well in a channel."""
    emoji = _HEADLINE[transition.state][0]
    headline_text = headline(transition)
    detail = previous_detail(transition)
    text = f"{emoji} {headline_text}" + (f" ({detail})" if detail else "")
    context = [f"{detail[0].upper()}{detail[1:]}." if detail else None]
    context.append(f"Since {_clock(transition.since)}.")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} *{headline_text}*"}},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": " ".join(c for c in context if c)}],
        },
        *_link_block(public_url),
    ]
    return {"text": text, "blocks": blocks}


def previous_detail(transition: Transition) -> str | None:
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
