"""What receivers get: the Standard Webhooks envelope, the Slack message, the test event."""

from __future__ import annotations

import json

import pytest

from relay.fanout.webhooks.payloads import Transition, encode, encode_test
from relay.state.eta import human_duration
from relay.state.stability import State

SINCE = 1764462301.123  # 2025-11-30T00:25:01.123Z
PROCESSING_ENDED = Transition(State.STABLE, State.PROCESSING, SINCE, 252.4, 42)


def test_json_is_a_standard_webhooks_envelope() -> None:
    body = json.loads(encode("json", PROCESSING_ENDED, None))
    assert body == {
        "type": "system.stability.changed",
        "timestamp": "2025-11-30T00:25:01.123Z",
        "data": {
            "stable": True,
            "state": "stable",
            "previous_state": "processing",
            "since": "2025-11-30T00:25:01.123Z",
            "previous_duration_seconds": 252.4,
            "seq": 42,
            "running": [],
            "eta": None,
        },
    }


def test_json_unknown_state_has_null_stable_and_first_state_has_no_previous() -> None:
    body = json.loads(encode("json", Transition(State.UNKNOWN, None, SINCE, None, 1), None))
    assert body["data"]["stable"] is None
    assert body["data"]["previous_state"] is None
    assert body["data"]["previous_duration_seconds"] is None


def test_slack_message_says_the_new_state_how_long_the_last_lasted_and_links() -> None:
    body = json.loads(encode("slack", PROCESSING_ENDED, "https://status.example/x?a=1&b=2"))
    assert body["text"] == ":white_check_mark: Data is stable (processing took 4 min 12 s)"
    rendered = json.dumps(body["blocks"])
    assert "*Data is stable*" in rendered
    assert "Processing took 4 min 12 s. Since 2025-11-30 00:25:01 UTC." in rendered
    assert "<https://status.example/x?a=1&amp;b=2|Open the status page>" in rendered


def test_slack_message_for_processing_and_without_public_url() -> None:
    started = Transition(State.PROCESSING, State.STABLE, SINCE, 7300, 43)
    body = json.loads(encode("slack", started, None))
    assert body["text"] == ":hourglass_flowing_sand: Processing data (stable for 2 h 1 min before)"
    assert "status page" not in json.dumps(body)


def test_processing_names_the_running_activities_in_json_and_slack() -> None:
    started = Transition(
        State.PROCESSING, State.STABLE, SINCE, 60, 44, ("Importing data", "Deriving reports")
    )
    body = json.loads(encode("json", started, None))
    assert body["data"]["running"] == ["Importing data", "Deriving reports"]
    slack = json.loads(encode("slack", started, None))
    assert slack["text"] == (
        ":hourglass_flowing_sand: Processing data: Importing data, Deriving reports "
        "(stable for 1 min before)"
    )
    assert "*Processing data: Importing data, Deriving reports*" in json.dumps(slack["blocks"])


def test_processing_says_the_estimate_of_the_time_left_when_there_is_one() -> None:
    estimate = {"low_s": 240.0, "high_s": 360.0, "source": "the last 5 periods"}
    started = Transition(
        State.PROCESSING, State.STABLE, SINCE, 60, 45, ("Importing data",), estimate
    )
    slack = json.loads(encode("slack", started, None))
    assert slack["text"].startswith(
        ":hourglass_flowing_sand: Processing data: Importing data, about 4\u20136 min left"
    )
    assert json.loads(encode("json", started, None))["data"]["eta"] == estimate
    assert Transition.from_record(started.to_record()) == started


def test_a_transition_keeps_its_activities_through_the_state_file() -> None:
    started = Transition(State.PROCESSING, State.STABLE, SINCE, 60, 44, ("Importing data",))
    assert Transition.from_record(started.to_record()) == started
    older = {k: v for k, v in started.to_record().items() if k != "running"}
    assert Transition.from_record(older).running == ()


def test_test_events_are_clearly_marked() -> None:
    event = json.loads(encode_test("json", "ci", None, SINCE))
    assert event["type"] == "system.stability.test"
    assert event["data"]["test"] is True
    slack = json.loads(encode_test("slack", "team", "https://status.example", SINCE))
    assert slack["text"].startswith("Test:")
    assert '"team"' in slack["text"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "less than a second"),
        (45, "45 s"),
        (60, "1 min"),
        (252.9, "4 min 12 s"),
        (3600, "1 h"),
        (7380, "2 h 3 min"),
        (93784, "1 d 2 h"),
    ],
)
def test_human_durations(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text
