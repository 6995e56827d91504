"""relay/source/channels.py on its own: which payloads are relayed, how, and what a dropped
one costs.

No database: ``ChannelRelay`` is fed payloads as the listener would; what it publishes is
recorded, what it drops is read from a real ``Metrics`` registry, and its clock is a test's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from relay.metrics import Metrics
from relay.source.channels import LOG_EVERY_SECONDS, MAX_PAYLOAD_BYTES, ChannelRelay
from tests.support import registry_sample


class Harness:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.now = 1000.0
        self.published: list[tuple[str, str, Any]] = []
        self.dropped_on: list[str] = []
        self.relay = ChannelRelay(
            lambda channel, data, parsed: self.published.append((channel, data, parsed)),
            self.metrics,
            clock=lambda: self.now,
            on_dropped=self.dropped_on.append,
        )

    def dropped(self, channel: str, reason: str) -> float:
        return registry_sample(
            self.metrics.registry,
            "relay_notifications_dropped_total",
            channel=channel,
            reason=reason,
        )


REASONS = ("too_large", "not_json", "not_an_object", "not_finite")


@pytest.fixture
def warnings_logged() -> Iterator[None]:
    """Warnings pass whatever level an earlier test configured (restored afterwards)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("not json", "not_json"),
        ("", "not_json"),
        ("{bad", "not_json"),
        ('{"a": 1} trailing', "not_json"),
        ("[" * 5000, "not_json"),  # nested past the recursion limit
        # Python's json reads these; a browser's JSON.parse rejects the event.
        ('{"a": NaN}', "not_json"),
        ('{"a": -Infinity}', "not_json"),
        # JSON, but Python reads each as a float infinity, which json.dumps writes back as
        # Infinity: never relayed, whether re-encoded (a line break) or not.
        ('{"big": 1e999}', "not_finite"),
        ('{"big":\n1e999}', "not_finite"),
        ('{"a": {"b": [0, -2.5E+400]}}', "not_finite"),
        ('{"a": ' + "9" * 310 + ".0}", "not_finite"),
        ("[1, 2]", "not_an_object"),
        ('"a string"', "not_an_object"),
        ("42", "not_an_object"),
        ("null", "not_an_object"),
        ("true", "not_an_object"),
        ("x" * (MAX_PAYLOAD_BYTES - 1), "not_json"),
        ("x" * MAX_PAYLOAD_BYTES, "too_large"),
        ('{"k":"' + "é" * 4000 + '"}', "too_large"),  # 8,008 bytes, 4,008 characters
    ],
)
def test_an_unrelayable_payload_is_counted_by_reason_and_dropped(payload: str, reason: str) -> None:
    h = Harness()
    h.relay("progress", payload)
    assert h.published == []
    assert h.dropped("progress", reason) == 1
    assert sum(h.dropped("progress", r) for r in REASONS) == 1
    assert h.dropped_on == ["progress"]


def test_a_json_object_is_relayed_as_it_came() -> None:
    h = Harness()
    payload = '{"slug": "census",  "pct": 50}'
    h.relay("progress", payload)
    assert h.published == [("progress", payload, {"slug": "census", "pct": 50})]
    assert h.dropped_on == []


def test_the_largest_relayable_object_is_relayed() -> None:
    h = Harness()
    payload = '{"k":"' + "y" * (MAX_PAYLOAD_BYTES - 9) + '"}'
    assert len(payload.encode()) == MAX_PAYLOAD_BYTES - 1
    h.relay("progress", payload)
    assert [data for _c, data, _p in h.published] == [payload]


@pytest.mark.parametrize("newline", ["\n", "\r", "\r\n"])
def test_an_object_over_several_lines_is_re_encoded_onto_one(newline: str) -> None:
    h = Harness()
    h.relay("progress", f'{{{newline}  "ok": true,{newline}  "n": [1, 2]{newline}}}')
    [(channel, data, parsed)] = h.published
    assert channel == "progress"
    assert data == '{"ok":true,"n":[1,2]}'
    assert parsed == {"ok": True, "n": [1, 2]}


@pytest.mark.usefixtures("warnings_logged")
def test_drops_are_logged_once_per_channel_per_minute_and_all_counted() -> None:
    h = Harness()
    with capture_logs() as logs:
        for _ in range(5):
            h.relay("a", "bad")
        h.relay("b", "bad")  # another channel has its own minute
        h.now += LOG_EVERY_SECONDS - 1
        h.relay("a", "[1]")
        h.now += 1
        h.relay("a", "bad")
    warned = [(e["channel"], e["reason"]) for e in logs if e["event"] == "notification_dropped"]
    assert warned == [("a", "not_json"), ("b", "not_json"), ("a", "not_json")]
    assert all(e["log_level"] == "warning" for e in logs if e["event"] == "notification_dropped")
    assert h.dropped("a", "not_json") == 6
    assert h.dropped("a", "not_an_object") == 1
    assert h.dropped("b", "not_json") == 1
    assert h.dropped_on == ["a"] * 5 + ["b", "a", "a"]


