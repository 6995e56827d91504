"""The JSON routes: the snapshot (with ``?fresh=1`` and ``?expect=``), the details, the
indicators, the long poll, the history, health and readiness; and :func:`error`, the one JSON
error every route answers (``{"error": message}``, ``Cache-Control: no-store``).

Each route parses its query here, asks the state (``relay/state/``) for values, and turns
them, or the exceptions it raises, into a response: a bad query is a ``ValueError`` whose
message is the 400's, an unreachable database a ``DatabaseUnavailable``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from relay.config import parse_duration
from relay.errors import DatabaseUnavailable
from relay.logs import get_logger
from relay.source.listener import POOLER_FIX, STANDBY_FIX, Listener
from relay.state.details import Details
from relay.state.history import History
from relay.state.stability import Stability
from relay.state.waits import SIGNALS, TooManyWaiters, Wait, Waits

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = get_logger("relay.http.api")

NO_STORE = {"Cache-Control": "no-store"}
# The client's address by the trusted-proxy rule (set by http/access), for /wait's share.
CLIENT_ADDRESS = web.RequestKey[str]("relay.client_address")
RETRY_AFTER = "5"
# What a route says when its read cannot reach the database (its log line says why).
DETAILS_UNAVAILABLE = "status details are unavailable: the database cannot be reached"
HISTORY_UNAVAILABLE = "the history is unavailable: the database cannot be reached"

# What /readyz says of a refused server: its kind and the fix, never the server's own words
# (they name the user, host and database; the log line ``database_refused`` has them).
REFUSALS = {
    "pooler": (
        "the server reached is a transaction or statement pooler: LISTEN cannot work through it",
        POOLER_FIX,
    ),
    "standby": (
        "the server reached is a standby or read-only: LISTEN needs the primary",
        STANDBY_FIX,
    ),
}


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """Every JSON route's error: ``{"error": message}``, never cached."""
    return no_store(status, {"error": message}, headers)


