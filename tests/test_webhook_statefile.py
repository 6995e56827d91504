"""The delivery state file: round trip, atomic replacement, corrupt files moved aside."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import structlog

from relay.stability import State
from relay.webhooks.payloads import Transition
from relay.webhooks.statefile import Mark, Pending, StateFile, TargetRecord, parse

RECORD = TargetRecord(
    settled=Mark(State.PROCESSING, 11, 1800000000.5),
    delivered=Mark(State.STABLE, 10, 1799999000.0),
    filtered_seq=None,
    pending=Pending(
        "msg_abc", Transition(State.PROCESSING, State.STABLE, 1800000000.5, 1000.5, 11)
    ),
)


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def test_round_trip_through_the_file(tmp_path: Path) -> None:
    records = {"ci": RECORD, "slack": TargetRecord()}
    store = StateFile(tmp_path / "state", lambda: records)
    assert await store.load() == {}
    await store.start()
    store.changed()
    await store.flush()
    assert await StateFile(tmp_path / "state", dict).load() == records
    await store.aclose()
    assert names(tmp_path / "state") == ["webhooks.json"], "no temp file left behind"
    assert os.stat(tmp_path / "state" / "webhooks.json").st_mode & 0o777 == 0o600


async def test_the_final_write_happens_at_close(tmp_path: Path) -> None:
    records: dict[str, TargetRecord] = {}
    store = StateFile(tmp_path, lambda: records)
    await store.start()
    await store.aclose()
    assert not (tmp_path / "webhooks.json").exists(), "nothing changed: nothing written"
    store = StateFile(tmp_path, lambda: records)
    await store.start()
    records["ci"] = RECORD
    store.changed()
    await store.aclose()
    assert parse((tmp_path / "webhooks.json").read_text()) == {"ci": RECORD}


@pytest.mark.parametrize(
    "content",
    [
        "{ not json",
        "[]",
        '{"version": 99, "targets": {}}',
        '{"version": 1, "targets": {"ci": {"settled": {"state": "sideways"}}}}',
        "\udcff",
    ],
)
async def test_a_corrupt_file_is_reported_moved_aside_and_ignored(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "webhooks.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with structlog.testing.capture_logs() as logs:
        assert await StateFile(tmp_path, dict).load() == {}
    assert [line["event"] for line in logs] == ["webhook_state_corrupt"]
    assert logs[0]["log_level"] == "error"
    assert logs[0]["moved_to"] == str(tmp_path / "webhooks.json.corrupt")
    assert (tmp_path / "webhooks.json.corrupt").read_bytes() == content.encode(
        "utf-8", "surrogateescape"
    )
    assert not path.exists()


async def test_a_missing_directory_is_created(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "a" / "b", lambda: {"ci": RECORD})
    assert await store.load() == {}
    await store.start()
    store.changed()
    await store.aclose()
    saved = json.loads((tmp_path / "a" / "b" / "webhooks.json").read_text())
    assert saved["targets"]["ci"]["pending"]["id"] == "msg_abc"


async def test_without_a_directory_nothing_is_written(tmp_path: Path) -> None:
    store = StateFile(None, lambda: {"ci": RECORD})
    assert await store.load() == {}
    await store.start()
    store.changed()
    await store.flush()
    await store.aclose()
    assert names(tmp_path) == []
