"""Shared helpers: processes, the embedded database, RSS, percentiles, line-based control."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg

from relay.devtools.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
LOGS = Path(os.environ.get("BENCH_LOG_DIR", "/tmp/relay-bench-logs"))


def raise_nofile() -> int:
    """Raise this process's soft open-file limit to the hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU time of a process (and of its exited, reaped children), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(postmaster: int) -> float:
    """CPU time of a PostgreSQL server: the postmaster, its live children (backends and
    workers) and the children it has reaped (closed connections)."""
    total = cpu_seconds(postmaster, reaped_children=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rpartition(")")[2].split()[1]) == postmaster:
                total += cpu_seconds(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # exited meanwhile: its time moves to the postmaster's reaped children
    return total


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass
class Database:
    """An embedded PostgreSQL cluster with one database holding the demo schema and our SQL."""

    server: EmbeddedPostgres
    dsn: str

    @property
    def admin_dsn(self) -> str:
        return self.server.dsn()


@contextlib.contextmanager
def database(name: str = "bench") -> Iterator[Database]:
    from relay.source.install import install

    with EmbeddedPostgres() as server:
        dsn = server.create_database(name)
        asyncio.run(install(dsn, demo_schema=True))
        with psycopg.connect(dsn, autocommit=True) as conn:
            # The demo's progress trigger is not part of the relay: keep it out of every figure.
            conn.execute("DROP TRIGGER IF EXISTS import_job_progress_notify ON public.import_job")
        yield Database(server, dsn)


class Child:
    """A Python child process driven by JSON lines on stdin/stdout; stderr goes to a log file."""

    def __init__(
        self, name: str, module: str, *args: str, env: Mapping[str, str] | None = None
    ) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._log: IO[bytes] = (LOGS / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
            text=True,
            bufsize=1,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self, timeout: float = 120.0) -> dict[str, Any]:
        """The next JSON line the child prints (other lines are skipped)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.name}: no answer within {timeout:g}s")
                if not sel.select(remaining):
                    continue
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{self.name} exited ({self.proc.poll()}); see {LOGS}")
                if line.startswith("{"):
                    return dict(json.loads(line))

    def ask(self, command: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def close(self, timeout: float = 15.0) -> None:
        """Close stdin (the child's cue to stop), then wait; kill only this child if it hangs."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


async def stdin_lines() -> asyncio.StreamReader:
    """stdin as an asyncio stream (for the children's control channel)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def emit(obj: dict[str, Any]) -> None:
    """Print one JSON line for the parent."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
