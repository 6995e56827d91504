"""systemd: the notify protocol on a real datagram socket; the unit checked by systemd-analyze."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.fanout.systemd import Notifier, watchdog_interval
from tests.support import execute, relay_config, running_relay

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "stability-relay.service"
PROCESSING = "INSERT INTO public.import_job (slug, state) VALUES ('job', 'processing_data')"


class NotifyReceiver:
    """The systemd side: a bound datagram socket that collects what the relay sends."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # the value for $NOTIFY_SOCKET
        self.messages: list[str] = []

    def receive(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            message = self.sock.recv(4096).decode()
        except TimeoutError:
            return None
        self.messages.append(message)
        return message

    def wait_for(self, needle: str, timeout: float = 10.0) -> str:
        """The first message (from now on) containing ``needle``."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.receive(remaining)
            if message is not None and needle in message:
                return message
        raise TimeoutError(f"no {needle!r} within {timeout}s; got {self.messages}")

    async def await_for(self, needle: str, timeout: float = 10.0) -> str:
        """Like ``wait_for``, without blocking the event loop the relay runs on."""
        return await asyncio.to_thread(self.wait_for, needle, timeout)


@pytest.fixture(params=["abstract", "path"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyReceiver]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "abstract":
        name = f"stability-relay-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name.encode())
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    with sock:
        yield NotifyReceiver(sock, address)


def test_relay_process_notifies_ready_status_watchdog_and_stopping(
    db_dsn: str, receiver: NotifyReceiver
) -> None:
    """The real command as systemd runs it: $NOTIFY_SOCKET and $WATCHDOG_USEC in its env."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "NOTIFY_SOCKET": receiver.address,
        "WATCHDOG_USEC": "400000",  # pings every 0.2 s
        "WATCHDOG_PID": "",  # unset: systemd sets it only for forked helpers
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "run", "--dsn", db_dsn, "--listen", f"127.0.0.1:{port}"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = receiver.wait_for("READY=1", timeout=20)
        assert "STATUS=stable" in ready
        # READY=1 comes only once HTTP serves.
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        pings_before = receiver.messages.count("WATCHDOG=1")
        time.sleep(1.0)
        while receiver.receive(0.01) is not None:
            pass
        pings = receiver.messages.count("WATCHDOG=1") - pings_before
        assert 3 <= pings <= 8, f"{pings} pings in 1 s at half of 0.4 s"

        asyncio.run(execute(db_dsn, PROCESSING))
        assert "STATUS=processing: Importing data" in receiver.wait_for("STATUS=")
        process.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in receiver.wait_for("STOPPING=1", timeout=10)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert receiver.messages.index(ready) < len(receiver.messages) - 1
    assert not any("READY=1" in m for m in receiver.messages if m != ready), "READY=1 sent twice"


async def test_ready_after_bounded_wait_when_database_is_unreachable(
    receiver: NotifyReceiver,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    config = relay_config(f"postgresql://relay@127.0.0.1:{dead}/none?connect_timeout=1")
    notifier = Notifier(receiver.address, ready_timeout=0.5)
    started = time.monotonic()
    async with running_relay(config, notifier=notifier):
        ready = await receiver.await_for("READY=1", timeout=5)
        assert time.monotonic() - started < 3
    assert "not reachable yet" in ready
    assert "STOPPING=1" in await receiver.await_for("STOPPING=1", timeout=1)


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval("30000000") == 15.0
    assert watchdog_interval(None) is None
    assert watchdog_interval("0") is None
    assert watchdog_interval("soon") is None
    # WATCHDOG_PID names another process: the watchdog is not ours.
    assert watchdog_interval("30000000", pid=str(os.getpid() + 1)) is None
    assert watchdog_interval("30000000", pid=str(os.getpid())) == 15.0


async def test_without_notify_socket_the_notifier_does_nothing() -> None:
    notifier = Notifier(None, watchdog_usec="1000000")
    assert not notifier.enabled
    await notifier.start()
    assert not notifier.send("READY=1")
    await notifier.aclose()


# The unit file, checked by systemd's own tools.


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is missing: `make ops-deps` installs Debian's systemd package")
    return path


@pytest.fixture
def unit_for_verify(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's command.

    `systemd-analyze verify` fails when the ExecStart program does not exist; on a test
    machine the relay lives in the venv, not in /opt/stability-relay. Nothing else changes.
    """
    command = shutil.which("stability-relay", path=str(Path(sys.executable).parent))
    assert command is not None
    text = UNIT.read_text()
    assert "/opt/stability-relay/bin/stability-relay" in text
    path = tmp_path / "stability-relay.service"
    path.write_text(text.replace("/opt/stability-relay/bin/stability-relay", command))
    return path


def test_unit_passes_systemd_analyze_verify(unit_for_verify: Path) -> None:
    analyze = _systemd_analyze()
    result = subprocess.run(
        [analyze, "verify", str(unit_for_verify)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_unit_security_exposure_is_at_most_2(unit_for_verify: Path) -> None:
    analyze = _systemd_analyze()
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=20", str(unit_for_verify)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    assert exposure <= 2.0, result.stdout
    assert result.returncode == 0, result.stdout


def test_unit_declares_what_operations_rely_on() -> None:
    text = UNIT.read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0].isalpha()
    )
    assert settings["Type"] == "notify"
    assert settings["Restart"] == "on-failure"
    assert settings["DynamicUser"] == "yes"
    assert settings["StateDirectory"] == "stability-relay"
    assert "/etc/stability-relay/" in settings["EnvironmentFile"]
    assert int(settings["LimitNOFILE"]) >= 20_000 + 64  # http.max_clients default
    assert settings["WatchdogSec"]
