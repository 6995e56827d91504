"""The package layout that docs/architecture.md describes: stages as sub-packages, imports in
one direction, no cycles (type-only ones included), the plumbing at the bottom, development
tools kept off the daemon."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.ops_support import REPO

PACKAGE = REPO / "relay"
STAGES = ("source", "state", "fanout", "http")
# Imports that go against the data path on purpose (docs/architecture.md says why).
UPSTREAM_ALLOWED = {
    ("relay.fanout.takeover", "relay.http.sockets"),  # a stream taken over stays counted
}
# Above the plumbing: the stages, the command, the development tools, the wiring and the entry
# point. Every other module (config/, metrics, logs, errors, tasks, backoff, durations, and any
# new top-level module) is plumbing, which every stage may import and which imports none.
ABOVE_PLUMBING = (*STAGES, "cli", "devtools", "app", "__main__")
# (plumbing module, module above it) pairs allowed, each with its reason: none.
PLUMBING_ALLOWED: set[tuple[str, str]] = set()


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every relay module ``path`` imports, under ``TYPE_CHECKING`` or in a function too."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("relay"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                targets.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            targets.update(a.name for a in node.names if a.name.startswith("relay"))
    return {t for t in targets if t in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in STAGES else None


def is_plumbing(module: str) -> bool:
    parts = module.split(".")
    return len(parts) == 1 or parts[1] not in ABOVE_PLUMBING


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str], done: set[str]) -> None:
        for target in sorted(edges[module]):
            if target in path:
                cycles.append([*path[path.index(target) :], target])
            elif target not in done:
                done.add(target)
                visit(target, [*path, target], done)

    for module in sorted(edges):
        visit(module, [module], set())
    # A package's __init__ re-exporting its own submodules is not a cycle of behaviour.
    real = [c for c in cycles if not all(m.startswith(c[0]) or c[0].startswith(m) for m in c)]
    assert real == [], real


def test_imports_follow_the_data_path() -> None:
    upstream = []
    for module, targets in graph().items():
        for target in targets:
            here, there = stage(module), stage(target)
            against = here and there and STAGES.index(there) > STAGES.index(here)
            if against and (module, target) not in UPSTREAM_ALLOWED:
                upstream.append((module, target))
    assert upstream == [], upstream


def test_the_plumbing_imports_no_stage() -> None:
    edges = graph()
    plumbing = sorted(module for module in edges if is_plumbing(module))
    # The classification itself: these are the plumbing, whatever else joins them.
    expected = ["relay.config", "relay.config.activities", "relay.config.profiles"]
    expected += ["relay.config.settings", "relay.metrics", "relay.logs", "relay.errors"]
    expected += ["relay.tasks", "relay.backoff", "relay.durations"]
    assert set(expected) <= set(plumbing), plumbing
    assert not any(is_plumbing(m) for m in ("relay.app", "relay.source.listener", "relay.cli"))
    upward = [
        (module, target)
        for module in plumbing
        for target in sorted(edges[module])
        if not is_plumbing(target) and (module, target) not in PLUMBING_ALLOWED
    ]
    assert upward == [], upward


def test_the_daemon_never_imports_the_development_tools() -> None:
    offenders = [
        (module, target)
        for module, targets in graph().items()
        for target in targets
        if target.startswith("relay.devtools")
        and not module.startswith(("relay.devtools", "relay.cli"))
    ]
    assert offenders == [], offenders


def test_architecture_doc_names_every_sub_package() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text()
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    missing = [name for name in packages if f"{name}/" not in doc]
    assert missing == [], f"docs/architecture.md does not describe {missing}"
