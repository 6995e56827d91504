"""SIGHUP reloads tokens: streams whose token is still accepted stay, those whose token is gone
end with a last `event: unauthorized`; an invalid new config is rejected."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.cli.test_cli import REPO, free_port

OLD_TOKEN = "old-token-0123456789abcdef"
NEW_TOKEN = "new-token-0123456789abcdef"
KEPT_TOKEN = "kept-token-0123456789abcdef"


def write_config(path: Path, dsn: str, port: int, token: str) -> None:
    path.write_text(
        f"database:\n  dsn: '{dsn}'\nhttp:\n  listen: 127.0.0.1:{port}\n"
        f"auth:\n  bearer_tokens: ['{token}', '{KEPT_TOKEN}']\n"
    )


def open_stream(base: str, token: str) -> Any:
    return urllib.request.urlopen(
        urllib.request.Request(
            base + "/api/system-status/live", headers={"Authorization": f"Bearer {token}"}
        ),
        timeout=5,
    )


def get(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def wait_for(check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.1)


def test_sighup_swaps_tokens_keeps_streams_and_rejects_bad_config(
    db_dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "relay.yaml"
    write_config(config, db_dsn, port, OLD_TOKEN)
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    stream = removed = None
    try:
        wait_for(lambda: _serving(base))
        stream = open_stream(base, KEPT_TOKEN)
        removed = open_stream(base, OLD_TOKEN)
        assert stream.readline().startswith(b"retry:")
        assert removed.readline().startswith(b"retry:")
        write_config(config, db_dsn, port, NEW_TOKEN)
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: get(base + "/api/system-status", NEW_TOKEN) == 200)
        assert get(base + "/api/system-status", OLD_TOKEN) == 401
        # The stream of the token the reload removed ends, saying why, as its last event.
        rest = removed.read()
        assert rest.endswith(b'event: unauthorized\ndata: {"reason":"invalid token"}\n\n')
        config.write_text("http:\n  heartbeat: fast\n")
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert get(base + "/api/system-status", NEW_TOKEN) == 200, "the old config is kept"
        assert process.poll() is None
        # The stream of the token both configs keep is still open and readable.
        while (line := stream.readline()) == b"\n":
            pass
        assert line.startswith(b"id: "), line
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    finally:
        for response in (stream, removed):
            if response is not None:
                response.close()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    names = [event["event"] for event in events]
    assert "reloaded" in names
    rejected = [event for event in events if event["event"] == "reload_rejected"]
    assert rejected and "http.heartbeat" in rejected[0]["problems"][0]
    assert OLD_TOKEN not in output and NEW_TOKEN not in output


def _serving(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
