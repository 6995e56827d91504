"""The command line as users run it: real processes, real signals, real output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def relay_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "relay", *args]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        relay_command(*args),
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_check_accepts_the_example_config() -> None:
    result = run(
        "check", "--config", "config.example.yaml", env={"RELAY_DSN": "postgresql://x@y/z"}
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("http:\n  heartbeat: fast\n  nope: 1\n")
    result = run("check", "--config", str(bad))
    assert result.returncode == 2
    assert 'http.heartbeat: expected a duration like "15s", got "fast"' in result.stderr
    assert "http.nope: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_a_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("database:\n  heartbeat_interval: often\n")
    result = run("run", "--config", str(bad))
    assert result.returncode == 2
    assert "database.heartbeat_interval" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_run_without_a_dsn_says_how_to_give_one() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RELAY_DSN"}
    result = subprocess.run(
        relay_command("run"), capture_output=True, text=True, timeout=30, env=env, cwd=REPO
    )
    assert result.returncode == 2
    assert "database.dsn" in result.stderr


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _wait_until_serving(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "the relay exited"
        try:
            if _get(url + "/healthz")[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("relay did not start serving")


def test_password_never_logged_and_sigterm_exits_0(db_dsn: str) -> None:
    """Run against an unreachable database with a password: log lines mention the
    target, never the password; then a real one; SIGTERM stops it cleanly."""
    secret = "Sup3r-Secret-Pw"
    port = free_port()
    dead_port = free_port()
    process = subprocess.Popen(
        relay_command(
            "run",
            "--dsn",
            f"postgresql://relay:{secret}@127.0.0.1:{dead_port}/nowhere?connect_timeout=2",
            "--listen",
            f"127.0.0.1:{port}",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    try:
        _wait_until_serving(f"http://127.0.0.1:{port}", process)
        status, body = _get(f"http://127.0.0.1:{port}/api/system-status")
        assert status == 200
        assert json.loads(body)["stable"] is None
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 503
        time.sleep(1.5)  # a few reconnect attempts get logged
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
        assert process.returncode == 0
        assert time.monotonic() - started < 5
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert secret not in output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "database_disconnected" in events, output
    assert "stopped" in events
    assert any(f"127.0.0.1:{dead_port}" in json.dumps(line) for line in lines)


def test_password_in_dsn_is_masked_even_in_library_errors(tmp_path: Path) -> None:
    """A DSN libpq cannot parse is echoed by some error paths: it must still be masked."""
    secret = "An0ther-Secret"
    result = run("db", "install", "--dsn", f"postgresql://u:{secret}@127.0.0.1:1/x?sslmode=bogus")
    assert result.returncode == 1
    assert secret not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("listen", ["nonsense", "1.2.3.4:99999"])
def test_bad_listen_flag_exits_2(listen: str) -> None:
    result = run("run", "--dsn", "postgresql://x@y/z", "--listen", listen)
    assert result.returncode == 2
    assert "http.listen" in result.stderr


def test_an_unparsable_dsn_is_a_config_error_that_never_repeats_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('database:\n  dsn: "host=db password=s3cret-pw port"\n')
    for command in (("check", "--config", str(bad)), ("run", "--config", str(bad))):
        result = run(*command)
        assert result.returncode == 2, command
        assert "database.dsn: cannot be parsed" in result.stderr
        assert "s3cret-pw" not in result.stderr + result.stdout


def test_a_password_on_the_command_line_is_warned_about_and_not_printed() -> None:
    result = run("db", "install", "--print", "--dsn", "postgresql://u:s3cret-pw@db/x")
    assert result.returncode == 0
    assert "--dsn carries a password" in result.stderr
    assert "s3cret-pw" not in result.stderr
