"""Each webhook kind's request: method, URL, headers and body for a transition, a signal event,
a repeat of the current status (status monitors) or ``webhook test`` (docs/webhooks.md).

| kind | a transition | stalled, overdue | its end |
|---|---|---|---|
| json, slack | POST the envelope / message (payloads.py) | the same | the same |
| teams | POST an Adaptive Card message | the same | the same |
| discord | POST ``content`` and an embed | the same | the same |
| template | POST the configured body, filled (template.py) | the same | the same |
| healthchecks | processing ``/start``, stable the URL, unknown ``/fail`` | ``/fail`` | ``/log`` |
| uptime_kuma | GET ``?status=up|down&msg=&ping=`` | ``down`` | ``up`` unless another holds |
| gatus | POST ``?success=&error=&duration=`` with the bearer token | ``false`` | ``true`` unless |

"Healthy" (a status monitor's up, success=true): the state is stable or processing and no
signal the target was told of still holds. Unknown, stalled and overdue are down, with the
sentence saying why.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from relay.config import WebhookConfig
from relay.fanout.webhooks import template
from relay.fanout.webhooks.payloads import (
    CHANGED,
    OVERDUE,
    SIGNAL_CLEARED,
    STALLED,
    TEST,
    SignalEvent,
    Transition,
    clock,
    emoji,
    encode,
    encode_signal,
    encode_test,
    headline,
    plain_text,
    previous_detail,
    signal_text,
)
from relay.state.eta import eta_text, human_duration
from relay.state.stability import State, iso_timestamp

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
# Kuma keeps msg as text and shows it in a table; Discord refuses content past 2000 characters,
# an embed title past 256 and a description past 4096.
MSG_LIMIT = 1000
DISCORD_CONTENT = 2000
DISCORD_TITLE = 256
DISCORD_DESCRIPTION = 4096
# Slack's shortcodes as characters, for the chat formats that do not read shortcodes.
_UNICODE = {
    ":white_check_mark:": "\u2705",
    ":hourglass_flowing_sand:": "\u23f3",
    ":grey_question:": "\u2754",
    ":warning:": "\u26a0\ufe0f",
}
# Discord embed colours (0xRRGGBB) and Adaptive Card text colours by what the message says.
_DISCORD_COLOR = {"good": 0x2EB67D, "busy": 0x3B82F6, "warning": 0xE8A317, "unknown": 0x9CA3AF}
_CARD_COLOR = {"good": "Good", "busy": "Accent", "warning": "Warning", "unknown": "Default"}
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_TYPE = "application/vnd.microsoft.card.adaptive"


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, the same bytes on every attempt."""

    method: str
    url: str
    body: bytes | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Message:
    """What any kind says, whatever its shape: the event, its sentence, up or down, and the
    named fields a template may use."""

    event: str
    emoji: str
    title: str  # the headline ("Processing data: Importing data, about 4 min left")
    detail: str | None  # a second line ("Processing took 12 min. Since ... UTC.")
    text: str  # one sentence for one-line receivers (Kuma's msg, Gatus's error, HC's body)
    healthy: bool
    tone: str  # good | busy | warning | unknown
    at: float
    fields: dict[str, Any]


def render(
    hook: WebhookConfig,
    item: Transition | SignalEvent,
    public_url: str | None,
    attention: Sequence[SignalEvent] = (),
) -> Request:
    """The request for a transition or a signal event; ``attention`` is the signals the target
    was told of that still hold (they make a status monitor's state down)."""
    kind = hook.format
    if kind == "json" or kind == "slack":
        body = (
            encode(kind, item, public_url)
            if isinstance(item, Transition)
            else encode_signal(kind, item, public_url)
        )
        return Request("POST", hook.url, body, JSON)
    return _shaped(hook, _message(hook, item, public_url, attention), item)


def render_repeat(
    hook: WebhookConfig, last: Transition, attention: Sequence[SignalEvent], now: float
) -> Request:
    """A status monitor's current status again: the last state delivered (without its estimate,
    which would be stale) and the signals that still hold, their durations as of ``now``."""
    current = dataclasses.replace(last, eta=None, previous_state=None, previous_duration=None)
    fresh = [dataclasses.replace(event, at=now) for event in attention]
    return _shaped(hook, _message(hook, current, None, fresh), current)


