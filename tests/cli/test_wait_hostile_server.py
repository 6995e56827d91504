"""``stability-relay wait`` against a hostile server: the real CLI in its own process, asking a
small aiohttp server on loopback that answers what no relay would.

The CLI must never print a traceback, never pass a server's escape sequences to the terminal,
and never say "met" (exit 0) on an answer that is not a relay's "met" (exit 3 then).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import unicodedata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.cli.wait import (
    EXIT_INVALID,
    EXIT_MET,
    EXIT_USAGE,
    MAX_TEXT,
    Answer,
    WaitRequest,
    _progress,
    printable,
)
from tests.support import serve_on_loopback

REPO = Path(__file__).resolve().parents[2]
MET = (200, {"result": "met", "state": "stable", "running": [], "waited_s": 1.0})
# What a terminal would act on: ESC sequences (CSI, OSC with BEL), C1's CSI, a bidi override.
HOSTILE_TEXT = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\x9b1m\u202ecod.exe\r\n\ttab\x00"

Reply = tuple[int, Any]  # a status and a JSON-able body, or bytes sent as they are


@asynccontextmanager
async def hostile_relay(*replies: Reply) -> AsyncIterator[tuple[str, list[str]]]:
    """Answers ``/api/system-status/wait`` with ``replies`` in order, then the last again;
    yields its URL and the query strings it was asked with."""
    script = list(replies)
    asked: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        asked.append(request.query_string)
        status, body = script.pop(0) if len(script) > 1 else script[0]
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return web.Response(status=status, body=raw, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/system-status/wait", answer)
    async with serve_on_loopback(app, access_log=None) as port:
        yield f"http://127.0.0.1:{port}", asked


async def run_wait(url: str, *args: str) -> tuple[int, str]:
    """The real command, as CI runs it: its exit code and what it printed (stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "wait",
        "--url",
        url,
        "--timeout",
        "20s",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "RELAY_TOKEN"},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert out == b""
    assert process.returncode is not None
    return process.returncode, err.decode("utf-8", "surrogateescape")


def assert_terminal_safe(text: str) -> None:
    """Only printable characters and line ends: nothing a terminal would act on."""
    unsafe = [
        ch for ch in text if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")
    ]
    assert not unsafe, (unsafe, text)
    assert "Traceback" not in text


BAD_HELD_S = ["12 s", "\u0663", [1], {"s": 1}, True, -5, 1e300, None]
BAD_RUNNING = [[1, 2], [None], [{"label": "x"}], ["ok", ["nested"]], "a string", {"a": "b"}, 7]


async def test_a_bad_held_s_is_taken_as_absent_and_the_wait_goes_on() -> None:
    """Each round a 408 whose held_s is not a finite number of seconds, then met."""
    rounds: list[Reply] = [
        (408, {"result": "timeout", "state": "stable", "running": [], "held_s": held_s})
        for held_s in BAD_HELD_S
    ]
    rounds.append((408, b'{"result": "timeout", "state": "stable", "held_s": 1e999}'))
    async with hostile_relay(*rounds, MET) as (url, asked):
        code, err = await run_wait(url, "--stable-for", "5s")
    assert code == EXIT_MET, err
    assert_terminal_safe(err)
    assert err.splitlines()[-1] == "met: stable after 1 s"
    # Absent: every next round asks from zero again, never from what the server claimed.
    assert len(asked) == len(rounds) + 1
    assert all("held=0.000s" in query for query in asked)


async def test_running_that_is_not_a_list_of_strings_is_taken_as_absent() -> None:
    rounds: list[Reply] = [
        (408, {"result": "timeout", "state": "processing", "running": running, "held_s": 0})
        for running in BAD_RUNNING
    ]
    async with hostile_relay(*rounds, MET) as (url, _asked):
        code, err = await run_wait(url)
    assert code == EXIT_MET, err
    assert_terminal_safe(err)
    assert err.splitlines()[:-1] == ["still processing; waiting"] * len(BAD_RUNNING)