def no_store(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON answer that no cache keeps."""
    return web.json_response(dict(body), status=status, headers={**NO_STORE, **(headers or {})})


def unavailable(message: str) -> web.Response:
    """503 with ``Retry-After``: the database cannot be reached now."""
    return error(503, message, {"Retry-After": RETRY_AFTER})


def _raw(body: bytes) -> web.Response:
    """A JSON body the state encoded itself (once, however many requests it answers)."""
    return web.Response(body=body, content_type="application/json", headers=NO_STORE)


def snapshot(stability: Stability, listener: Listener, waits: Waits) -> Handler:
    """``GET /api/system-status``; ``fresh=1`` reads after the request arrived, ``expect=``
    answers 503 unless the state is the one expected."""

    async def handle(request: web.Request) -> web.Response:
        body = stability.current.as_json()
        body["database_connected"] = listener.connected.is_set()
        if not request.query:
            return web.json_response(body, headers=NO_STORE)
        fresh = request.query.get("fresh", "0") not in ("0", "", "false")
        expect = request.query.get("expect")
        if expect not in (None, "stable", "processing"):
            return error(400, "expect: stable or processing")
        if fresh:
            try:
                body.update(await waits.read_fresh())
            except DatabaseUnavailable:
                return no_store(
                    503, {**body, "fresh": False, "error": "the database is unavailable"}
                )
            body["fresh"] = True
        return no_store(200 if expect is None or body["state"] == expect else 503, body)

    return handle


def details(source: Details) -> Handler:
    """``GET /api/system-status/details``."""

    async def handle(_request: web.Request) -> web.Response:
        return await _details_answer(source.fetch())

    return handle


def indicators(source: Details) -> Handler:
    """``GET /api/system-status/indicators``: read after the request arrived (shared by the
    requests in line: after a feed's resync, every client re-reads at once)."""

    async def handle(_request: web.Request) -> web.Response:
        return await _details_answer(source.read_indicators())

    return handle


async def _details_answer(body_of: Awaitable[bytes]) -> web.Response:
    try:
        body = await body_of
    except DatabaseUnavailable as failure:
        log.warning("details_unavailable", reason=str(failure))
        return unavailable(DETAILS_UNAVAILABLE)
    return _raw(body)


# The status of each way a wait ends; a timeout's is the caller's (``timeout_status``).
WAIT_STATUS = {"met": 200, "unknown": 503, "stalled": 409, "overdue": 409}


def wait(waits: Waits) -> Handler:
    """``GET /api/system-status/wait`` (relay/state/waits.py says what each answer means)."""

    async def handle(request: web.Request) -> web.Response:
        try:
            asked = parse_wait(request.query, waits.max_timeout, waits.activities())
            timeout_status = _timeout_status(request.query)
        except ValueError as failure:
            return error(400, str(failure))
        try:
            result, answer = await waits.wait(asked, request.get(CLIENT_ADDRESS))
        except TooManyWaiters as refusal:
            return error(429, str(refusal), {"Retry-After": RETRY_AFTER})
        return no_store(WAIT_STATUS.get(result, timeout_status), answer)

    return handle


def parse_wait(query: Mapping[str, str], max_timeout: float, known: list[str]) -> Wait:
    until = query.get("until", "stable")
    if until not in ("stable", "processing"):
        raise ValueError("until: stable or processing")
    stable_for = _duration(query, "stable_for", 0.0)
    timeout = _duration(query, "timeout", 600.0)
    if timeout > max_timeout:
        raise ValueError(f"timeout: at most {max_timeout:g}s")
    if stable_for > max_timeout:
        raise ValueError(f"stable_for: at most {max_timeout:g}s")
    # A round may be shorter than stable_for: its 408 says how long the condition held
    # (held_s), and the next round starts from there (held).
    held = min(_duration(query, "held", 0.0), stable_for)
    activity = query.get("activity")
    if activity is not None and activity not in known:
        raise ValueError(f"activity: one of {', '.join(known)}")
    end_on = _end_on(query)  # checked whatever `until` is; only a wait for stable ends early
    return Wait(
        "stable" if until == "stable" else "processing",
        stable_for,
        timeout,
        activity,
        held,
        end_on if until == "stable" else frozenset(),
    )


def _timeout_status(query: Mapping[str, str]) -> int:
    """``timeout_status=408`` (the default) or ``200``: the status of a round that timed out."""
    text = query.get("timeout_status", "408").strip()
    if text not in ("408", "200"):
        raise ValueError("timeout_status: 408 or 200")
    return int(text)


def _end_on(query: Mapping[str, str]) -> frozenset[str]:
    """``end_on=stalled,overdue`` (the default), ``stalled``, ``overdue`` or ``none``."""
    text = query.get("end_on", ",".join(SIGNALS)).strip()
    if text == "none":
        return frozenset()
    kinds = frozenset(part.strip() for part in text.split(","))
    if not kinds or not kinds <= set(SIGNALS):
        raise ValueError("end_on: stalled, overdue, both (comma-separated) or none")
    return kinds


def _duration(query: Mapping[str, str], key: str, default: float) -> float:
    if key not in query:
        return default
    try:
        value = parse_duration(query[key])
    except ValueError as failure:
        raise ValueError(f"{key}: {failure}") from None
    if not math.isfinite(value):
        raise ValueError(f"{key}: must be finite")
    return value


def history(source: History) -> Handler:
    """``GET /api/system-status/history?since=24h|<ISO time>&activity=NAME&limit=100``."""

    async def handle(request: web.Request) -> web.Response:
        try:
            since, activity, limit = parse_history(request.query, source.activities)
        except ValueError as failure:
            return error(400, str(failure))
        try:
            periods, summary = await source.read(since, activity, limit)
        except DatabaseUnavailable:
            return unavailable(HISTORY_UNAVAILABLE)
        body: dict[str, Any] = {"activity": activity, "since": since.isoformat()}
        body.update(summary=summary, periods=periods)
        return web.json_response(body, headers=NO_STORE)

    return handle


def parse_history(query: Mapping[str, str], known: list[str]) -> tuple[datetime, str | None, int]:
    since = _since(query.get("since", "24h"))
    activity = query.get("activity")
    if activity is not None and activity not in known:
        raise ValueError(f"activity: one of {', '.join(known)}")
    raw = query.get("limit", "100")
    # ASCII digits only: int() would also take "+100", " 1_00 " and other scripts' digits.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4):
        raise ValueError("limit: a whole number")
    limit = int(raw)
    if not 1 <= limit <= 1000:
        raise ValueError("limit: 1 to 1000")
    return since, activity, limit


MAX_SINCE = 3650 * 86400.0


def _since(text: str) -> datetime:
    """``24h`` (that long ago, at most ten years) or an ISO 8601 time."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        pass
    else:
        if not seconds <= MAX_SINCE:
            raise ValueError("since: at most 3650d ago")
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError('since: a duration like "24h" or an ISO 8601 time') from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def readyz(stability: Stability, listener: Listener) -> Handler:
    async def handle(_request: web.Request) -> web.Response:
        known = stability.current.stable is not None
        ready = known and listener.connected.is_set()
        answer: dict[str, object] = {
            "ready": ready,
            "database_connected": listener.connected.is_set(),
        }
        kind = listener.refusal_kind
        if kind is not None:  # a pooler or a standby: what it is and the fix, no more
            what, fix = REFUSALS.get(kind, (f"the server reached is refused ({kind})", ""))
            answer["refused"] = kind
            answer["reason"] = f"{what}; fix: {fix}" if fix else what
            answer["fix"] = fix or "see the relay's log line database_refused"
        return web.json_response(answer, status=200 if ready else 503)

    return handle
