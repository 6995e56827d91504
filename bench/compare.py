"""``python -m bench.compare --base REV [--quick] [--only NAME ...]``: the benchmarks of this
working tree against those of another revision, in the same run.

REV is checked out into a temporary git worktree with a venv of its own: the tree on its path
(a .pth line, what an editable install writes; no build step, so no network) and this venv's
site-packages for the dependencies. Each round runs ``python -m bench`` on the base, then on
the head (A B A B ...), so that both share the machine's noise; each run writes its docs to a
temporary directory, never to docs/. The figures (bench/figures.py) are read from each run's
benchmarks.json; the table gives the median of each side, head/base, and a verdict against a
noise budget per kind of figure. Exit status: 0, or 1 with ``--fail-over`` when a figure is
worse than its budget or missing on one side, or 2 when a run could not be made.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT
from bench.figures import KINDS, PARTS, figures, verdict

DEFAULT_BUDGET = 0.15
COLUMNS = ("figure", "kind", "base", "head", "ratio", "spread", "verdict")
# What finishes in a few minutes with --quick on two shared cores (docs/benchmarks.md, the
# section on this command); fanout (1,000 clients, four servers) takes longer, and waiters
# waits for 1,000 long polls that the relay's per-address cap (100) never lets in.
QUICK = ("notify", "details", "unhinted", "triggers", "feeds", "readcost", "scaleout")


class CompareError(Exception):
    """A side could not be prepared or run; the message says why and where the log is."""


@dataclass
class Side:
    """One tree to benchmark: its directory and the interpreter that runs it."""

    label: str
    tree: Path
    python: Path
    runs: list[dict[str, tuple[str, float]]] = field(default_factory=list)

    def medians(self) -> dict[str, tuple[str, float, float]]:
        """Each figure's kind, median over the runs and spread: (max - min) / median."""
        names = {name: kind for run in self.runs for name, (kind, _) in run.items()}
        found = {}
        for name, kind in names.items():
            values = [run[name][1] for run in self.runs if name in run]
            middle = statistics.median(values)
            spread = (max(values) - min(values)) / middle if middle else 0.0
            found[name] = (kind, middle, spread)
        return found