async def test_a_good_held_s_is_carried_but_never_past_stable_for() -> None:
    rounds: list[Reply] = [
        (408, {"result": "timeout", "state": "stable", "held_s": 2.5}),
        (408, {"result": "timeout", "state": "stable", "held_s": 999}),
    ]
    async with hostile_relay(*rounds, MET) as (url, asked):
        code, err = await run_wait(url, "--stable-for", "5s")
    assert code == EXIT_MET, err
    assert ["held=2.500s" in asked[1], "held=5.000s" in asked[2]] == [True, True]


async def test_the_servers_text_reaches_the_terminal_escaped() -> None:
    processing = {
        "result": "timeout",
        "state": "processing",
        "running": [HOSTILE_TEXT, "Importing data"],
        "held_s": 0,
        "eta": {"low_s": 60, "high_s": 120, "source": HOSTILE_TEXT},
    }
    met = {**MET[1], "running": [HOSTILE_TEXT]}
    async with hostile_relay((408, processing), (200, met)) as (url, _asked):
        code, err = await run_wait(url)
    assert code == EXIT_MET, err
    assert_terminal_safe(err)
    assert "\\x1b]0;owned\\x07\\x1b[2J" in err
    assert "\\u202ecod.exe\\r\\n\\ttab\\x00" in err
    assert "Importing data" in err


async def test_a_refusal_prints_the_servers_reason_escaped_and_exits_2() -> None:
    async with hostile_relay((403, {"error": HOSTILE_TEXT})) as (url, _asked):
        code, err = await run_wait(url)
    assert code == EXIT_USAGE, err
    assert_terminal_safe(err)
    assert err.startswith("refused (403): \\x1b]0;owned")


@pytest.mark.parametrize(
    "body",
    [
        {"result": "timeout", "state": "stable"},
        b"<html>It works!</html>",
        b"[" * 100_000,  # nested past the parser's recursion limit
        b'"met"',
        b"\xff\xfe",
    ],
)
async def test_a_200_that_is_not_a_relays_met_exits_3_with_one_line(body: Any) -> None:
    async with hostile_relay((200, body)) as (url, _asked):
        code, err = await run_wait(url)
    assert code == EXIT_INVALID, err
    assert_terminal_safe(err)
    assert err.count("\n") == 1 and err.startswith("error: not an answer of the relay's")


async def test_other_unreadable_answers_are_retried_until_a_relay_answers() -> None:
    async with hostile_relay((502, b"<html>bad gateway</html>"), (503, b"[" * 100_000), MET) as (
        url,
        asked,
    ):
        code, err = await run_wait(url)
    assert code == EXIT_MET, err
    assert_terminal_safe(err)
    assert len(asked) == 3
    assert err.count("no answer from the relay") == 2


# In-process properties: any JSON in any field reads and prints without an error, and what is
# printed is terminal-safe.

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from([HOSTILE_TEXT, "\ud800", "stable", "processing", "unknown", "met"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=12,
)
fields = ("result", "state", "running", "held_s", "waited_s", "eta", "error")


@settings(max_examples=500, deadline=None)
@given(
    body=st.fixed_dictionaries({}, optional=dict.fromkeys(fields, json_values)),
    eta=st.fixed_dictionaries(
        {}, optional=dict.fromkeys(("low_s", "high_s", "source"), json_values)
    ),
    met=st.booleans(),
)
def test_any_answer_reads_and_prints_terminal_safe(
    body: dict[str, Any], eta: dict[str, Any], met: bool
) -> None:
    if eta:
        body = {**body, "eta": eta}
    answer = Answer.read(body)
    request = WaitRequest("http://relay", "stable", 0.0, 60.0)
    line = _progress(answer, request, met=met)
    assert_terminal_safe(line)
    assert line.encode("utf-8")  # no lone surrogate left to fail on a strict stream


@settings(max_examples=500, deadline=None)
@given(text=st.text())
def test_printable_escapes_every_control_and_bounds_the_length(text: str) -> None:
    shown = printable(text)
    assert_terminal_safe(shown.replace("\n", "\\n"))
    assert "\n" not in shown
    assert len(shown) <= MAX_TEXT * len(ascii("\U0010ffff")) + 3
