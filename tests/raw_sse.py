"""Exact-bytes SSE reading, and JavaScript's JSON, for wire-compatibility tests.

``RawStream`` keeps every byte of a response body (after HTTP's own chunk framing) and splits
it into frames at the blank line that ends each one, so a test compares what was sent, not
what a parser made of it. ``js_json`` is what a Node.js server sends for a JSON text it got:
``JSON.stringify(JSON.parse(text))`` (doubles, the shortest round-trip spelling, integer-like
keys first), written from the ECMAScript rules, not from any implementation.

``expect_frame`` matches a frame against a template in which a few markers stand for the
parts a server makes up (a timestamp, a connection id, a string) and returns what they were.
"""

from __future__ import annotations

import asyncio
import decimal
import itertools
import json
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

# --- JavaScript's JSON -----------------------------------------------------------------------

_INDEX_KEY = re.compile(r"0|[1-9][0-9]*")


def js_parse(text: str) -> Any:
    """``JSON.parse``: every number a double; duplicate keys keep their first place, last value."""
    return json.loads(text, parse_int=float, parse_float=float, object_pairs_hook=dict)


def js_number(value: float) -> str:
    """``Number.prototype.toString`` for a finite double (ECMAScript Number::toString)."""
    if value == 0:
        return "0"  # -0 too
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, as ECMAScript asks for.
    digits_t, exponent = decimal.Decimal(repr(abs(value))).normalize().as_tuple()[1:]
    digits = "".join(map(str, digits_t))
    assert isinstance(exponent, int)
    k = len(digits)
    n = k + exponent  # value = 0.digits x 10^n
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"


