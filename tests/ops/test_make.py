"""The Makefile's tool installs, run by the real ``make`` with ``apt-get`` stood in for.

``make ops-deps`` and ``make browser-deps`` run as they do on a fresh clone, with a PATH that
holds none of the tools, an ``id`` that says root, and an ``apt-get`` of the test's: it
records how it was called and, for ``update``, runs the real ``apt-get update`` (as root; its
refusal as apt 2.6 words it otherwise) against package lists of the test's own, a directory
whose lock the test holds as another ``apt-get update`` would, so what is waited for is apt's
real refusal. Nothing is installed on this machine.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")
# The real apt-get refuses a locked directory even as a user, but it is only run as root.
REAL_APT = shutil.which("apt-get") if os.geteuid() == 0 else None
# What the recipes and .ci/apt-install run besides apt-get, id and the tools.
UTILITIES = ("bash", "tr", "sort", "xargs", "echo", "sleep", "cat", "env", "chmod")

pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")

FAKE_APT = """#!/bin/bash
echo "$*" >> "$FAKE/calls"
case " $* " in
  *" update "*)
    if [ -n "$REAL_APT" ]; then
      exec "$REAL_APT" -o Dir::State::Lists="$FAKE/lists" -o Dir::Cache="$FAKE/cache" \\
        -o Dir::Etc::sourcelist="$FAKE/sources.list" -o Dir::Etc::sourceparts="$FAKE/parts" "$@"
    fi
    # No apt-get here: its refusal, as apt 2.6 words it, while the test holds the lock.
    try='import fcntl, sys; fcntl.lockf(open(sys.argv[1], "a"), fcntl.LOCK_EX | fcntl.LOCK_NB)'
    if ! python3 -c "$try" "$FAKE/lists/lock" 2>/dev/null; then
      echo "E: Could not get lock $FAKE/lists/lock. It is held by process 1 (apt-get)" >&2
      exit 100
    fi
    exit 0 ;;
  *" install "*)
    if [ "$INSTALL" = ok ]; then
      for tool in $TOOLS; do
        printf '#!/bin/sh\\n' > "$FAKE/bin/$tool" && chmod +x "$FAKE/bin/$tool"
      done
      exit 0
    fi
    echo "E: Unable to locate package caddy" >&2
    exit 100 ;;
esac
"""


@dataclass
class Machine:
    """A PATH with the utilities, no tools, and the test's apt-get."""

    root: Path

    @property
    def calls(self) -> list[str]:
        path = self.root / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def env(self, install: str, tools: str, **extra: str) -> dict[str, str]:
        env = {
            "PATH": str(self.root / "bin"),
            "FAKE": str(self.root),
            "REAL_APT": REAL_APT or "",
            "INSTALL": install,
            "TOOLS": tools,
            "HOME": str(self.root),
            "CHROMIUM": str(self.root / "bin" / "chromium"),
            **extra,
        }
        return env

    def make(self, target: str, env: dict[str, str]) -> subprocess.Popen[str]:
        assert MAKE is not None
        return subprocess.Popen(
            [MAKE, "--no-print-directory", target],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in UTILITIES:
        found = shutil.which(name)
        assert found, name
        (bin_dir / name).symlink_to(found)
    (bin_dir / "python3").symlink_to(sys.executable)
    apt = bin_dir / "apt-get"
    apt.write_text(FAKE_APT)
    apt.chmod(0o755)
    user = bin_dir / "id"  # the Makefile installs only as root: it is told it runs as root
    user.write_text("#!/bin/sh\necho 0\n")
    user.chmod(0o755)
    for directory in ("lists/partial", "cache", "parts"):
        (tmp_path / directory).mkdir(parents=True)
    (tmp_path / "sources.list").write_text("")
    (tmp_path / "lists" / "lock").touch()
    yield Machine(tmp_path)


OPS_TOOLS = "caddy promtool prometheus systemd-analyze pgbouncer"


def test_the_apt_steps_wait_for_another_apt_get_holding_the_lists(machine: Machine) -> None:
    with open(machine.root / "lists" / "lock", "a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)  # another apt-get update is running
        process = machine.make("ops-deps", machine.env("ok", OPS_TOOLS))
        assert process.stdout is not None
        output = []
        for line in process.stdout:
            output.append(line)
            if "waiting" in line:
                break
        else:
            pytest.fail("never waited: " + "".join(output))
        assert process.poll() is None, "still waiting while the lists are locked"
        fcntl.lockf(lock, fcntl.LOCK_UN)  # the other apt-get is done
        rest, _ = process.communicate(timeout=60)
    output.append(rest)
    assert process.returncode == 0, "".join(output)
    assert "could not install" not in "".join(output)
    updates = [call for call in machine.calls if call.endswith(" update")]
    installs = [call for call in machine.calls if " install " in call]
    assert len(updates) >= 2 and len(installs) == 1, machine.calls
    for call in (*updates, *installs):
        assert call.startswith("-o DPkg::Lock::Timeout=600 "), call
    assert installs[0].endswith("caddy pgbouncer prometheus systemd")


@pytest.mark.parametrize(
    ("ci", "allow", "fails"),
    [
        (None, None, False),
        ("false", None, False),
        ("true", None, True),
        ("1", None, True),
        ("true", "1", False),
    ],
)
def test_under_ci_a_tool_that_cannot_be_installed_fails_the_run(
    machine: Machine, ci: str | None, allow: str | None, fails: bool
) -> None:
    extra = {"CI": ci} if ci is not None else {}
    if allow is not None:
        extra["ALLOW_MISSING_TOOLS"] = allow
    for target in ("ops-deps", "browser-deps"):
        process = machine.make(target, machine.env("fail", "", **extra))
        output, _ = process.communicate(timeout=60)
        assert "could not install" in output, output
        if fails:
            assert process.returncode != 0, output
            assert f"under CI (CI={ci})" in output and "must run, not skip" in output, output
        else:
            assert process.returncode == 0, output
            assert "will skip" in output, output


def test_a_tool_still_missing_after_a_good_install_is_said(machine: Machine) -> None:
    process = machine.make("ops-deps", machine.env("ok", "caddy", CI="true"))
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0, output
    assert "yet still missing: promtool prometheus systemd-analyze pgbouncer" in output


def test_make_test_lists_every_skipped_test_with_its_reason() -> None:
    assert MAKE is not None
    dry = subprocess.run(
        [MAKE, "-n", "--no-print-directory", "pytest"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [command] = [line for line in dry.stdout.splitlines() if "bin/pytest" in line]
    assert command.split()[1:] == ["-q", "-rs", "-n", "3", "--dist", "loadfile"]
