"""Fault 8, fuzzing: generated configs and HTTP requests get clean errors, never a crash.

The relay that the HTTP requests are fuzzed against runs in a process of its own. Hypothesis
checks, around every draw, that the global ``random`` state did not change (a strategy that
used the ``random`` module would not replay), and that state is one per process, shared by
every thread. A relay in the test's process, serving on the event loop while Hypothesis drew
in another thread, changed it: psycopg_pool draws from the global ``random`` for every
connection it opens (the read pool opens one on demand for ``/details``), so a draw that
overlapped a request failed the test with ``HypothesisDeprecationWarning: Do not use the
random module inside strategies``. (Hypothesis also reseeds the global ``random`` around
each example, which a relay in the process would have drawn from.) In its own process the
relay shares no state with the draws; ``test_the_fuzzed_relay_shares_no_random_state``
checks that.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.config import Config, load_config
from relay.errors import ConfigError
from tests.scenarios.faults.conftest import DSN_PASSWORD, SECRETS, TOKEN

REPO = Path(__file__).resolve().parents[3]

SECTION_KEYS = {
    "database": ["dsn", "channel", "heartbeat_interval", "heartbeat_timeout", "keepalives_count"],
    "http": ["listen", "heartbeat", "max_clients", "client_buffer", "trusted_proxies"],
    "stability": [
        "reconcile_interval",
        "min_read_interval",
        "hold_when_busy",
        "hold_release_after",
    ],
    "auth": ["bearer_tokens", "jwt", "metrics_token"],
    "cors": ["allow_origins"],
    "webhooks": [],
    "logging": ["level", "format"],
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(
        ["15s", "fast", "-1s", "64KiB", "127.0.0.1:0", "${NOPE}", "${X:-1s}", "[::1]:80"]
    ),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
sections = st.fixed_dictionaries(
    {},
    optional={
        name: st.dictionaries(st.sampled_from(keys or ["x"]), values, max_size=4) | values
        for name, keys in SECTION_KEYS.items()
    },
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tree=st.one_of(sections, values), raw=st.booleans(), text=st.text(max_size=200))
def test_any_config_file_is_valid_or_a_clean_error(
    tmp_path: Path, tree: Any, raw: bool, text: str
) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text if raw else yaml.safe_dump(tree, allow_unicode=True))
    try:
        config = load_config(path, environ={})
    except ConfigError as error:
        assert error.problems
        assert all(isinstance(p, str) and ": " in p for p in error.problems)
    else:
        assert isinstance(config, Config)


methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
paths = st.one_of(
    st.sampled_from(
        [
            "/api/system-status/live",
            "/api/system-status",
            "/api/system-status/details",
            "/metrics",
            "/healthz",
            "/readyz",
            "/",
            "/static/system-status.js",
            "/static/../../etc/passwd",
            "/api/system-status/live?token=x",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40).map(
        lambda s: "/" + s
    ),
)
header_names = st.sampled_from(
    [
        "Authorization",
        "Cookie",
        "Last-Event-ID",
        "X-Forwarded-For",
        "Origin",
        "Accept",
        "Range",
        "Content-Length",
        "Transfer-Encoding",
        "If-None-Match",
        "Connection",
    ]
)
header_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80),
    st.sampled_from(
        [f"Bearer {TOKEN}", "Bearer", "bearer x y", "statbus=%%%", "::::", "99999999999"]
    ),
)
requests = st.tuples(methods, paths, st.lists(st.tuples(header_names, header_values), max_size=5))


def raw_request(port: int, method: str, path: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: relay", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        sock.settimeout(1.0)
        received = b""
        try:
            while b"\r\n" not in received:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
    return received


def _get(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def _serving_port(log: Path) -> int | None:
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == "serving":
                return int(str(entry["listen"]).rpartition(":")[2])
    return None


@contextlib.contextmanager
def relay_process(db_dsn: str, directory: Path) -> Iterator[int]:
    """``stability-relay run`` in a process of its own, connected to the database; yields its
    port. Stopped with SIGTERM (it must exit 0), and its output must hold no secret."""
    tree = {
        "database": {
            "dsn": psycopg.conninfo.make_conninfo(db_dsn, password=DSN_PASSWORD),
            "heartbeat_interval": "1s",
            "heartbeat_timeout": "2s",
            "reconnect_initial": "0.1s",
            "reconnect_max": "0.5s",
            "connect_timeout": "2s",
        },
        "http": {
            "listen": "127.0.0.1:0",
            "heartbeat": "15s",
            "max_clients_per_address": 50,
            "trusted_proxies": ["127.0.0.1"],
        },
        "auth": {"bearer_tokens": [TOKEN]},
        "cors": {"allow_origins": ["https://app.example"]},
        "logging": {"format": "json", "level": "debug"},
    }
    config = directory / "relay.yaml"
    config.write_text(yaml.safe_dump(tree))
    log = directory / "relay.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "relay", "run", "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
        )
    try:
        deadline = time.monotonic() + 30
        port = None
        while True:
            assert process.poll() is None, "the relay exited: " + log.read_text()
            assert time.monotonic() < deadline, "the relay did not connect: " + log.read_text()
            port = port or _serving_port(log)
            if port is not None and _get(f"http://127.0.0.1:{port}/readyz") == 200:
                break
            time.sleep(0.1)
        yield port
        assert process.poll() is None, "the relay exited: " + log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "Traceback" not in text, text
    for secret in SECRETS:
        assert secret not in text, "a secret reached the logs"


def test_any_http_request_gets_a_clean_answer(db_dsn: str, tmp_path: Path) -> None:
    answers: list[bytes] = []
    with relay_process(db_dsn, tmp_path) as port:

        @settings(max_examples=300, deadline=None)
        @given(request=requests)
        def probe(request: tuple[str, str, list[tuple[str, str]]]) -> None:
            method, path, headers = request
            answers.append(raw_request(port, method, path, headers))

        probe()
        assert _get(f"http://127.0.0.1:{port}/readyz") == 200, "still connected"
    statuses = [a.split(b" ", 2)[1] for a in answers if a.startswith(b"HTTP/1.")]
    unanswered = [a[:80] for a in answers if not a.startswith(b"HTTP/1.")]
    assert len(statuses) >= len(answers) * 0.9, unanswered
    assert not [s for s in statuses if s.startswith(b"5") and s != b"503"], statuses


def test_the_fuzzed_relay_shares_no_random_state(db_dsn: str, tmp_path: Path) -> None:
    """What failed the fuzz once, made certain: requests that open details connections (and
    so draw from psycopg_pool's global random) leave this process's random state as it was."""
    with relay_process(db_dsn, tmp_path) as port:
        before = random.getstate()
        for _ in range(3):
            url = f"http://127.0.0.1:{port}/api/system-status/details"
            assert _get(url, {"Authorization": f"Bearer {TOKEN}"}) == 200
        assert random.getstate() == before