def js_stringify(value: Any) -> str:
    """``JSON.stringify`` of a value made of dicts, lists, str, float, bool and None."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        number = float(value)
        return js_number(number) if math.isfinite(number) else "null"
    if isinstance(value, str):
        return _js_string(value)
    if isinstance(value, list):
        return "[" + ",".join(js_stringify(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(_js_string(k) + ":" + js_stringify(v) for k, v in js_key_order(value))
            + "}"
        )
    raise TypeError(f"not a JSON value: {value!r}")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _js_string(text: str) -> str:
    """``JSON.stringify`` of a string: as JSON, but a lone surrogate (a pair is one code point
    once parsed) is written as its \\u escape (ES2019's well-formed JSON.stringify)."""
    written = json.dumps(text, ensure_ascii=False)
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", written)


def js_key_order(obj: dict[str, Any]) -> list[tuple[str, Any]]:
    """An object's own keys in JavaScript's order: array-index keys ascending, then the rest
    in insertion order."""
    index = [(k, v) for k, v in obj.items() if _INDEX_KEY.fullmatch(k) and int(k) < 2**32 - 1]
    index.sort(key=lambda kv: int(kv[0]))
    named = [(k, v) for k, v in obj.items() if not (_INDEX_KEY.fullmatch(k) and int(k) < 2**32 - 1)]
    return index + named


def js_json(text: str) -> str:
    """What ``JSON.stringify(JSON.parse(text))`` gives."""
    return js_stringify(js_parse(text))


# --- frames ----------------------------------------------------------------------------------

ISO_MS_Z = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z"  # Date.prototype.toISOString()
BASE36_8 = r"[0-9a-z]{8}"
JSON_STRING_BODY = r'(?:[^"\\\x00-\x1f]|\\.)*'

# Template markers: what the server makes up.
TS = "\x00ts\x00"
CID = "\x00cid\x00"
STR = "\x00str\x00"
_MARKERS = {TS: ("ts", ISO_MS_Z), CID: ("cid", BASE36_8), STR: ("str", JSON_STRING_BODY)}


@dataclass(frozen=True)
class RawFrame:
    """One SSE frame as sent: its lines and the blank line ending it."""

    raw: bytes

    @property
    def lines(self) -> list[bytes]:
        return self.raw.removesuffix(b"\n\n").split(b"\n")

    @property
    def id(self) -> str | None:
        ids = [line[3:].removeprefix(b" ") for line in self.lines if line.startswith(b"id:")]
        return ids[-1].decode() if ids else None

    @property
    def body(self) -> bytes:
        """The frame without its ``id:`` lines (which the contract allows a relay to add)."""
        kept = [line for line in self.lines if not line.startswith(b"id:")]
        return b"\n".join(kept) + b"\n\n"

    @property
    def event(self) -> str | None:
        for line in self.lines:
            if line.startswith(b"event:"):
                return line[6:].removeprefix(b" ").decode()
        return None

    @property
    def data(self) -> str:
        parts = [line[5:].removeprefix(b" ") for line in self.lines if line.startswith(b"data:")]
        return b"\n".join(parts).decode()

    @property
    def is_comment(self) -> bool:
        return all(line.startswith(b":") for line in self.lines)

    @property
    def is_retry(self) -> bool:
        return all(line.startswith(b"retry:") for line in self.lines)

    @property
    def is_heartbeat(self) -> bool:
        return self.event == "heartbeat" or self.body == b": heartbeat\n\n"

    def json(self) -> Any:
        return json.loads(self.data)

    def __repr__(self) -> str:
        return f"RawFrame({self.raw!r})"


def id_key(value: str) -> tuple[int, ...]:
    """An event id's numbers, for comparing ids that must grow."""
    numbers = tuple(int(n) for n in re.findall(r"\d+", value))
    assert numbers, f"event id {value!r} has no number to order it by"
    return numbers


class RawStream:
    """An SSE response read as bytes: every frame, exactly, in order."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.received = bytearray()  # everything, for reports
        self._buffer = b""
        self.frames: list[RawFrame] = []  # every frame read so far

    async def frame(self, timeout: float = 10.0) -> RawFrame:
        """The next frame (comments, retry lines and heartbeats included)."""
        async with asyncio.timeout(timeout):
            while b"\n\n" not in self._buffer:
                chunk = await self.response.content.readany()
                if not chunk:
                    raise EOFError(f"stream ended; unframed bytes: {self._buffer!r}")
                self.received += chunk
                self._buffer += chunk
                if b"\r" in chunk:
                    raise AssertionError(f"a CR in the stream (statbus sends LF only): {chunk!r}")
        raw, _, self._buffer = self._buffer.partition(b"\n\n")
        frame = RawFrame(raw + b"\n\n")
        self.frames.append(frame)
        return frame

    async def data_frame(self, timeout: float = 10.0) -> RawFrame:
        """The next frame that is not a heartbeat, a comment or a retry line."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frame(timeout)
                if not (frame.is_heartbeat or frame.is_comment or frame.is_retry):
                    return frame

    async def data_frames(self, count: int, timeout: float = 10.0) -> list[RawFrame]:
        return [await self.data_frame(timeout) for _ in range(count)]

    def ids(self) -> list[str]:
        return [f.id for f in self.frames if f.id is not None]

    def assert_ids_grow(self) -> None:
        """``id:`` lines are allowed; where there are some they must grow, frame after frame."""
        keys = [id_key(i) for i in self.ids()]
        assert all(a < b for a, b in itertools.pairwise(keys)), self.ids()


@asynccontextmanager
async def open_raw(
    url: str, headers: dict[str, str] | None = None, session: aiohttp.ClientSession | None = None
) -> AsyncIterator[RawStream]:
    """GET ``url`` and hand its body over as a :class:`RawStream` (whatever the status)."""
    own = session is None
    http = session or aiohttp.ClientSession()
    try:
        async with http.get(url, headers=headers or {}) as response:
            yield RawStream(response)
    finally:
        if own:
            await http.close()


def expect_frame(frame: RawFrame | bytes, template: str) -> dict[str, list[str]]:
    """Match a frame's body (its ``id:`` lines left out) against ``template``, in which
    ``TS``, ``CID`` and ``STR`` stand for a toISOString() timestamp, an 8-character base-36 id
    and a JSON string's content. Returns what each marker matched, in order."""
    body = frame.body if isinstance(frame, RawFrame) else frame
    pattern = ""
    names: list[str] = []
    rest = template
    while rest:
        at = [(rest.find(m), m) for m in _MARKERS if rest.find(m) >= 0]
        if not at:
            pattern += re.escape(rest)
            break
        position, marker = min(at)
        pattern += re.escape(rest[:position]) + f"({_MARKERS[marker][1]})"
        names.append(_MARKERS[marker][0])
        rest = rest[position + len(marker) :]
    match = re.fullmatch(pattern.encode(), body, re.DOTALL)
    shown = template
    for marker, (name, _) in _MARKERS.items():
        shown = shown.replace(marker, f"<{name}>")
    assert match is not None, f"frame {body!r}\n does not match {shown.encode()!r}"
    found: dict[str, list[str]] = {}
    for name, value in zip(names, match.groups(), strict=True):
        found.setdefault(name, []).append(value.decode())
    return found
