"""Delivery state that survives restarts: one small JSON file, written atomically.

Per target: the last state that held (``settled``), the last state delivered, the seq of
the last state the target filtered out, and the delivery still owed (with its
``webhook-id``, so a retry after a restart keeps the id receivers deduplicate on).

Writes happen off the event loop (a thread), coalesced by one named task: a burst of
changes costs one write. ``flush()`` waits until everything changed so far is on disk.
Write = temp file, fsync, rename, fsync of the directory. A corrupt file is moved aside
(``webhooks.json.corrupt``), reported, and replaced; it never stops the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.logs import get_logger
from relay.stability import State
from relay.webhooks.payloads import Transition

log = get_logger("relay.webhooks")

FILE_NAME = "webhooks.json"
VERSION = 1


@dataclass(frozen=True, slots=True)
class Mark:
    """A state a target reached: which, its sequence number, since when (unix seconds)."""

    state: State
    seq: int
    since: float

    def to_record(self) -> dict[str, Any]:
        return {"state": self.state.value, "seq": self.seq, "since": self.since}

    @classmethod
    def from_record(cls, record: Any) -> Mark | None:
        if record is None:
            return None
        return cls(State(record["state"]), int(record["seq"]), float(record["since"]))


@dataclass(frozen=True, slots=True)
class Pending:
    """A delivery still owed: its ``webhook-id`` and what it says."""

    id: str
    transition: Transition


@dataclass(frozen=True, slots=True)
class TargetRecord:
    settled: Mark | None = None
    delivered: Mark | None = None
    filtered_seq: int | None = None
    pending: Pending | None = None

    def to_record(self) -> dict[str, Any]:
        pending = self.pending
        return {
            "settled": self.settled.to_record() if self.settled else None,
            "delivered": self.delivered.to_record() if self.delivered else None,
            "filtered_seq": self.filtered_seq,
            "pending": (
                {"id": pending.id, "transition": pending.transition.to_record()}
                if pending
                else None
            ),
        }

    @classmethod
    def from_record(cls, record: Any) -> TargetRecord:
        pending = record.get("pending")
        filtered = record.get("filtered_seq")
        return cls(
            settled=Mark.from_record(record.get("settled")),
            delivered=Mark.from_record(record.get("delivered")),
            filtered_seq=int(filtered) if filtered is not None else None,
            pending=(
                Pending(str(pending["id"]), Transition.from_record(pending["transition"]))
                if pending
                else None
            ),
        )


def parse(text: str) -> dict[str, TargetRecord]:
    """The file's content; raises ``ValueError`` (or ``KeyError``/``TypeError``) if malformed."""
    tree = json.loads(text)
    if not isinstance(tree, dict) or tree.get("version") != VERSION:
        raise ValueError(f"expected an object with version {VERSION}")
    targets = tree["targets"]
    if not isinstance(targets, dict):
        raise ValueError('"targets" is not an object')
    return {str(name): TargetRecord.from_record(record) for name, record in targets.items()}


Collect = Callable[[], dict[str, TargetRecord]]


class StateFile:
    """The file (or, without a directory, nothing: state lives in memory only)."""

    def __init__(self, directory: Path | None, collect: Collect) -> None:
        self.path = directory / FILE_NAME if directory is not None else None
        self._collect = collect
        self._lock = threading.Lock()  # one writer thread at a time
        self._version = 0
        self._written = 0
        self._dirty: asyncio.Event | None = None
        self._progress: asyncio.Condition | None = None
        self._task: asyncio.Task[None] | None = None

    # Reading, once at start.
    async def load(self) -> dict[str, TargetRecord]:
        if self.path is None:
            return {}
        return await asyncio.to_thread(self._load, self.path)

    @staticmethod
    def _load(path: Path) -> dict[str, TargetRecord]:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            data = path.read_bytes()
        except FileNotFoundError:
            log.info("webhook_state_new", path=str(path))
            return {}
        except OSError as error:
            log.error(
                "webhook_state_unreadable",
                path=str(path),
                reason=error.strerror or str(error),
                consequence="starting without delivery state; the file will be replaced",
            )
            return {}
        try:
            return parse(data.decode("utf-8"))
        except (ValueError, KeyError, TypeError) as error:  # UnicodeDecodeError is a ValueError
            aside = path.with_name(path.name + ".corrupt")
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            log.error(
                "webhook_state_corrupt",
                path=str(path),
                reason=f"{type(error).__name__}: {error}",
                moved_to=str(aside),
                consequence="starting without delivery state; the file will be replaced",
            )
            return {}

    # Writing, from one named task.
    async def start(self) -> None:
        if self._task is None:
            self._dirty = asyncio.Event()
            self._progress = asyncio.Condition()
            if self.path is not None:
                self._task = asyncio.create_task(self._writer(), name="relay-webhook-state")

    def changed(self) -> None:
        """Something in the collected state changed; write it soon (coalesced)."""
        self._version += 1
        if self._dirty is not None:
            self._dirty.set()

    async def flush(self) -> None:
        """Wait until every change so far has been written (or its write has failed)."""
        if self._task is None or self._progress is None or self._task.done():
            return
        target = self._version
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target)

    async def aclose(self) -> None:
        """Stop the writer and write the final state (if anything changed since the last write)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.path is not None and self._version != self._written:
            await asyncio.to_thread(self._write, self.path, self._collect())
            self._written = self._version

    async def _writer(self) -> None:
        assert self._dirty is not None and self._progress is not None and self.path is not None
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            version = self._version
            try:
                await asyncio.to_thread(self._write, self.path, self._collect())
            except Exception:  # logged; the next change tries again
                log.exception("webhook_state_write_crashed", path=str(self.path))
            async with self._progress:
                self._written = version
                self._progress.notify_all()

    def _write(self, path: Path, records: dict[str, TargetRecord]) -> None:
        tree = {
            "version": VERSION,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "targets": {name: record.to_record() for name, record in records.items()},
        }
        data = json.dumps(tree, indent=1).encode()
        temp = path.with_name(f".{path.name}.tmp")
        with self._lock:
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temp, path)
                _fsync_directory(path.parent)
            except OSError as error:
                log.error(
                    "webhook_state_write_failed",
                    path=str(path),
                    reason=error.strerror or str(error),
                    consequence="a restart now may resend or lose the latest delivery",
                )


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
