"""``stability-relay wait``: block until the data system is stable (or processing), for CI.

Each round is one long poll of ``/api/system-status/wait`` (which starts with a fresh read, so
nothing committed before it was asked is missed). A relay restart, a proxy cut or a 5xx is
survived by asking again, after a short backoff, until the overall timeout. Exit codes: 0 the
condition was met, 1 timed out, 2 bad usage (or the relay refused the request: 400, 401, 403),
3 the answer was not a relay's (a 200 that is not a JSON object saying ``"result": "met"``:
``--url`` is most likely not the relay's), 4 the work waited for is stalled, 5 it is overdue
(waiting for stable only: the relay answered 409; ``end_on`` chooses which of the two end a
wait, ``none`` waits anyway, as an older relay does).

The server's answer is read, never trusted: the status decides; every other field that is
missing or not of its type (``held_s`` not a finite number, ``running`` not a list of strings,
...) is taken as absent, which only ever makes a wait longer (no ``held_s``: the condition's
clock starts over). Text from the server is printed with its control characters escaped
(C0, DEL, C1, so no escape sequence reaches the terminal) and cut to a bounded length.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlencode

import aiohttp

from relay.state.eta import eta_text, human_duration

EXIT_MET, EXIT_TIMEOUT, EXIT_USAGE, EXIT_INVALID = 0, 1, 2, 3
EXIT_STALLED, EXIT_OVERDUE = 4, 5
END_ON = ("stalled", "overdue")
EXIT_CODES_HELP = (
    "exit codes: 0 met, 1 timed out, 2 bad usage or refused, 3 not a relay's answer, "
    "4 the work is stalled, 5 the work is overdue (4 and 5 only while waiting for stable, "
    "see --end-on)"
)
END_ON_HELP = (
    "end the wait at once, instead of waiting out --timeout, when the work waited for is "
    '"stalled" (its activity\'s stalled condition holds), "overdue" (busy past its bound), '
    'both (the default: "stalled,overdue"), or "none" to keep waiting anyway'
)
ROUND = 60.0  # at most this long per request: proxies cut idle requests
RETRY = (0.5, 1.0, 2.0, 4.0)
# An answer longer than this is not read further (a relay's is well under 64 KiB).
MAX_ANSWER_BYTES = 1 << 20
# At most this many characters of one string from the server, and this many running labels.
MAX_TEXT = 200
MAX_LABELS = 20
# A duration the server gives (held_s, waited_s, an estimate) is read up to this (10 years).
MAX_SECONDS = 10 * 365 * 86400.0
STATES = ("stable", "processing", "unknown")
# Unicode categories escaped on output: controls (C0, DEL, C1), format characters (bidi
# overrides among them), line and paragraph separators, and lone surrogates.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


@dataclass(frozen=True)
class WaitRequest:
    url: str
    until: str
    stable_for: float
    timeout: float
    activity: str | None = None
    token: str | None = None
    end_on: str = ",".join(END_ON)


@dataclass(frozen=True)
class Answer:
    """The fields of a ``/wait`` answer the CLI uses, each ``None`` (or empty) unless valid."""

    result: str | None = None
    state: str | None = None
    running: tuple[str, ...] = ()
    held_s: float | None = None
    waited_s: float | None = None
    eta: dict[str, Any] | None = None
    error: str | None = None
    signals: tuple[dict[str, Any], ...] = ()

    @classmethod
    def read(cls, body: dict[str, Any]) -> Answer:
        running = body.get("running")
        if not (isinstance(running, list) and all(isinstance(x, str) for x in running)):
            running = []
        state = body.get("state")
        return cls(
            result=_string(body.get("result")),
            state=state if state in STATES else None,
            running=tuple(running),
            held_s=_seconds(body.get("held_s")),
            waited_s=_seconds(body.get("waited_s")),
            eta=_estimate(body.get("eta")),
            error=_string(body.get("error")),
            signals=_signals(body.get("signals")),
        )


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _seconds(value: Any) -> float | None:
    """A finite, non-negative, bounded number of seconds; ``None`` for anything else."""
    if type(value) not in (int, float) or not math.isfinite(value):
        return None
    return float(value) if 0 <= value <= MAX_SECONDS else None


def _estimate(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    low, high = _seconds(value.get("low_s")), _seconds(value.get("high_s"))
    if low is None or high is None:
        return None
    return {"low_s": low, "high_s": high, "source": _string(value.get("source"))}


def _signals(value: Any) -> tuple[dict[str, Any], ...]:
    """The readable entries of a 409's ``signals`` (kind, label, how long), at most MAX_LABELS."""
    if not isinstance(value, list):
        return ()
    read = []
    for item in value[:MAX_LABELS]:
        if not isinstance(item, dict) or item.get("signal") not in END_ON:
            continue
        label = _string(item.get("label")) or _string(item.get("activity")) or "the work"
        read.append(
            {
                "signal": item["signal"],
                "label": label,
                "for_s": _seconds(item.get("for_s")),
                "bound_s": _seconds(item.get("bound_s")),
            }
        )
    return tuple(read)


