"""README badges: a shields.io endpoint JSON and a small SVG badge of our own.

``GET /api/system-status/badge`` answers shields.io's endpoint schema (version 1: exactly
``schemaVersion``, ``label``, ``message``, ``color``, ``cacheSeconds``; shields refuses unknown
keys and an empty message). ``GET /api/system-status/badge.svg`` draws a two-part flat badge
itself, for READMEs and wikis that cannot use shields.

Both say the state and no more: "stable", "processing", "processing stalled", "processing
overdue" or "unknown" (no activity labels, no counts), so that ``auth.public_badge`` can make
them public while the rest stays private. ``?activity=NAME``: that activity's state and its own
signals (404 for a name the relay does not know; the error does not list the known ones).
``?label=TEXT``: the left part (default "status", or NAME with ``activity``); control and
format characters are dropped, whitespace collapsed, at most ``LABEL_MAX`` characters left
(400 past that); an empty label draws the message alone.

Caching: shields caches for ``cacheSeconds`` (``SHIELDS_CACHE_SECONDS``, its minimum: lower
values are ignored), so a badge through shields is up to 5 minutes behind. The answers carry
``Cache-Control: no-cache`` and an ``ETag`` (304 for a matching ``If-None-Match``): GitHub's
image proxy (camo) and browsers revalidate each time instead of keeping an old state.

The SVG's width comes from a table of DejaVu Sans advance widths at 11 px (what Debian and
most Linux browsers have; Verdana, shields' font, is within a few percent): approximate for
other fonts, so each text also carries ``textLength`` and a renderer with another font fits
it to the computed width. Text is XML-escaped; the response forbids every script and
subresource (``Content-Security-Policy: default-src 'none'; sandbox``) and sniffing.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from relay.http.api import error
from relay.state.stability import Snapshot, Stability, State

BADGE = "/api/system-status/badge"
BADGE_SVG = "/api/system-status/badge.svg"
BADGES = (BADGE, BADGE_SVG)

DEFAULT_LABEL = "status"
LABEL_MAX = 40
SHIELDS_CACHE_SECONDS = 300

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Tone:
    """A message and its colours: shields' named colour, and the SVG's own fill (each with
    white 11 px text at a contrast of 4.5:1 or more)."""

    message: str
    shields: str
    fill: str


STABLE = Tone("stable", "brightgreen", "#15803d")
PROCESSING = Tone("processing", "yellow", "#b45309")
STALLED = Tone("processing stalled", "red", "#b91c1c")
OVERDUE = Tone("processing overdue", "orange", "#c2410c")
UNKNOWN = Tone("unknown", "lightgrey", "#6b7280")
LABEL_FILL = "#374151"


@dataclass(frozen=True, slots=True)
class Badge:
    label: str
    tone: Tone


def badge_of(snapshot: Snapshot, label: str, activity: str | None = None) -> Badge:
    """The badge for the whole system, or for ``activity`` (which must be one of the
    snapshot's: :func:`known_activity`). Stalled outranks overdue, as on the status page."""
    if snapshot.state is State.UNKNOWN:
        return Badge(label, UNKNOWN)
    if activity is None:
        active: bool | None = snapshot.state is State.PROCESSING
    else:
        active = dict(snapshot.activities).get(activity)
    if active is None:
        return Badge(label, UNKNOWN)
    if not active:
        return Badge(label, STABLE)
    if any(activity in (None, s.activity) for s in snapshot.stalled):
        return Badge(label, STALLED)
    if any(activity in (None, s.activity) for s in snapshot.overdue):
        return Badge(label, OVERDUE)
    return Badge(label, PROCESSING)


def known_activity(snapshot: Snapshot, name: str) -> bool:
    return any(known == name for known, _active in snapshot.activities)


def clean_label(raw: str) -> str:
    """Control and format characters (newlines, bidi overrides, zero-width ones) dropped,
    whitespace runs made one space; ``ValueError`` past ``LABEL_MAX`` characters."""
    kept = "".join(c for c in raw if unicodedata.category(c)[0] != "C" or c.isspace())
    label = " ".join(kept.split())
    if len(label) > LABEL_MAX:
        raise ValueError(f"label: at most {LABEL_MAX} characters")
    return label


def shields_json(badge: Badge) -> dict[str, Any]:
    return {
        "schemaVersion": 1,
        "label": badge.label,
        "message": badge.tone.message,
        "color": badge.tone.shields,
        "cacheSeconds": SHIELDS_CACHE_SECONDS,
    }


# DejaVu Sans advance widths at 11 px, in px, for " " (32) to "~" (126): the font's hmtx
# advances over its 2048 units per em, times 11, to 0.1 px.
_ASCII_WIDTHS = (
    (3.5, 4.4, 5.1, 9.2, 7.0, 10.5, 8.6, 3.0, 4.3, 4.3, 5.5, 9.2, 3.5, 4.0, 3.5, 3.7)
    + (7.0,) * 10
    + (3.7, 3.7, 9.2, 9.2, 9.2, 5.8, 11.0)
    + (7.5, 7.5, 7.7, 8.5, 7.0, 6.3, 8.5, 8.3, 3.2, 3.2, 7.2, 6.1, 9.5, 8.2, 8.7, 6.6)
    + (8.7, 7.6, 7.0, 6.7, 8.1, 7.5, 10.9, 7.5, 6.7, 7.5, 4.3, 3.7, 4.3, 9.2, 5.5, 5.5)
    + (6.7, 7.0, 6.0, 7.0, 6.8, 3.9, 7.0, 7.0, 3.1, 3.1, 6.4, 3.1, 10.7, 7.0, 6.7, 7.0)
    + (7.0, 4.5, 5.7, 4.3, 7.0, 6.5, 9.0, 6.5, 6.5, 5.8, 7.0, 3.7, 7.0, 9.2)
)
_WIDE = 11.0  # East Asian wide and full-width characters: one em
_OTHER = 7.0  # anything else outside the table: about an average letter
FONT_SIZE = 11
HEIGHT = 20
PADDING = 6  # each side of a text
FONT = "DejaVu Sans,Verdana,Geneva,sans-serif"


def text_width(text: str) -> float:
    """Approximate: the table's width of each character (an accented letter as its base
    letter), one em for wide characters, an average letter for the rest."""
    return round(sum(_char_width(c) for c in text), 1)


def _char_width(char: str) -> float:
    base = unicodedata.normalize("NFD", char)[0]
    if " " <= base <= "~":
        return _ASCII_WIDTHS[ord(base) - 32]
    if unicodedata.east_asian_width(char) in ("W", "F"):
        return _WIDE
    if unicodedata.combining(char):
        return 0.0
    return _OTHER


def render_svg(badge: Badge) -> str:
    label, message = badge.label, badge.tone.message
    message_text = text_width(message)
    message_width = round(message_text + 2 * PADDING)
    label_text = text_width(label) if label else 0.0
    label_width = round(label_text + 2 * PADDING) if label else 0
    width = label_width + message_width
    title = f"{label}: {message}" if label else message
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" '
        f'viewBox="0 0 {width} {HEIGHT}" role="img" aria-label={quoteattr(title)}>',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{HEIGHT}" rx="3" fill="{badge.tone.fill}"/>',
    ]
    if label:
        # The label's rounded rectangle, its right corners squared off where the message begins.
        parts.append(f'<rect width="{label_width}" height="{HEIGHT}" rx="3" fill="{LABEL_FILL}"/>')
        parts.append(
            f'<rect x="{label_width - 4}" width="4" height="{HEIGHT}" fill="{LABEL_FILL}"/>'
        )
    parts.append(
        f'<g fill="#fff" text-anchor="middle" font-family="{FONT}" font-size="{FONT_SIZE}">'
    )
    if label:
        parts.append(_text(label, label_width / 2, label_text))
    parts.append(_text(message, label_width + message_width / 2, message_text))
    parts.append("</g></svg>")
    return "".join(parts)