def _git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise CompareError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def checkout(name: str, rev: str, work: Path) -> Iterator[Side]:
    """REV in a temporary worktree with its own venv; the worktree is removed after."""
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except CompareError:
        raise CompareError(f"{rev!r} is not a commit of {ROOT}") from None
    tree = work / name
    _git("worktree", "add", "--detach", str(tree), commit)
    try:
        venv = work / f"{name}-venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        lib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
        ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
        # A plain path line: the dependencies' directory joins sys.path, but its own .pth files
        # (this venv's editable install of the head) are not read.
        (lib / "_bench_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
        (lib / "_bench_tree.pth").write_text(f"{tree}\n")
        yield Side(f"{name} {rev} ({commit[:7]})", tree, venv / "bin" / "python")
    finally:
        with contextlib.suppress(CompareError):
            _git("worktree", "remove", "--force", str(tree))


def head_side() -> Side:
    changed = _git("status", "--porcelain", "--untracked-files=no").splitlines()
    label = f"head {_git('rev-parse', '--short', 'HEAD')} + working tree ({len(changed)} changed)"
    return Side(label, ROOT, Path(sys.executable))


def check_imports(side: Side) -> None:
    """The side's interpreter, run in its tree, imports relay and bench from that tree."""
    code = "import bench, relay; print(relay.__file__); print(bench.__file__)"
    done = subprocess.run(
        [str(side.python), "-c", code], cwd=side.tree, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise CompareError(f"{side.label}: cannot import relay and bench: {done.stderr.strip()}")
    for path in done.stdout.split():
        if not Path(path).resolve().is_relative_to(side.tree.resolve()):
            raise CompareError(f"{side.label}: imports {path}, not from {side.tree}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Interrupt the run's session as Ctrl-C would (its servers are closed on the way out);
    kill it if it is still there after 30 s."""
    for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
            return


def run_once(side: Side, bench_args: list[str], out: Path, timeout: float) -> float:
    """One ``python -m bench`` of the side, docs and logs under ``out``; its figures are kept."""
    out.mkdir(parents=True)
    log = out / "bench.out"
    env = {**os.environ, "BENCH_LOG_DIR": str(out / "logs")}
    started = time.monotonic()
    with log.open("wb") as sink:
        # A session of its own, so that a run that overstays is stopped with its children
        # (the embedded PostgreSQL, the relays, the client swarm).
        proc = subprocess.Popen(
            [str(side.python), "-m", "bench", *bench_args, "--docs", str(out / "docs")],
            cwd=side.tree,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout)
        except BaseException as error:
            _stop(proc)
            if isinstance(error, subprocess.TimeoutExpired):
                message = f"{side.label}: no result within {timeout:g} s; see {log}"
                raise CompareError(message) from None
            raise
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
        raise CompareError(f"{side.label}: python -m bench exited {code}; see {log}:\n{tail}")
    raw = json.loads((out / "docs" / "benchmarks.json").read_text())
    side.runs.append({name: (kind, value) for name, kind, value in figures(raw)})
    return time.monotonic() - started


@dataclass(frozen=True)
class Row:
    figure: str
    kind: str
    base: float | None
    head: float | None
    ratio: float | None
    spread: float
    verdict: str


def compare(base: Side, head: Side, budgets: dict[str, float]) -> list[Row]:
    ours, theirs = base.medians(), head.medians()
    rows = []
    for name in list(ours) + [n for n in theirs if n not in ours]:
        kind = (ours.get(name) or theirs[name])[0]
        a = ours[name][1] if name in ours else None
        b = theirs[name][1] if name in theirs else None
        spread = max(side[name][2] for side in (ours, theirs) if name in side)
        if a is None or b is None:
            rows.append(Row(name, kind, a, b, None, spread, "missing"))
            continue
        ratio = b / a if a else (1.0 if b == 0 else float("inf"))
        rows.append(Row(name, kind, a, b, ratio, spread, verdict(kind, ratio, budgets[kind])))
    return rows


def _value(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def table(rows: list[Row], budgets: dict[str, float]) -> list[str]:
    lines = [f"| {' | '.join(COLUMNS)} |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}"
        mark = f"**{r.verdict}**" if r.verdict in ("worse", "missing") else r.verdict
        values = (_value(r.base), _value(r.head), ratio, f"{100 * r.spread:.0f}%", mark)
        lines.append(f"| {r.figure} | {r.kind} | {' | '.join(values)} |")
    rule = ", ".join(f"{kind} {100 * budgets[kind]:g}%" for kind in KINDS)
    lines += [
        "",
        f"ratio = head / base, medians of each side's runs; noise budgets: {rule}; spread: "
        "(max - min) / median of one side's runs, the larger side's (a ratio within it is noise).",
    ]
    return lines


def _budget(text: str) -> tuple[str, float]:
    kind, sep, value = text.partition("=")
    if not sep or kind not in KINDS:
        raise argparse.ArgumentTypeError(f"expected KIND=FRACTION with KIND one of {KINDS}")
    try:
        return kind, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction: {value!r}") from None


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--head", help="a git revision instead of this working tree")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        default=list(QUICK),
        help=f"default: {' '.join(QUICK)} (7 to 9 minutes a run with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="python -m bench's reduced sizes")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side (A B A B)")
    parser.add_argument(
        "--noise", type=float, default=DEFAULT_BUDGET, help="budget of every kind (0.15: 15%%)"
    )
    parser.add_argument(
        "--tolerance",
        type=_budget,
        action="append",
        default=[],
        metavar="KIND=FRACTION",
        help=f"the budget of one kind ({', '.join(KINDS)}), over --noise",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for one run")
    parser.add_argument("--fail-over", action="store_true", help="exit 1 if a figure is worse")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    budgets = {kind: args.noise for kind in KINDS} | dict(args.tolerance)
    bench_args = ["--only", *args.only] + (["--quick"] if args.quick else [])
    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    try:
        with contextlib.ExitStack() as trees:
            base = trees.enter_context(checkout("base", args.base, work))
            head = (
                trees.enter_context(checkout("head", args.head, work)) if args.head else head_side()
            )
            for side in (base, head):
                check_imports(side)
            print(f"{base.label} against {head.label}: python -m bench {' '.join(bench_args)}")
            for n in range(1, args.rounds + 1):
                for side, name in ((base, "base"), (head, "head")):
                    took = run_once(side, bench_args, work / f"{name}-{n}", args.timeout)
                    print(f"  {name} run {n}/{args.rounds}: {took:.0f} s", flush=True)
    except CompareError as error:
        kept = [path.name for path in work.glob("*-[0-9]*") if path.is_dir()]
        if kept:
            print(f"bench.compare: {error}\n(runs kept in {work})", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
            print(f"bench.compare: {error}", file=sys.stderr)
        return 2
    shutil.rmtree(work, ignore_errors=True)
    rows = compare(base, head, budgets)
    print("\n".join(table(rows, budgets)))
    failed = [r for r in rows if r.verdict in ("worse", "missing")]
    return 1 if args.fail_over and failed else 0


if __name__ == "__main__":
    sys.exit(main())