def signal_line(signal: dict[str, Any]) -> str:
    """ "Importing data has made no progress for 30 min", "Importing data is overdue: running
    2 h 10 min, expected within 40 min" (the webhooks' words)."""
    label, elapsed, bound = printable(signal["label"]), signal["for_s"], signal["bound_s"]
    if signal["signal"] == "stalled":
        if elapsed is None or elapsed < 1:
            return f"{label} has stopped making progress"
        return f"{label} has made no progress for {human_duration(elapsed)}"
    running = f": running {human_duration(elapsed)}" if elapsed is not None else ""
    within = f", expected within {human_duration(bound)}" if bound else ""
    return f"{label} is overdue{running}{within}"


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` safe for a terminal: control and format characters escaped (``\\x1b``,
    ``\\u202e``), at most ``limit`` characters of it kept."""
    cut = text[:limit]
    shown = "".join(
        ascii(ch)[1:-1] if unicodedata.category(ch) in _ESCAPED_CATEGORIES else ch for ch in cut
    )
    return shown + ("..." if len(text) > limit else "")


async def wait(request: WaitRequest, out: TextIO = sys.stderr) -> int:
    deadline = time.monotonic() + request.timeout
    headers = {"Authorization": f"Bearer {request.token}"} if request.token else {}
    failures = 0
    held = 0.0
    async with aiohttp.ClientSession(headers=headers) as http:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or remaining < request.stable_for - held:
                print(f"timed out after {human_duration(request.timeout)}", file=out)
                return EXIT_TIMEOUT
            # Short rounds (proxies cut idle requests); how long the condition has held is
            # carried from one round to the next.
            span = min(remaining, ROUND)
            try:
                status, body = await _poll(http, request, span, held)
            except (aiohttp.ClientError, TimeoutError) as error:
                failures += 1
                print(f"relay unreachable ({type(error).__name__}); retrying", file=out)
                await _pause(RETRY[min(failures, len(RETRY)) - 1], deadline)
                continue
            if body is None and status == 200:
                print(_invalid("HTTP 200 and not a JSON object"), file=out)
                return EXIT_INVALID
            if body is None:
                failures += 1
                print(f"no answer from the relay (HTTP {status}, not JSON); retrying", file=out)
                await _pause(RETRY[min(failures, len(RETRY)) - 1], deadline)
                continue
            failures = 0
            answer = Answer.read(body)
            # Never more than the condition needs: a larger held_s cannot end a wait sooner.
            held = min(answer.held_s or 0.0, request.stable_for) if status == 408 else 0.0
            if status == 200:
                if answer.result != "met":
                    print(_invalid('HTTP 200 without "result": "met"'), file=out)
                    return EXIT_INVALID
                print(_progress(answer, request, met=True), file=out)
                return EXIT_MET
            if status == 409 and answer.result in END_ON:
                print(f"{answer.result}: not waiting out the timeout", file=out)
                for signal in answer.signals:
                    print(f"  {signal_line(signal)}", file=out)
                return EXIT_STALLED if answer.result == "stalled" else EXIT_OVERDUE
            if status in (400, 401, 403):
                reason = printable(answer.error) if answer.error is not None else "no reason given"
                print(f"refused ({status}): {reason}", file=out)
                return EXIT_USAGE
            print(_progress(answer, request, met=False), file=out)
            if status == 429 or (status >= 500 and answer.result != "unknown"):
                # Too many waiters, or a proxy's error: come back later, not at once.
                pause = 5.0 if status == 429 else RETRY[min(failures + 1, len(RETRY)) - 1]
                await _pause(pause, deadline)
            elif status != 408 and status != 503:
                await _pause(1.0, deadline)


async def _pause(seconds: float, deadline: float) -> None:
    await asyncio.sleep(min(seconds, max(0.0, deadline - time.monotonic())))


def _invalid(what: str) -> str:
    return f"error: not an answer of the relay's ({what}); is --url the relay's base URL?"


async def _poll(
    http: aiohttp.ClientSession, request: WaitRequest, span: float, held: float
) -> tuple[int, dict[str, Any] | None]:
    """The status and the body if it is a JSON object (``None`` if it is not, or too long)."""
    query = {
        "until": request.until,
        "stable_for": f"{request.stable_for:g}s",
        "held": f"{held:.3f}s",
        "timeout": f"{span:.3f}s",
    }
    if request.activity:
        query["activity"] = request.activity
    if request.end_on != ",".join(END_ON):
        query["end_on"] = request.end_on  # the default is the relay's too
    url = f"{request.url.rstrip('/')}/api/system-status/wait?{urlencode(query)}"
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=span + 15)) as response:
        raw = await response.content.read(MAX_ANSWER_BYTES + 1)
        status = response.status
    if len(raw) > MAX_ANSWER_BYTES:
        return status, None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested past the limit
        return status, None
    return status, body if isinstance(body, dict) else None


def _progress(answer: Answer, request: WaitRequest, *, met: bool) -> str:
    labels = [printable(label) for label in answer.running[:MAX_LABELS]]
    if len(answer.running) > MAX_LABELS:
        labels.append(f"{len(answer.running) - MAX_LABELS} more")
    what = f": {', '.join(labels)}" if labels else ""
    state = answer.state
    if met:
        waited = answer.waited_s
        after = f" after {human_duration(waited)}" if waited else ""
        return f"met: {state or request.until}{what}{after}"
    if answer.result == "unknown" or state == "unknown":
        return "state unknown: the relay has no database connection; waiting"
    estimate = answer.eta
    left = ""
    if estimate is not None:
        source = estimate["source"]
        left = f", {eta_text(estimate)}" + (f" (from {printable(source)})" if source else "")
    shown = f"still {state}" if state else f"not yet {request.until}"
    return f"{shown}{what}{left}; waiting"
