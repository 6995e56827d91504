"""The schemas of the queues that live on npm (pg-boss, graphile-worker), made by their own
packages through our drivers in tests/queues/<name>/worker.mjs (installed by ``make
queue-packages``): nothing of theirs is copied here.

tests/pgboss_support.py and tests/graphile_worker_support.py drive the same drivers for the
profiles' tests (asynchronously, with pytest's skips); the benchmarks need one blocking call
each, and a reason instead of a skip when a package cannot run here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from urllib.parse import quote

import psycopg

from bench.common import ROOT

QUEUES = ROOT / "tests" / "queues"
PACKAGES = {"pgboss": "pg-boss", "graphile_worker": "graphile-worker"}
TIMEOUT = 120.0  # seconds for a driver to make the schema and exit


class QueueUnavailable(Exception):
    """The queue's package cannot run here (the message says why), or failed to."""


def missing(name: str) -> str | None:
    """Why the npm queue ``name`` (a key of PACKAGES) cannot run here, or None."""
    absent = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if absent:
        return f"{' and '.join(absent)} missing ({PACKAGES[name]} runs on Node.js)"
    if not (QUEUES / name / "node_modules" / PACKAGES[name] / "package.json").exists():
        return f"{PACKAGES[name]} is not installed in tests/queues/{name}: `make queue-packages`"
    return None


def _url(dsn: str) -> str:
    """A postgresql:// URL for node-postgres, which does not read key=value strings."""
    parts = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items()}
    user = quote(parts.get("user", ""), safe="")
    password = f":{quote(parts['password'], safe='')}" if "password" in parts else ""
    host, port = parts.get("host", "127.0.0.1"), parts.get("port", "5432")
    return f"postgresql://{user}{password}@{host}:{port}/{quote(parts['dbname'], safe='')}"


def _node(name: str, args: list[str], *, stdin: str = "", env: dict[str, str] | None = None) -> str:
    reason = missing(name)
    if reason is not None:
        raise QueueUnavailable(reason)
    try:
        done = subprocess.run(
            ["node", str(QUEUES / name / "worker.mjs"), *args],
            cwd=QUEUES / name,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env={**os.environ, **(env or {})},
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise QueueUnavailable(f"{PACKAGES[name]}: no schema within {TIMEOUT:g} s") from None
    if done.returncode != 0:
        raise QueueUnavailable(f"{PACKAGES[name]} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def pgboss_schema(dsn: str, queues: tuple[str, ...]) -> None:
    """pg-boss's schema, made by its ``start()`` (supervisor and scheduler off), and
    ``queues`` created with its defaults (their jobs go to pgboss.job_common)."""
    url = _url(dsn)
    options = {"supervise": False, "schedule": False}
    commands = [
        {"op": "start", "args": {"connection": {"connectionString": url}, "options": options}}
    ]
    commands += [{"op": "createQueue", "args": {"name": q}} for q in queues]
    commands.append({"op": "stop", "args": {}})
    lines = "".join(json.dumps({"n": n, **c}) + "\n" for n, c in enumerate(commands, 1))
    out = _node("pgboss", [], stdin=lines)
    for line in out.splitlines():
        answer = json.loads(line)
        if not answer["ok"]:
            raise QueueUnavailable(f"pg-boss: {answer['error']}")


def graphile_worker_schema(dsn: str) -> None:
    """graphile-worker's schema, made by its own migrations (runMigrations)."""
    _node("graphile_worker", ["migrate"], env={"DATABASE_URL": _url(dsn)})