def render_test(hook: WebhookConfig, public_url: str | None, now: float) -> Request:
    """``stability-relay webhook test``: a clearly marked test, or the kind's neutral ping."""
    kind = hook.format
    if kind == "json" or kind == "slack":
        return Request("POST", hook.url, encode_test(kind, hook.name, public_url, now), JSON)
    text = f'Test: stability-relay can post here (webhook "{hook.name}"). No state has changed.'
    sample = Transition(State.STABLE, State.PROCESSING, now, 0.0, 0)
    message = _message(hook, sample, public_url, ())
    message = dataclasses.replace(
        message,
        event=TEST,
        emoji=":white_check_mark:",
        title=text,
        detail=None,
        text=text,
        fields={**message.fields, "event": TEST, "text": text},
    )
    if kind == "healthchecks":  # a log entry: the check's status does not change
        return Request("POST", _append(hook.url, "log"), text.encode(), TEXT)
    return _shaped(hook, message, sample)


def _message(
    hook: WebhookConfig,
    item: Transition | SignalEvent,
    public_url: str | None,
    attention: Sequence[SignalEvent],
) -> Message:
    holding = [event for event in attention if not event.cleared]
    stalled = [event.label for event in holding if event.kind == "stalled"]
    overdue = [event.label for event in holding if event.kind == "overdue"]
    common = {"url": public_url, "name": hook.name, "stalled": stalled, "overdue": overdue}
    if isinstance(item, Transition):
        state, duration = item.state, item.previous_duration
        detail = previous_detail(item)
        context = f"{detail[0].upper()}{detail[1:]}. " if detail else ""
        text = plain_text(item)
        healthy = state is not State.UNKNOWN and not holding
        if holding:  # a state that began while a signal holds: the monitor stays down
            text = "; ".join([text, *(signal_text(event) for event in holding)])
        tone = {State.STABLE: "good", State.PROCESSING: "busy", State.UNKNOWN: "unknown"}[state]
        fields = {
            "event": CHANGED,
            "text": text,
            "state": state.value,
            "previous": item.previous_state.value if item.previous_state else None,
            "stable": state.stable,
            "healthy": healthy,
            "running": list(item.running),
            "duration": round(duration, 3) if duration is not None else None,
            "duration_text": human_duration(duration) if duration is not None else None,
            "eta": item.eta,
            "eta_text": eta_text(item.eta) if item.eta else None,
            "since": iso_timestamp(item.since),
            "seq": item.seq,
            "signal": None,
            "activity": None,
            "label": None,
            "cleared": None,
            **common,
        }
        return Message(
            event=CHANGED,
            emoji=emoji(item),
            title=headline(item),
            detail=f"{context}Since {clock(item.since)}.",
            text=text,
            healthy=healthy,
            tone=tone if healthy or state is State.UNKNOWN else "warning",
            at=item.since,
            fields=fields,
        )
    sentence = signal_text(item)
    others = [event for event in holding if event.key != item.key]
    healthy = item.cleared is not None and not others
    text = "; ".join([sentence, *(signal_text(event) for event in others)])
    if item.cleared:
        event, when = SIGNAL_CLEARED, f"At {clock(item.at)}."
    else:
        event = STALLED if item.kind == "stalled" else OVERDUE
        when = f"Since {clock(item.since)}."
    elapsed = max(0.0, item.at - item.since)
    fields = {
        "event": event,
        "text": text,
        "state": None,
        "previous": None,
        "stable": None,
        "healthy": healthy,
        "running": [],
        "duration": round(elapsed, 3),
        "duration_text": human_duration(elapsed),
        "eta": None,
        "eta_text": None,
        "since": iso_timestamp(item.since),
        "seq": item.seq,
        "signal": item.kind,
        "activity": item.activity,
        "label": item.label,
        "cleared": item.cleared,
        **common,
    }
    return Message(
        event=event,
        emoji=":white_check_mark:" if item.cleared else ":warning:",
        title=sentence,
        detail=when,
        text=text,
        healthy=healthy,
        tone="good" if healthy else "warning",
        at=item.at,
        fields=fields,
    )


