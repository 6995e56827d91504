"""The README badges over real HTTP: a relay on a real PostgreSQL, its shields.io endpoint JSON
and its own SVG in every state, per activity, behind auth or public, and hostile labels."""

from __future__ import annotations

import json
import socket
import time
import xml.etree.ElementTree as ET
from typing import Any

import aiohttp

from relay.app import Relay
from relay.config import Config
from relay.http.badge import LABEL_MAX, text_width
from relay.state.stability import State
from tests.support import base_url, eventually, execute, relay_config, running_relay, sample

SVG = "{http://www.w3.org/2000/svg}"
START = "INSERT INTO public.import_job (slug, state) VALUES ('badge', 'processing_data')"
FINISH = "UPDATE public.import_job SET state = 'finished' WHERE slug = 'badge'"
START_ANALYTICS = (
    "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'processing')"
)
TOKEN = "static-token-0123456789"
# The signals reader reads once when work begins, then not for an hour: the tests set the
# signals on the relay's Stability themselves, as tests/state/test_signal_waits.py does.
QUIET = {"interval": "1h", "read_timeout": "5s"}


def config(dsn: str, **sections: Any) -> Config:
    return relay_config(dsn, signals=QUIET, **sections)


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def svg_texts(self) -> list[str]:
        root = ET.fromstring(self.body)
        assert root.tag == f"{SVG}svg"
        return [text.text or "" for text in root.iter(f"{SVG}text")]


async def get(relay: Relay, path: str, **kwargs: Any) -> Answer:
    async with (
        aiohttp.ClientSession() as http,
        http.get(base_url(relay) + path, **kwargs) as response,
    ):
        return Answer(response.status, response.headers, await response.read())


async def badges(relay: Relay, **params: str) -> tuple[dict[str, Any], list[str]]:
    """The endpoint JSON and the SVG's texts for the same query."""
    shields = await get(relay, "/api/system-status/badge", params=params)
    drawn = await get(relay, "/api/system-status/badge.svg", params=params)
    assert (shields.status, drawn.status) == (200, 200), (shields.body, drawn.body)
    return shields.json(), drawn.svg_texts()


def endpoint(message: str, color: str, label: str = "status") -> dict[str, Any]:
    # Exactly shields' schema: it refuses unknown keys and an empty message.
    return {
        "schemaVersion": 1,
        "label": label,
        "message": message,
        "color": color,
        "cacheSeconds": 300,
    }


async def busy(relay: Relay, dsn: str) -> None:
    await execute(dsn, START)
    await eventually(lambda: relay.stability.current.state is State.PROCESSING)
    await eventually(lambda: sample(relay, "relay_signals_reads_total", outcome="ok") >= 1)


