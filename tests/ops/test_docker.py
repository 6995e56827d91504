"""The Dockerfile, checked without a Docker engine: what the image runs is what the README says,
it runs unprivileged, and its health check works against a real relay. tests/ops/test_image.py
builds the image with podman and runs it."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
from fnmatch import fnmatch

from tests.ops_support import REPO, free_port
from tests.support import relay_config, running_relay

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every line, continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def build_args() -> dict[str, str]:
    """The global ARGs' defaults (before the first FROM), ${NAME} of earlier ones expanded."""
    found: dict[str, str] = {}
    for keyword, arguments in instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            found[name] = re.sub(r"\$\{(\w+)\}", lambda m: found[m.group(1)], default)
    return found


def base_image() -> str:
    """What both stages start from unless `--build-arg BASE_IMAGE=...` says otherwise."""
    return build_args()["BASE_IMAGE"]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def exec_form(arguments: str) -> list[str]:
    parsed = json.loads(arguments)
    assert isinstance(parsed, list), f"use the exec (JSON) form, not a shell string: {arguments}"
    return [str(part) for part in parsed]


def last(stage: list[tuple[str, str]], keyword: str) -> str:
    values = [arguments for kw, arguments in stage if kw == keyword]
    assert values, f"the final stage has no {keyword}"
    return values[-1]


def test_image_runs_the_command_the_readme_documents() -> None:
    stage = final_stage()
    command = exec_form(last(stage, "ENTRYPOINT")) + exec_form(last(stage, "CMD"))
    readme = (REPO / "README.md").read_text()
    documented = re.search(r"entry command: `(stability-relay [^`]+)`", readme)
    assert documented, "README: the Docker section must say: entry command: `stability-relay …`"
    assert command == shlex.split(documented.group(1))


def test_image_is_multi_stage_slim_and_unprivileged() -> None:
    froms = [arguments for keyword, arguments in instructions() if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: build, then a clean runtime image"
    assert all(line.split()[0] == "${BASE_IMAGE}" for line in froms), froms
    assert base_image() == "python:3.11-slim-bookworm"
    docker_section = (REPO / "README.md").read_text().partition("### Docker")[2]
    assert f"`{base_image()}`" in docker_section.partition("\n### ")[0]
    stage = final_stage()
    user = last(stage, "USER").split(":")[0]
    assert user not in ("root", "0"), "the relay must not run as root"
    volumes = exec_form(last(stage, "VOLUME"))
    assert volumes == ["/etc/stability-relay", "/var/lib/stability-relay"]
    assert last(stage, "STOPSIGNAL") == "SIGTERM"
    env = last(stage, "ENV")
    assert "STATE_DIRECTORY=/var/lib/stability-relay" in env


def test_build_copies_only_what_the_context_holds() -> None:
    """Each COPY source exists and is let through by .dockerignore (an allow-list)."""
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for rule in rules:
            negated = rule.startswith("!")
            pattern = rule.removeprefix("!").rstrip("/")
            if fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negated
        return keep

    copies = [
        arguments.split()
        for keyword, arguments in instructions()
        if keyword == "COPY" and not arguments.startswith("--from")
    ]
    assert copies
    for *sources, _destination in copies:
        for source in sources:
            assert (REPO / source).exists(), source
            assert included(source), f"{source} is excluded by .dockerignore"
    for private in (".venv", ".git", "tests", "config.yaml"):
        assert not included(private), f"{private} must not reach the build context"


async def test_healthcheck_command_passes_on_a_serving_relay_and_fails_without(
    db_dsn: str,
) -> None:
    healthcheck = last(final_stage(), "HEALTHCHECK")
    command = exec_form(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert command[0] == "python" and "127.0.0.1:8080/healthz" in command[-1]
    port = free_port()
    config = relay_config(db_dsn, http={"listen": f"127.0.0.1:{port}"})

    def probe(target_port: int) -> int:
        script = command[-1].replace("127.0.0.1:8080", f"127.0.0.1:{target_port}")
        args = [sys.executable, *command[1:-1], script]
        return subprocess.run(args, capture_output=True, timeout=30).returncode

    async with running_relay(config):
        assert await asyncio.to_thread(probe, port) == 0
    assert probe(free_port()) != 0
