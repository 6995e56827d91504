"""Delivery state that survives restarts: one small JSON file, written atomically. What it
holds per target is relay/fanout/webhooks/records.py.

Writes happen off the event loop (a thread), coalesced by one named task: a burst of
changes costs one write. ``flush()`` waits until everything changed so far is on disk.
Write = temp file, fsync, rename, fsync of the directory. Every write carries the version
of the state it holds; an older snapshot never replaces a newer one on disk (a thread
outliving a timed-out close cannot land last). A file that cannot be parsed, whatever the
reason, is moved aside (``webhooks.json.corrupt``), reported, and replaced; it never stops
the relay.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from relay.fanout.webhooks.records import VERSION, TargetRecord, parse
from relay.logs import get_logger
from relay.tasks import spawn

log = get_logger("relay.fanout.webhooks")

FILE_NAME = "webhooks.json"
# After a write that crashed (not an I/O error: a bug), the writer pauses this long.
CRASH_BACKOFF = 1.0


Collect = Callable[[], dict[str, TargetRecord]]


class StateFile:
    """The file (or, without a directory, nothing: state lives in memory only)."""

    def __init__(self, directory: Path | None, collect: Collect) -> None:
        self.path = directory / FILE_NAME if directory is not None else None
        self._collect = collect
        self._lock = threading.Lock()  # one writer thread at a time
        self._version = 0  # bumped by every change
        self._written = 0  # the newest version whose write has ended (written or failed)
        self._on_disk = 0  # the newest version on disk; guarded by _lock
        self._dirty: asyncio.Event | None = None
        self._progress: asyncio.Condition | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

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
        except Exception as error:  # any malformed content, whatever breaks on it
            aside = path.with_name(path.name + ".corrupt")
            moved_to: str | None = str(aside)
            try:
                os.replace(path, aside)
            except OSError:
                moved_to = None
            log.error(
                "webhook_state_corrupt",
                path=str(path),
                reason=f"{type(error).__name__}: {error}",
                moved_to=moved_to,
                consequence="starting without delivery state; the file will be replaced",
            )
            return {}

    # Writing, from one named task.
    async def start(self) -> None:
        if self._task is None:
            self._dirty = asyncio.Event()
            self._progress = asyncio.Condition()
            if self.path is not None:
                self._task = spawn(self._writer(), "relay-webhook-state")

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

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop the writer once it has written the final state (if anything changed).

        The writer is not cancelled mid-write: it finishes the write in flight, then writes
        what changed since. Bounded by ``timeout`` if given (a stuck disk); past it the writer is
        abandoned, and the version stamp keeps its late write from replacing a newer one.
        """
        self._stopping = True
        task = self._task
        if task is None:  # never started: write here if anything changed
            if self.path is not None and self._version != self._written:
                version = self._version
                await asyncio.to_thread(self._write, self.path, self._collect(), version)
                self._written = version
            return
        if self._dirty is not None:
            self._dirty.set()  # wake the writer: it writes what is left, then returns
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            log.error(
                "webhook_state_stop_timeout",
                path=str(self.path),
                timeout_s=timeout,
                consequence="the latest delivery state may not be on disk",
            )
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)

    async def _writer(self) -> None:
        assert self._dirty is not None and self._progress is not None and self.path is not None
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            version = self._version
            crashed = False
            if version != self._written:
                try:
                    await asyncio.to_thread(self._write, self.path, self._collect(), version)
                except Exception:  # a bug, not an I/O error: logged; the next change tries again
                    crashed = True
                    log.exception(
                        "webhook_state_write_crashed",
                        path=str(self.path),
                        consequence="a restart now may resend or lose the latest delivery",
                    )
                async with self._progress:
                    self._written = max(self._written, version)
                    self._progress.notify_all()
            if self._stopping and not self._dirty.is_set():
                return
            if crashed and not self._stopping:
                await asyncio.sleep(CRASH_BACKOFF)  # a bug on every change: not a busy loop

    def _write(self, path: Path, records: dict[str, TargetRecord], version: int) -> None:
        """In a thread. ``records`` is the state as of ``version``; skipped if newer is on disk."""
        tree = {
            "version": VERSION,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "targets": {name: record.to_record() for name, record in records.items()},
        }
        data = json.dumps(tree, indent=1).encode()
        temp = path.with_name(f".{path.name}.tmp")
        with self._lock:
            if version <= self._on_disk:
                return  # a newer snapshot is already on disk: never replace it with older
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temp, path)
                self._on_disk = version
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
