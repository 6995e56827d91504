"""``python -m bench.compare`` (bench/compare.py), so that it cannot rot: the cheapest benchmark
(NOTIFY cost, reduced size) once on HEAD in a temporary worktree and once on this working tree.
No figure is asserted, and no verdict: the table is (its rows, its ratios), and the worktree is
gone after. The verdict rule itself is checked on given ratios."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.common import ROOT
from bench.figures import KINDS, verdict

VERDICTS = {"same", "better", "worse", "missing"}


def _compare_worktrees() -> list[str]:
    listing = subprocess.run(
        ["git", "worktree", "list", "--porcelain"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in listing.stdout.splitlines() if "/bench-compare-" in line]


@pytest.mark.timeout(900)
def test_compare_prints_a_row_per_figure_against_head() -> None:
    command = ["-m", "bench.compare", "--base", "HEAD", "--only", "notify", "--quick"]
    done = subprocess.run(
        [sys.executable, *command, "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("base HEAD (") and " against head " in lines[0]
    header = lines.index("| figure | kind | base | head | ratio | spread | verdict |")
    cells = [line.strip("|").split("|") for line in lines[header + 2 :] if line.startswith("|")]
    rows = [[cell.strip() for cell in row] for row in cells]
    assert [row[0] for row in rows] == [
        f"notify {n} listeners {figure}" for n in (1, 50, 200) for figure in ("tps", "latency_ms")
    ]
    for name, kind, base, head, ratio, spread, mark in rows:
        assert kind in KINDS, name
        assert float(base.replace(",", "")) > 0 and float(head.replace(",", "")) > 0, name
        assert float(ratio) > 0, name
        assert spread == "0%", name  # one run a side
        assert mark.strip(" *") in VERDICTS, name
    assert _compare_worktrees() == []


def test_verdict_follows_the_kind_of_figure() -> None:
    assert verdict("throughput", 0.80, 0.15) == "worse"
    assert verdict("throughput", 1.20, 0.15) == "better"
    assert verdict("latency", 1.20, 0.15) == "worse"
    assert verdict("latency", 0.80, 0.15) == "better"
    assert verdict("cost", 1.16, 0.15) == "worse"
    assert verdict("cost", 1.14, 0.15) == "same"
    assert verdict("latency", 1.20, 0.25) == "same"
    assert verdict("throughput", float("inf"), 0.15) == "better"