def _shaped(hook: WebhookConfig, message: Message, item: Transition | SignalEvent) -> Request:
    kind = hook.format
    if kind == "teams":
        return Request("POST", hook.url, _dump(_teams(message)), JSON)
    if kind == "discord":
        return Request("POST", hook.url, _dump(_discord(message)), JSON)
    if kind == "template":
        body = _dump(template.fill(hook.template, message.fields))
        return Request("POST", hook.url, body, hook.content_type or JSON)
    if kind == "healthchecks":
        return Request("POST", _healthchecks_url(hook.url, item), _msg(message), TEXT)
    if kind == "uptime_kuma":
        query = {
            "status": "up" if message.healthy else "down",
            "msg": message.text[:MSG_LIMIT],
            "ping": "",
        }
        return Request("GET", _with_query(hook.url, query))
    if kind == "gatus":
        query = {"success": "true" if message.healthy else "false"}
        if not message.healthy:
            query["error"] = message.text[:MSG_LIMIT]
        took = _busy_period(item)
        if took is not None:
            query["duration"] = f"{took:.3f}s"  # Go's time.ParseDuration reads "252.400s"
        headers = {"Authorization": f"Bearer {hook.token}"}
        return Request("POST", _with_query(hook.url, query), headers=headers)
    raise AssertionError(kind)


def _healthchecks_url(url: str, item: Transition | SignalEvent) -> str:
    if isinstance(item, SignalEvent):
        return _append(url, "log" if item.cleared else "fail")
    if item.state is State.PROCESSING:
        return _append(url, "start")
    if item.state is State.UNKNOWN:
        return _append(url, "fail")
    return url  # stable: success, which ends the run /start began


def _busy_period(item: Transition | SignalEvent) -> float | None:
    """How long processing took, on the transition that ends it (Gatus's duration)."""
    if (
        isinstance(item, Transition)
        and item.state is State.STABLE
        and item.previous_state is State.PROCESSING
        and item.previous_duration is not None
    ):
        return item.previous_duration
    return None


def _teams(message: Message) -> dict[str, Any]:
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": f"{_UNICODE.get(message.emoji, '')} {message.title}".strip(),
            "weight": "Bolder",
            "size": "Medium",
            "color": _CARD_COLOR[message.tone],
            "wrap": True,
        }
    ]
    if message.detail:
        body.append({"type": "TextBlock", "text": message.detail, "isSubtle": True, "wrap": True})
    card: dict[str, Any] = {
        "$schema": CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    url = message.fields.get("url")
    if url:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open the status page", "url": url}]
    return {
        "type": "message",
        "attachments": [{"contentType": CARD_TYPE, "contentUrl": None, "content": card}],
    }


def _discord(message: Message) -> dict[str, Any]:
    symbol = _UNICODE.get(message.emoji, "")
    embed: dict[str, Any] = {
        "title": _cut(message.title, DISCORD_TITLE),
        "color": _DISCORD_COLOR[message.tone],
        "timestamp": iso_timestamp(message.at),
    }
    if message.detail:
        embed["description"] = _cut(message.detail, DISCORD_DESCRIPTION)
    url = message.fields.get("url")
    if url:
        embed["url"] = url
    return {
        "content": _cut(f"{symbol} {message.text}".strip(), DISCORD_CONTENT),
        "embeds": [embed],
        # A label such as "@everyone" is text, never a mention.
        "allowed_mentions": {"parse": []},
    }


def _msg(message: Message) -> bytes:
    return message.text.encode()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _append(url: str, suffix: str) -> str:
    """``<url>/<suffix>``, before the query (a slug URL's ``?create=1`` stays)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + suffix))


def _with_query(url: str, query: dict[str, str]) -> str:
    """The URL with exactly ``query`` (Kuma's copied ``?status=up&msg=OK&ping=`` is replaced)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _dump(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
