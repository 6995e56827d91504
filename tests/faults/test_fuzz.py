"""Fault 8, fuzzing: generated configs and HTTP requests get clean errors, never a crash."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.config import Config, load_config
from relay.errors import ConfigError
from tests.faults.conftest import TOKEN
from tests.support import eventually, relay_config, running_relay

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


async def test_any_http_request_gets_a_clean_answer(secret_dsn: str) -> None:
    config = relay_config(
        secret_dsn,
        auth={"bearer_tokens": [TOKEN]},
        http={"max_clients_per_address": 50, "trusted_proxies": ["127.0.0.1"]},
        cors={"allow_origins": ["https://app.example"]},
    )
    async with running_relay(config) as relay:
        await eventually(lambda: relay.listener.connected.is_set())
        port = relay.port
        answers: list[bytes] = []

        @settings(max_examples=300, deadline=None)
        @given(request=requests)
        def probe(request: tuple[str, str, list[tuple[str, str]]]) -> None:
            method, path, headers = request
            answers.append(raw_request(port, method, path, headers))

        await asyncio.to_thread(probe)
        statuses = [a.split(b" ", 2)[1] for a in answers if a.startswith(b"HTTP/1.")]
        unanswered = [a[:80] for a in answers if not a.startswith(b"HTTP/1.")]
        assert len(statuses) >= len(answers) * 0.9, unanswered
        assert not [s for s in statuses if s.startswith(b"5") and s != b"503"], statuses
        assert relay.listener.connected.is_set()