async def test_each_state_reads_the_same_in_json_and_svg(db_dsn: str) -> None:
    async with running_relay(config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        assert await badges(relay) == (endpoint("stable", "brightgreen"), ["status", "stable"])

        await busy(relay, db_dsn)
        assert await badges(relay) == (
            endpoint("processing", "yellow"),
            ["status", "processing"],
        )
        began = time.time() - 600
        relay.stability.update_signals({}, {"importing": (began, 60.0)})
        shields, texts = await badges(relay)
        assert shields == endpoint("processing overdue", "orange")
        assert texts == ["status", "processing overdue"]
        relay.stability.update_signals({"importing": time.time()}, {"importing": (began, 60.0)})
        shields, texts = await badges(relay)  # stalled outranks overdue, as on the page
        assert shields == endpoint("processing stalled", "red")
        assert texts == ["status", "processing stalled"]

        await execute(db_dsn, FINISH)
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        assert await badges(relay) == (endpoint("stable", "brightgreen"), ["status", "stable"])


async def test_a_relay_without_its_database_says_unknown(db_dsn: str) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    dsn = f"postgresql://nobody@127.0.0.1:{port}/nothing"
    async with running_relay(config(dsn)) as relay:
        assert relay.stability.current.state is State.UNKNOWN
        assert await badges(relay) == (endpoint("unknown", "lightgrey"), ["status", "unknown"])
        assert await badges(relay, activity="importing") == (
            endpoint("unknown", "lightgrey", "importing"),
            ["importing", "unknown"],
        )


async def test_activity_gives_that_activitys_state_and_signals(db_dsn: str) -> None:
    async with running_relay(config(db_dsn)) as relay:
        await busy(relay, db_dsn)
        assert await badges(relay, activity="importing") == (
            endpoint("processing", "yellow", "importing"),
            ["importing", "processing"],
        )
        assert await badges(relay, activity="analytics") == (
            endpoint("stable", "brightgreen", "analytics"),
            ["analytics", "stable"],
        )
        await execute(db_dsn, START_ANALYTICS)
        await eventually(lambda: dict(relay.stability.current.activities)["analytics"] is True)
        relay.stability.update_signals({"importing": time.time()}, {})
        shields, _texts = await badges(relay, activity="analytics", label="derive")
        assert shields == endpoint("processing", "yellow", "derive")
        shields, _texts = await badges(relay, activity="importing")
        assert shields == endpoint("processing stalled", "red", "importing")


async def test_an_unknown_activity_is_a_404_json_error_on_both(db_dsn: str) -> None:
    async with running_relay(config(db_dsn)) as relay:
        for path in ("/api/system-status/badge", "/api/system-status/badge.svg"):
            answer = await get(relay, path, params={"activity": "nope"})
            assert answer.status == 404, path
            assert answer.headers["Content-Type"].startswith("application/json")
            assert answer.headers["Cache-Control"] == "no-store"
            error = answer.json()["error"]
            assert "activity" in error
            assert "importing" not in error, "a public badge must not list the activities"


async def test_svg_headers_forbid_scripts_and_sniffing_and_revalidate(db_dsn: str) -> None:
    async with running_relay(config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        answer = await get(relay, "/api/system-status/badge.svg")
        assert answer.headers["Content-Type"].startswith("image/svg+xml")
        csp = answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "sandbox" in csp
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Cache-Control"] == "no-cache"
        etag = answer.headers["ETag"]
        again = await get(relay, "/api/system-status/badge.svg", headers={"If-None-Match": etag})
        assert (again.status, again.body) == (304, b"")
        assert again.headers["ETag"] == etag

        await busy(relay, db_dsn)
        moved = await get(relay, "/api/system-status/badge.svg", headers={"If-None-Match": etag})
        assert moved.status == 200
        assert moved.headers["ETag"] != etag
        assert moved.svg_texts() == ["status", "processing"]

        shields = await get(relay, "/api/system-status/badge")
        assert shields.headers["Content-Type"].startswith("application/json")
        assert shields.headers["Cache-Control"] == "no-cache"
        assert "ETag" in shields.headers


async def test_the_width_follows_the_text(db_dsn: str) -> None:
    async with running_relay(config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        sizes = {}
        for label in ("i" * 20, "W" * 20, ""):
            answer = await get(relay, "/api/system-status/badge.svg", params={"label": label})
            root = ET.fromstring(answer.body)
            rects = list(root.iter(f"{SVG}rect"))
            width = int(root.attrib["width"])
            assert rects[0].attrib["width"] == str(width)  # the background spans the badge
            expected = round(text_width("stable") + 12)
            if label:
                expected += round(text_width(label) + 12)
                assert int(rects[1].attrib["width"]) == round(text_width(label) + 12)
            else:
                assert len(rects) == 1 and answer.svg_texts() == ["stable"]
            assert width == expected
            sizes[label] = width
        assert sizes[""] < sizes["i" * 20] < sizes["W" * 20]


async def test_a_hostile_label_is_escaped_cleaned_and_bounded(db_dsn: str) -> None:
    async with running_relay(config(db_dsn)) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        hostile = "<script>&\"x'</script>"
        shields, texts = await badges(relay, label=hostile)
        assert shields["label"] == hostile
        assert texts == [hostile, "stable"]
        raw = await get(relay, "/api/system-status/badge.svg", params={"label": hostile})
        assert b"<script" not in raw.body
        assert b"&lt;script&gt;&amp;" in raw.body
        root = ET.fromstring(raw.body)
        assert root.attrib["aria-label"] == f"{hostile}: stable"

        # Newlines, bidi overrides and zero-width characters go; whitespace runs become one.
        shields, texts = await badges(relay, label="  build\n\t\u202estatus\u200b  ")
        assert shields["label"] == "build status"
        assert texts[0] == "build status"

        too_long = await get(relay, "/api/system-status/badge", params={"label": "x" * 41})
        assert too_long.status == 400
        assert too_long.json() == {"error": f"label: at most {LABEL_MAX} characters"}
        at_most, _texts = await badges(relay, label="x" * LABEL_MAX)
        assert at_most["label"] == "x" * LABEL_MAX


async def test_badges_follow_the_snapshots_auth_unless_public(db_dsn: str) -> None:
    auth = {"bearer_tokens": [TOKEN]}
    cors = {"allow_origins": ["https://app.example"]}
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with running_relay(config(db_dsn, auth=auth, cors=cors)) as relay:
        for path in (
            "/api/system-status",
            "/api/system-status/badge",
            "/api/system-status/badge.svg",
        ):
            refused = await get(relay, path)
            assert refused.status == 401, path
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            allowed = await get(relay, path, headers={**bearer, "Origin": "https://app.example"})
            assert allowed.status == 200, path
            assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
            other = await get(relay, path, headers={**bearer, "Origin": "https://evil.example"})
            assert "Access-Control-Allow-Origin" not in other.headers

    public = {**auth, "public_badge": True}
    async with running_relay(config(db_dsn, auth=public, cors=cors)) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        assert (await get(relay, "/api/system-status")).status == 401
        assert (await get(relay, "/api/system-status/details")).status == 401
        assert (await get(relay, "/api/system-status/history")).status == 401
        shields, texts = await badges(relay)
        assert shields == endpoint("stable", "brightgreen")
        assert texts == ["status", "stable"]
        listed = await get(
            relay, "/api/system-status/badge", headers={"Origin": "https://app.example"}
        )
        assert listed.headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_a_reload_that_turns_public_badge_off_makes_the_badges_private(db_dsn: str) -> None:
    auth = {"bearer_tokens": [TOKEN]}
    async with running_relay(config(db_dsn, auth={**auth, "public_badge": True})) as relay:
        assert (await get(relay, "/api/system-status/badge.svg")).status == 200
        relay.reload(config(db_dsn, auth=auth))
        for path in ("/api/system-status/badge", "/api/system-status/badge.svg"):
            assert (await get(relay, path)).status == 401, path
        relay.reload(config(db_dsn, auth={**auth, "public_badge": True}))
        assert (await get(relay, "/api/system-status/badge")).status == 200
