"""The figures `python -m bench.compare` sets side by side, read from a run's benchmarks.json.

Each figure has a kind that says which way is worse: ``throughput`` (a rate or a fraction
delivered: lower is worse), ``latency`` (a delay: higher is worse) and ``cost`` (CPU, memory,
reads per request: higher is worse). Counts that are 0 when all is well (stale answers, lost
payloads) are not figures: a ratio of them means nothing; the benchmarks' own sections show
them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from typing import Any

KINDS = ("throughput", "latency", "cost")
HIGHER_IS_WORSE = frozenset({"latency", "cost"})

Figure = tuple[str, str, float]  # name, kind, value


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _pick(prefix: str, row: dict[str, Any], fields: dict[str, str]) -> Iterator[Figure]:
    """``fields`` maps a key of ``row`` to its kind; a key absent or null in the row is skipped."""
    for key, kind in fields.items():
        value = _number(row.get(key))
        if value is not None:
            yield f"{prefix} {key}", kind, value


_FLIP = {"connect_s": "latency", "p50_ms": "latency", "p99_ms": "latency"}


def _fanout(rows: list[dict[str, Any]]) -> Iterator[Figure]:
    for r in rows:
        fields = {**_FLIP, "min_fraction": "throughput", "rss_per_client_kib": "cost"}
        yield from _pick(f"fanout {r['server']} {r['clients']:,}", r, fields)


def _feed(rows: list[dict[str, Any]]) -> Iterator[Figure]:
    for r in rows:
        fields = {
            "delivered": "throughput",
            "send_rate": "throughput",
            "p50_ms": "latency",
            "p99_ms": "latency",
            "rss_per_client_kib": "cost",
        }
        yield from _pick(f"feed coalesce {r['coalesce']}", r, fields)


def _triggers(t: dict[str, Any]) -> Iterator[Figure]:
    tps = {variant: statistics.median(values) for variant, values in t["tps"].items()}
    cpu = {variant: statistics.median(values) for variant, values in t["cpu_ms"].items()}
    for variant in tps:
        yield f"triggers {variant} tps", "throughput", tps[variant]
        yield f"triggers {variant} cpu_ms per task", "cost", cpu[variant]
    # Against no trigger in the same run (section 2's ratios): the neighbours' load falls
    # on both, so these move less than the figures themselves.
    for variant in tps:
        if variant != "none":
            yield f"triggers {variant} tps / none's", "throughput", tps[variant] / tps["none"]
            yield f"triggers {variant} CPU: none's / its", "throughput", cpu["none"] / cpu[variant]


def _details(d: dict[str, Any]) -> Iterator[Figure]:
    yield from _pick("details", d, {"p50_ms": "latency", "p99_ms": "latency"})
    yield "details queries per request", "cost", d["relay_queries"] / d["requests"]


def _scaleout(s: dict[str, Any]) -> Iterator[Figure]:
    fields = {**_FLIP, "min_fraction": "throughput"}
    yield from _pick(f"scaleout {s['relays']} relays {s['clients']:,}", s, fields)


def _notify(rows: list[dict[str, Any]]) -> Iterator[Figure]:
    for r in rows:
        fields = {"tps": "throughput", "latency_ms": "latency"}
        yield from _pick(f"notify {r['listeners']} listeners", r, fields)


def _unhinted(u: dict[str, Any]) -> Iterator[Figure]:
    for kind, values in u["delays_ms"].items():
        yield f"unhinted {kind} median_ms", "latency", statistics.median(values)


def _waiters(w: dict[str, Any]) -> Iterator[Figure]:
    fields = {key: "latency" for key in ("fresh_p50_ms", "fresh_p99_ms")}
    fields.update({key: "latency" for key in ("release_p50_ms", "release_p99_ms")})
    yield from _pick("waiters", w, fields)
    if w["fresh_requests"]:
        reads = w["fresh_reads_issued"] / w["fresh_requests"]
        yield "waiters fresh reads per request", "cost", reads


def _feeds(f: dict[str, Any]) -> Iterator[Figure]:
    for b in f["bursts"]:
        fields = {"final_p50_ms": "latency", "final_p99_ms": "latency", "event_p50_ms": "latency"}
        yield from _pick(f"feeds burst {b['clients']:,}", b, fields)
        calls = b["statement_calls"] if b["statement_calls"] is not None else b["enrich_calls"]
        yield f"feeds burst {b['clients']:,} queries per payload", "cost", calls / b["updates"]
    yield from _pick("feeds replay", f["replay"], {"caught_up_ms": "latency"})


def _readcost(r: dict[str, Any]) -> Iterator[Figure]:
    for phase, row in r["phases"].items():
        yield from _pick(f"readcost {phase} index", row, {"p50_ms": "latency"})


# The parts of `python -m bench` whose figures are compared, by their key in benchmarks.json
# (``fanout`` also writes ``feed``); ``writers`` is left out: about 18 minutes a run.
READERS: dict[str, Callable[[Any], Iterator[Figure]]] = {
    "fanout": _fanout,
    "feed": _feed,
    "triggers": _triggers,
    "details": _details,
    "scaleout": _scaleout,
    "notify": _notify,
    "unhinted": _unhinted,
    "waiters": _waiters,
    "feeds": _feeds,
    "readcost": _readcost,
}
PARTS = tuple(name for name in READERS if name != "feed")


def figures(raw: dict[str, Any]) -> list[Figure]:
    """Every figure of one run's benchmarks.json, in the order of READERS."""
    found: list[Figure] = []
    for key, read in READERS.items():
        if key in raw:
            found.extend(read(raw[key]))
    return found


def verdict(kind: str, ratio: float, budget: float) -> str:
    """``worse``, ``better`` or ``same`` for head/base = ``ratio`` within ``budget`` (0.15: 15%)."""
    worse, better = ratio > 1 + budget, ratio < 1 - budget
    if kind not in HIGHER_IS_WORSE:
        worse, better = ratio < 1 - budget, ratio > 1 + budget
    return "worse" if worse else "better" if better else "same"