@pytest.mark.usefixtures("warnings_logged")
def test_the_log_line_carries_the_size_never_the_payload() -> None:
    h = Harness()
    with capture_logs() as logs:
        h.relay("a", "secret-ish garbage")
    [entry] = [e for e in logs if e["event"] == "notification_dropped"]
    assert entry["payload_bytes"] == len(b"secret-ish garbage")
    assert "secret-ish" not in repr(entry)


def test_without_an_on_dropped_callback_a_drop_is_still_counted() -> None:
    metrics = Metrics()
    published: list[str] = []
    relay = ChannelRelay(lambda c, d, p: published.append(d), metrics)
    relay("c", "nope")
    assert published == []
    sample = metrics.registry.get_sample_value(
        "relay_notifications_dropped_total", {"channel": "c", "reason": "not_json"}
    )
    assert sample == 1


# Properties: any text gets exactly one outcome, and a relayed one is one valid SSE data line.

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(obj=objects, indent=st.sampled_from([None, 0, 2]), ensure_ascii=st.booleans())
def test_any_small_json_object_is_relayed_once_on_one_line(
    obj: dict[str, Any], indent: int | None, ensure_ascii: bool
) -> None:
    payload = json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii)
    h = Harness()
    h.relay("ch", payload)
    if len(payload.encode()) >= MAX_PAYLOAD_BYTES:
        assert h.published == [] and h.dropped("ch", "too_large") == 1
        return
    [(channel, data, parsed)] = h.published
    assert channel == "ch"
    assert parsed == obj
    assert browser_parse(data) == obj
    assert "\n" not in data and "\r" not in data
    if "\n" not in payload and "\r" not in payload:
        assert data == payload, "a one-line payload is relayed byte for byte"
    assert h.dropped_on == []


def _strict(constant: str) -> None:
    raise ValueError(constant)


def _strict_float(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise OverflowError(literal)
    return value


def browser_parse(text: str) -> Any:
    """JSON as a browser's JSON.parse reads it back after a round trip: no NaN or Infinity
    literals, and no number that only a float infinity can hold (OverflowError)."""
    return json.loads(text, parse_constant=_strict, parse_float=_strict_float)


OVERFLOW = "@@overflow@@"  # longer than any generated string: only ever this placeholder
overflowing = st.sampled_from(["1e999", "-1e999", "1E+400", "-2.5e309", "9" * 310 + ".5"])


@settings(max_examples=300, deadline=None)
@given(
    obj=st.dictionaries(
        st.text(max_size=8), st.one_of(json_values, st.just(OVERFLOW)), min_size=1, max_size=6
    ).filter(lambda o: OVERFLOW in o.values()),
    literal=overflowing,
    indent=st.sampled_from([None, 2]),
)
def test_an_object_with_a_number_past_the_float_range_is_dropped(
    obj: dict[str, Any], literal: str, indent: int | None
) -> None:
    payload = json.dumps(obj, indent=indent).replace(json.dumps(OVERFLOW), literal)
    h = Harness()
    h.relay("ch", payload)
    assert h.published == []
    reason = "too_large" if len(payload.encode()) >= MAX_PAYLOAD_BYTES else "not_finite"
    assert {r: h.dropped("ch", r) for r in REASONS} == {r: float(r == reason) for r in REASONS}
    assert h.dropped_on == ["ch"]


@settings(max_examples=500, deadline=None)
@given(
    payload=st.one_of(
        st.text(max_size=200),
        st.text(alphabet='[]{}",:0123456789 \n', max_size=60),
        st.text(alphabet='{}":0123456789eE.-+ \n', max_size=30),
    )
)
def test_any_text_is_relayed_or_dropped_for_one_reason_never_a_crash(payload: str) -> None:
    h = Harness()
    h.relay("ch", payload)
    drops = {r: h.dropped("ch", r) for r in REASONS}
    try:
        parsed = browser_parse(payload)
    except OverflowError:
        parsed = None
        expected = "not_finite"
    except ValueError:
        parsed = None
        expected = "not_json"
    else:
        expected = None if isinstance(parsed, dict) else "not_an_object"
    if expected is None:
        [(_channel, data, relayed)] = h.published
        assert relayed == parsed
        assert browser_parse(data) == parsed
        assert sum(drops.values()) == 0
    else:
        assert h.published == []
        assert drops == {r: float(r == expected) for r in REASONS}