def _text(text: str, middle: float, length: float) -> str:
    return (
        f'<text x="{middle:g}" y="14" textLength="{length:g}" lengthAdjust="spacingAndGlyphs">'
        f"{escape(text)}</text>"
    )


SVG_HEADERS = {
    # Opened on its own, the SVG is a document: no script, no fetch, no form, no plugin.
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "X-Content-Type-Options": "nosniff",
}


class Badges:
    """The two badge routes, over the relay's current :class:`Snapshot`."""

    def __init__(self, stability: Stability) -> None:
        self._stability = stability

    async def json(self, request: web.Request) -> web.StreamResponse:
        badge = self._badge(request)
        if isinstance(badge, web.Response):
            return badge
        body = json.dumps(shields_json(badge), separators=(",", ":")).encode()
        return _revalidated(request, body, "application/json", {})

    async def svg(self, request: web.Request) -> web.StreamResponse:
        badge = self._badge(request)
        if isinstance(badge, web.Response):
            return badge
        body = render_svg(badge).encode()
        return _revalidated(request, body, "image/svg+xml", SVG_HEADERS)

    def _badge(self, request: web.Request) -> Badge | web.Response:
        snapshot = self._stability.current
        activity = request.query.get("activity")
        if activity is not None and not known_activity(snapshot, activity):
            return error(404, "activity: no such activity")
        try:
            label = clean_label(request.query.get("label", activity or DEFAULT_LABEL))
        except ValueError as failure:
            return error(400, str(failure))
        return badge_of(snapshot, label, activity)


def _revalidated(
    request: web.Request, body: bytes, content_type: str, headers: dict[str, str]
) -> web.Response:
    """``no-cache`` with an ``ETag`` of the body: a cache (camo, a browser) asks each time and
    gets a 304 while the badge is the same."""
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    common = {**headers, "Cache-Control": "no-cache", "ETag": etag}
    presented = request.headers.get("If-None-Match", "")
    if etag in (tag.strip() for tag in presented.split(",")) or presented.strip() == "*":
        return web.Response(status=304, headers=common)
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=common)
