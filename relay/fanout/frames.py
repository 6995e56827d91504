"""Server-Sent Events as they go on the wire: each event encoded once, as raw bytes and in its
HTTP/1.1 chunked form, so that the same bytes can be written to every client
(``relay/fanout/sse.py`` writes them).

Stability events are *unnamed* (``id: <seq>`` + ``data: {"stable": ..., "state": ...,
"since": ..., "seq": ...}``: the seed's ``useSystemStability`` hook reads ``onmessage``);
relayed channels are named events without an id, so ``Last-Event-ID`` always names the last
stability event a client saw.
"""

from __future__ import annotations

import json
from typing import Protocol

from relay.state.stability import Snapshot

PING = b": ping\n\n"
END_OF_STREAM = b"0\r\n\r\n"  # the last chunk of a chunked HTTP/1.1 body
# The last event of a stream whose credential is no longer valid.
UNAUTHORIZED_EVENT = "unauthorized"


class Recipient(Protocol):
    """A client as its framing cares: whether its body is chunked."""

    @property
    def chunked(self) -> bool: ...


class Frame:
    """One event, encoded once: the raw bytes and their HTTP/1.1 chunked form."""

    __slots__ = ("chunked", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.chunked = b"%x\r\n%b\r\n" % (len(raw), raw)

    def for_client(self, client: Recipient) -> bytes:
        return self.chunked if client.chunked else self.raw


def encode_event(data: str, event: str | None = None, event_id: object = None) -> bytes:
    """One event as it goes on the wire: ``id:`` (if any), ``event:`` (if named), then
    ``data`` as given in one ``data:`` field (the relay's payloads are single-line JSON)."""
    head = "" if event_id is None else f"id: {event_id}\n"
    if event is not None:
        head += f"event: {event}\n"
    return f"{head}data: {data}\n\n".encode()


def stability_frame(snapshot: Snapshot) -> Frame:
    data = json.dumps(snapshot.as_json(), separators=(",", ":"))
    return Frame(encode_event(data, event_id=snapshot.seq))


def named_frame(event: str, data: str) -> Frame:
    return Frame(encode_event(data, event))


def unauthorized_frame(reason: str) -> Frame:
    return named_frame(UNAUTHORIZED_EVENT, json.dumps({"reason": reason}, separators=(",", ":")))
