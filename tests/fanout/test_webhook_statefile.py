"""The delivery state file: round trip, atomic replacement, corrupt files moved aside."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import structlog

from relay.fanout.webhooks.payloads import Transition
from relay.fanout.webhooks.records import Mark, Pending, TargetRecord, parse
from relay.fanout.webhooks.statefile import StateFile
from relay.state.stability import State
from tests.support import eventually

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
        # Not a ValueError/KeyError/TypeError: AttributeError, OverflowError, and a NaN
        # that float() would accept.
        '{"version": 1, "targets": {"a": []}}',
        '{"version": 1, "targets": {"ci": {"settled": {"state": "stable", "seq": Infinity,'
        ' "since": 0}}}}',
        '{"version": 1, "targets": {"ci": {"settled": {"state": "stable", "seq": 1,'
        ' "since": NaN}}}}',
        # Numbers only as JSON numbers: int() and float() would take these.
        '{"version": 1, "targets": {"ci": {"settled": {"state": "stable", "seq": "12",'
        ' "since": 0}}}}',
        '{"version": 1, "targets": {"ci": {"settled": {"state": "stable", "seq": true,'
        ' "since": 0}}}}',
        '{"version": 1, "targets": {"ci": {"settled": {"state": "stable", "seq": 2.7,'
        ' "since": 0}}}}',
        '{"version": 1, "targets": {"ci": {"settled": {"state": "stable", "seq": 1,'
        ' "since": "\u0663"}}}}',
        '{"version": 1, "targets": {"ci": {"settled": {"state": "stable", "seq": 1,'
        ' "since": 1e999}}}}',
        '{"version": 1, "targets": {"ci": {"filtered_seq": "3"}}}',
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


class RecordingStateFile(StateFile):
    """Counts the writes its threads start and finish."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.started: list[int] = []  # list.append is atomic across threads
        self.finished: list[int] = []

    def _write(self, *args: Any) -> None:
        self.started.append(1)
        try:
            super()._write(*args)
        finally:
            self.finished.append(1)


async def test_a_write_in_flight_at_close_never_lands_over_the_final_state(
    tmp_path: Path,
) -> None:
    """The writer's thread is still serializing an old snapshot when close() begins: the
    file must end with the state as of close, whatever order the threads finish in."""
    gate = threading.Event()

    class Held(TargetRecord):
        def to_record(self) -> dict[str, Any]:
            gate.wait(10)  # a slow disk or a big state: this write takes its time
            return TargetRecord.to_record(self)

    old = Held(delivered=Mark(State.STABLE, 1, 1800000000.0))
    new = TargetRecord(delivered=Mark(State.PROCESSING, 2, 1800000001.0))
    records: dict[str, TargetRecord] = {"ci": old}
    store = RecordingStateFile(tmp_path, lambda: dict(records))
    await store.start()
    try:
        store.changed()
        await eventually(lambda: len(store.started) == 1)  # the old snapshot is being written
        records["ci"] = new
        store.changed()
        asyncio.get_running_loop().call_later(0.3, gate.set)
        await store.aclose()
        await eventually(lambda: len(store.finished) == len(store.started))
    finally:
        gate.set()
    assert parse((tmp_path / "webhooks.json").read_text()) == {"ci": new}


async def test_a_crashing_write_is_logged_and_the_writer_goes_on(tmp_path: Path) -> None:
    broken = [True]

    def collect() -> dict[str, TargetRecord]:
        if broken[0]:
            raise RuntimeError("a bug in collecting the state")
        return {"ci": RECORD}

    store = StateFile(tmp_path, collect)
    await store.start()
    with structlog.testing.capture_logs() as logs:
        store.changed()
        await store.flush()  # returns: the write ended (it crashed)
    assert [line["event"] for line in logs] == ["webhook_state_write_crashed"]
    broken[0] = False
    store.changed()
    await store.flush()
    assert parse((tmp_path / "webhooks.json").read_text()) == {"ci": RECORD}
    await store.aclose()
