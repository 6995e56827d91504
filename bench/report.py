"""Writes docs/benchmarks.md, docs/benchmarks.json and docs/fanout-latency.png from the results."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from bench.fanout import FanoutResult

PNG = "fanout-latency.png"


def machine() -> str:
    import aiohttp
    import psycopg

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import os

    return (
        f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"psycopg {psycopg.__version__}"
    )


def plot(fanout: list[FanoutResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    styles = {
        "relay": ("tab:blue", "stability-relay"),
        "relay-public": ("tab:cyan", "stability-relay, public path"),
        "baseline": ("tab:red", "naive baseline"),
        "floor": ("tab:gray", "floor (writes only)"),
    }
    for server, (color, label) in styles.items():
        rows = sorted((r for r in fanout if r.server == server), key=lambda r: r.clients)
        if not rows:
            continue
        xs = [r.clients for r in rows]
        p50 = [r.summary()["p50_ms"] for r in rows]
        p99 = [r.summary()["p99_ms"] for r in rows]
        ax.plot(xs, p99, "o-", color=color, label=f"{label}: p99")
        ax.plot(xs, p50, "s--", color=color, alpha=0.6, label=f"{label}: p50")
    ax.set_xscale("log")
    ax.set_xlabel("connected SSE clients")
    ax.set_ylabel("commit-to-client latency (ms)")
    ax.set_title("Fan-out: one state flip, from COMMIT to every client")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def write(results: dict[str, Any], command: str, docs: Path) -> Path:
    docs.mkdir(parents=True, exist_ok=True)
    fanout: list[FanoutResult] = results.get("fanout", [])
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d', time.gmtime())}: "
        f"{machine()}. Embedded PostgreSQL {results.get('pg_version', '?')} "
        "(fsync off), everything on loopback. The machine is shared and noisy: compare the "
        "columns of one run, not runs with each other. Raw figures: "
        "[`benchmarks.json`](benchmarks.json). How each figure is made: `bench/`.",
        "",
    ]
    if fanout:
        plot(fanout, docs / PNG)
        lines += _fanout_section(fanout)
    if "feed" in results:
        lines += _feed_section(results["feed"], fanout)
    if "triggers" in results:
        lines += _trigger_section(results["triggers"])
    if "details" in results:
        lines += _details_section(results["details"])
    if "unhinted" in results:
        lines += _unhinted_section(results["unhinted"])
    if "waiters" in results:
        lines += _waiters_section(results["waiters"])
    if "scaleout" in results or "notify" in results:
        lines += _scale_section(results.get("scaleout"), results.get("notify"))
    if "feeds" in results:
        lines += _feeds_section(results["feeds"])
    if "readcost" in results:
        lines += read_cost_section(results["readcost"])
    if "writers" in results:
        lines += writers_section(results["writers"], command)
    lines += (Path(__file__).parent / "notes.md").read_text().splitlines()
    path = docs / "benchmarks.md"
    path.write_text("\n".join(lines) + "\n")
    raw = {
        key: ([r.summary() for r in value] if key == "fanout" else value)
        for key, value in results.items()
    }
    (docs / "benchmarks.json").write_text(json.dumps(raw, indent=1, default=_plain) + "\n")
    return path


def _plain(obj: Any) -> Any:
    return obj.__dict__


def _fanout_section(fanout: list[FanoutResult]) -> list[str]:
    lines = [
        "## 1. Fan-out: N clients, state flips made by real commits",
        "",
        f"![commit-to-client latency against client count]({PNG})",
        "",
        "The clients live in their own process (bare asyncio protocols); each server in its "
        "own. Latency runs from just before the committing statement is sent to the moment a "
        "client's process reads the event (CLOCK_MONOTONIC, shared by the processes); it "
        "includes the commit, the NOTIFY, the server's read of `is_system_stable()` and the "
        "fan-out. RSS per client: the server's VmRSS after connecting everyone, minus before, "
        "over N (after a 20-client warm-up).",
        "",
        "| server | clients | connect all (s, best of 2) | RSS / client (KiB) | flips "
        "| worst flip reached "
        "| p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "relay": "**relay**",
        "relay-public": "relay, public path (streams in their handlers)",
        "baseline": "baseline (naive)",
        "floor": "floor (writes only)",
    }
    order = list(names)
    for r in sorted(fanout, key=lambda r: (r.clients, order.index(r.server))):
        s = r.summary()
        lines.append(
            f"| {names[r.server]} | {r.clients:,} "
            f"| {s['connect_s']:.2f} | {s['rss_per_client_kib']:.1f} | {s['flips']} "
            f"| {100 * s['min_fraction']:.1f}% | {s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} |"
        )
    lines.append("")
    by = {(r.server, r.clients): r.summary() for r in fanout}
    top = max(r.clients for r in fanout)
    relay, base = by.get(("relay", top)), by.get(("baseline", top))
    floor = by.get(("floor", top))
    if relay and floor:
        lines += [
            f"Against the floor at {top:,} clients (a server that only writes one pre-encoded "
            "event to every socket per NOTIFY, `bench/floor_server.py`): relay p99 within 1.1 "
            f"times the floor's: {_mark(relay['p99_ms'] <= 1.1 * floor['p99_ms'])} "
            f"({relay['p99_ms']} ms vs {floor['p99_ms']} ms, "
            f"{relay['p99_ms'] / floor['p99_ms']:.2f} times; p50 {relay['p50_ms']} vs "
            f"{floor['p50_ms']} ms).",
            "",
        ]
    if relay and base:
        lines += [
            f"Targets at {top:,} clients:",
            "",
            f"- every flip reaches every client: {_mark(relay['min_fraction'] >= 1.0)} "
            f"({100 * relay['min_fraction']:.1f}% for the worst flip);",
            f"- p99 at most half the baseline's: {_mark(relay['p99_ms'] <= base['p99_ms'] / 2)} "
            f"({relay['p99_ms']} ms vs {base['p99_ms']} ms, "
            f"{relay['p99_ms'] / base['p99_ms']:.2f} times);",
            f"- RSS at most 12 KB per client: "
            f"{_mark(relay['rss_per_client_kib'] * 1024 <= 12_000)} "
            f"({relay['rss_per_client_kib']:.1f} KiB; the baseline "
            f"{base['rss_per_client_kib']:.1f} KiB);",
            f"- connecting everyone no slower than the baseline: "
            f"{_mark(relay['connect_s'] <= base['connect_s'] * 1.05)} "
            f"({relay['connect_s']:.2f} s vs {base['connect_s']:.2f} s; within 5% counts as "
            "a tie on this noisy machine).",
            "",
        ]
    return lines


def _feed_section(feeds: list[Any], fanout: list[FanoutResult]) -> list[str]:
    first = feeds[0]
    lines = [
        "### 1b. A feed under a flood",
        "",
        f"{first.clients:,} clients on one feed (`bench.serve_relay --feed`: unnamed events, no "
        f"filter) while {first.rate:.0f} payloads a second (about 200 bytes, each its own "
        f"commit) are NOTIFYed for {first.seconds:g} s. Without coalescing every client is "
        "owed every payload; with it (by payload type, one type here) only the latest of each "
        "window, and the last payload always. Latency from just before a payload's statement "
        "is sent to its arrival (every 20th payload; with coalescing every one that survives). "
        "The clients run on the same two cores.",
        "",
        "| stream | clients | delivered | got every payload | got the last | p50 (ms) "
        "| p99 (ms) | max (ms) | RSS / client (KiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in feeds:
        how = f"coalesced {f.coalesce}" if f.coalesce else "every payload"
        lines.append(
            f"| feed, {f.send_rate:.0f} payloads/s, {how} | {f.connected:,} "
            f"| {100 * f.delivered:.1f}% | {f.complete_clients:,} | {f.got_last:,} "
            f"| {_ms(f.p50_ms)} | {_ms(f.p99_ms)} | {_ms(f.max_ms)} | {f.rss_per_client_kib:.1f} |"
        )
    same = [r for r in fanout if r.server == "relay" and r.clients == first.clients]
    if same:
        live = same[0].summary()
        lines.append(
            f"| live stream, state flips (above) | {live['connected']:,} "
            f"| {100 * live['min_fraction']:.1f}% (worst flip) | | | {live['p50_ms']} "
            f"| {live['p99_ms']} | {live['max_ms']} | {live['rss_per_client_kib']:.1f} |"
        )
    return [*lines, ""]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _trigger_section(t: Any) -> list[str]:
    lines = [
        "## 2. Trigger cost: worker churn under pgbench",
        "",
        f"{t.clients} pgbench clients, {t.rounds} rounds of {t.seconds:g} s per variant, "
        "variants rotated within each round, the tables reset before each run. One "
        "*task life* is three transactions (insert `pending`, update `processing`, update "
        "`completed`); half the commands are analytics. One script run in ten is an import "
        "job's life instead (start, progress, finish). A real relay (default settings, "
        "its own process) listens, as in production: the seed profile's for none, the seed's, "
        "ours and the two other ways of hinting that ours replaced or complements (the plain "
        "statement trigger, the row triggers: `bench/sql/hint_variants.sql`); none for the "
        "*no relay running* rows; for the statbus row one hinted by statbus's channels. "
        "Its `/metrics` give the notifications it received, its reads of "
        "the activities and the holds it took (under ours a held flag stops the hints and "
        "the relay polls every 50 ms instead; the seed's triggers ignore the flag). "
        "`worker.tasks` has an index on `state` "
        "(without it the seed's triggers scan the table per statement and fare worse). "
        "*CPU per task life* is PostgreSQL's (every backend and worker) plus the relay's CPU "
        "time over the task lives committed; its ratio (none's over the variant's) is the "
        "throughput a CPU-bound machine would keep, and is far less noisy than throughput on "
        "a shared machine.",
        "",
        "| triggers | median task lives/s | ratio to none | rounds (task lives/s) "
        "| notifications / s | relay reads / s | holds taken "
        "| CPU ms / task life | CPU ratio |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    names = {
        "none": "none",
        "seed": "the seed's",
        "ours": "**this project's** (seed profile)",
        "ours-idle": "**this project's**, no relay running (flag parked)",
        "ours-idle-unparked": "this project's, no relay running, flag clear (before parking)",
        "statbus": "**statbus profile**: statbus's own triggers, none of ours",
        "plain": "the previous release's: a plain statement trigger (every statement hints)",
        "rows": "row triggers filtered by `WHEN` (what a partitioned table gets)",
    }
    for variant in names:
        if variant not in t.tps:
            continue
        rounds = ", ".join(f"{x:.0f}" for x in t.tps[variant])
        rate = t.per_second(t.notifications, variant)
        reads = t.per_second(t.reads, variant)
        lines.append(
            f"| {names[variant]} | {t.median_tps(variant):.0f} | {t.ratio(variant):.2f} "
            f"| {rounds} | {rate:.0f} | {reads:.1f} | {t.holds[variant]} "
            f"| {t.median_cpu_ms(variant):.3f} | {t.cpu_ratio(variant):.2f} |"
        )
    lines += [
        "",
        f"Target: ours keeps at least 90% of the no-trigger throughput: "
        f"{_mark(t.ratio('ours') >= 0.9)} ({100 * t.ratio('ours'):.0f}% measured; "
        f"{100 * t.cpu_ratio('ours'):.0f}% by CPU per task life); with no relay running: "
        f"{_mark(t.ratio('ours-idle') >= 0.9)} ({100 * t.ratio('ours-idle'):.0f}%).",
        "",
        "The statbus profile installs no trigger: its row is what statbus's own notifications "
        "cost its writers, with the relay listening to them (its reads are ours).",
        "",
    ]
    return lines


def _unhinted_section(u: Any) -> list[str]:
    lines = [
        "## 5. Statbus profile: what carries a change, and how long it takes",
        "",
        f"On a reproduction of statbus's schema, the statbus profile (no trigger of ours), "
        f"reconcile every {u.reconcile_s:g} s, {u.trials} trials: commit to the relay's new "
        "state. *hinted*: a pipeline enqueued the way statbus does (it notifies "
        "`worker_tasks`); *raw insert*: a task inserted without statbus's functions; *delete*: "
        "the pending task deleted (statbus notifies on task updates only). The last two reach "
        "no channel: the reconcile catches them.",
        "",
        "| change | p50 ms | p90 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for kind in u.delays_ms:
        p50, p90, worst = u.summary(kind)
        lines.append(f"| {kind} | {p50:.1f} | {p90:.1f} | {worst:.1f} |")
    return [*lines, ""]


def _waiters_section(w: Any) -> list[str]:
    return [
        "## 6. Waiters and fresh reads",
        "",
        f"{w.waiters:,} clients wait on `/api/system-status/wait?until=stable` while an import "
        f"job runs, and fresh reads (`?fresh=1`) arrive at {w.fresh_rate:.0f} a second for "
        f"{w.seconds:g} s; then the job's end is committed. The relay in its own process.",
        "",
        "| fresh requests | database reads issued | fresh p50 (ms) | fresh p99 (ms) "
        "| waiters released | release p50 (ms) | release p99 (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {w.fresh_requests} | {w.fresh_reads_issued} | {w.fresh_p50_ms:.1f} "
        f"| {w.fresh_p99_ms:.1f} | {w.released:,} | {w.release_p50_ms:.0f} "
        f"| {w.release_p99_ms:.0f} |",
        "",
    ]


def _details_section(d: Any) -> list[str]:
    calls = "n/a" if d.statement_calls is None else str(d.statement_calls)
    lines = [
        "## 3. Details under load",
        "",
        f"{d.bursts} bursts of {d.requests // d.bursts:,} concurrent "
        "`GET /api/system-status/details` (one process, one connection per request), "
        "1.2 s apart so each falls in a new 1 s cache window.",
        "",
        "| requests | answered 200 | details queries (relay counter) "
        "| statement calls (pg_stat_statements) | p50 (ms) | p99 (ms) | max (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {d.requests:,} | {d.ok:,} | {d.relay_queries:.0f} | {calls} | {d.p50_ms:.0f} "
        f"| {d.p99_ms:.0f} | {d.max_ms:.0f} |",
        "",
        f"Target: at most one round of queries per cache window: "
        f"{_mark(d.relay_queries <= d.bursts)}. Latency here is mostly the client process "
        "opening 1,000 connections at once.",
        "",
    ]
    flips = getattr(d, "flips", None) or []
    if flips:
        per = flips[0].requests
        lines += [
            f"Across a flip: {len(flips)} bursts of {per:,}, half sent before a commit that "
            "flips the state and half once the live stream has said so, each in a new cache "
            "window. Every answer names the state it reflects (`seq`); *stale* counts answers "
            "to requests sent after the stream's flip that said the state before it.",
            "",
            "| burst | states on the stream | details queries | stale answers "
            "| answers marked ahead | wall (s) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for n, f in enumerate(flips, 1):
            lines.append(
                f"| {n} | {f.states} | {f.relay_queries:.0f} | {f.stale} | {f.ahead} "
                f"| {f.wall_s:.2f} |"
            )
        met = all(f.relay_queries <= f.states and f.stale == 0 for f in flips)
        lines += [
            "",
            f"Target: at most one round of queries per state, and no stale answer: {_mark(met)}.",
            "",
        ]
    return lines


def _scale_section(s: Any, notify: Any) -> list[str]:
    lines = ["## 4. Beyond one machine", ""]
    if s is not None:
        lines += [
            f"{s.relays} relay processes on one PostgreSQL, {s.clients:,} clients split "
            f"evenly, {s.listen_connections} LISTEN connections in all:",
            "",
            "| relays | clients | connect all (s) | worst flip reached | p50 (ms) | p99 (ms) "
            "| max (ms) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {s.relays} | {s.clients:,} | {s.connect_s:.2f} | "
            f"{100 * s.min_fraction:.1f}% | {s.p50_ms:.1f} | {s.p99_ms:.1f} | {s.max_ms:.1f} |",
            "",
        ]
    if notify:
        lines += [
            "What one NOTIFY costs as LISTENing sessions grow (4 pgbench clients, each "
            "transaction one `pg_notify`; the sessions drain every notification):",
            "",
            "| LISTENing sessions | notifying commits/s | mean latency (ms) |",
            "|---:|---:|---:|",
        ]
        for n in notify:
            lines.append(f"| {n.listeners} | {n.tps:.0f} | {n.latency_ms:.2f} |")
        lines.append("")
    return lines


def _feeds_section(f: Any) -> list[str]:
    import os

    bursts, r = f.bursts, f.replay
    updates = bursts[0].updates if bursts else 0
    lines = [
        "## 7. Feeds: an enriched feed under a burst, replay after a disconnect",
        "",
        "One relay process (`python -m relay run --config`, the statbus profile's three feeds "
        "and a plain channel feed) on the statbus fixture (`tests/fixtures/statbus.sql`, "
        "installed with `db install --profile statbus`); the clients of the burst in a process "
        "of their own (bare asyncio protocols), the replay client and the writers in the "
        f"benchmark's. Everything, PostgreSQL included, runs on the machine's {os.cpu_count()} "
        "cores, which other jobs share.",
        "",
        f"**Burst.** N clients on `/api/sse/import-jobs` (every other one with `?ids=<job>`), "
        f"then one `DO` block commits {updates:,} UPDATEs of one job's `imported_rows` (each "
        "its own transaction, as statbus's import worker reports progress: each notifies "
        "`import_job` and `import_job_progress`). Every notification asks for the row read by "
        "`public.system_stability_enrich_import_job(jsonb)`; calls are single flight and "
        "merge identical payloads. *Queries per payload*: calls of the enrich function "
        "(pg_stat_statements; the relay's `relay_feed_enrich_calls_total` agrees) over the "
        "commits. Latency is wall-clock (CLOCK_REALTIME, read by PostgreSQL right after each "
        "COMMIT and by the clients as they read the bytes): for the final row, from its "
        "commit to the first event carrying it, per client; for every event, from the commit "
        "of the row it carries.",
        "",
        "| clients | commits took (s) | notifications received | enrich calls (relay) "
        "| enrich calls (pg_stat_statements) | queries / payload | events sent "
        "| events / client (min, median, max) | final row p50 (ms) | p99 (ms) | max (ms) "
        "| every event p50 (ms) | p99 (ms) | ended on the final row | rows in order |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in bursts:
        calls = "n/a" if b.statement_calls is None else str(b.statement_calls)
        spread = ", ".join(str(x) for x in b.events_per_client)
        lines.append(
            f"| {b.connected:,} | {b.burst_s:.2f} | {b.notified:,.0f} | {b.enrich_calls:.0f} "
            f"| {calls} | {b.queries_per_payload:.3f} | {b.events:.0f} | {spread} "
            f"| {_ms(b.final_p50_ms)} | {_ms(b.final_p99_ms)} | {_ms(b.final_max_ms)} "
            f"| {_ms(b.event_p50_ms)} | {_ms(b.event_p99_ms)} | {b.ended_on_final:,} "
            f"| {b.ordered:,} |"
        )
    ended = all(b.ended_on_final == b.connected == b.clients for b in bursts)
    lines += [
        "",
        f"Checked: every client ends on the final row, its rows never going backwards: "
        f"{_mark(ended and all(b.ordered == b.connected for b in bursts))}.",
        "",
        f"**Replay.** One client on the channel feed while {r.sent:,} payloads (about 200 "
        f"bytes, each its own commit, each with a sequence number) are NOTIFYed at "
        f"{r.rate:.0f} a second; {r.disconnect_at:g} s in it disconnects, and {r.gap:g} s "
        "later it reconnects with `Last-Event-ID` (the ring keeps 1,000 events, 1 MiB). "
        "*Missed*: payloads committed after the last one it had and before it reconnected; "
        "*replayed*: what the relay sent again (`relay_feed_replayed_total`); *caught up*: "
        "from sending the reconnecting request to holding every payload committed before it. "
        "*Lost* and *duplicated* compare the sequence numbers received, over both "
        "connections, with those sent.",
        "",
        "| payloads | sent at (/s) | away (s) | received before | missed while away "
        "| replayed | resyncs | reconnect to caught up (ms) | received after | lost "
        "| duplicated | out of order |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r.sent:,} | {r.send_rate:.0f} | {r.gap:g} | {r.before:,} | {r.missed:,} "
        f"| {r.replayed:,.0f} | {r.resyncs} | {_ms(r.caught_up_ms)} | {r.after:,} | {r.lost} "
        f"| {r.duplicated} | {r.out_of_order} |",
        "",
        f"Checked: nothing lost, duplicated or out of order, no resync: "
        f"{_mark(r.lost == r.duplicated == r.out_of_order == r.resyncs == 0)}.",
        "",
    ]
    return lines


def read_cost_section(r: Any) -> list[str]:
    without, with_index = r.phases["without"], r.phases["with"]
    lines = [
        "## 8. Reads as tables grow: the truth read with and without an index on state",
        "",
        f"The seed profile's truth read, `SELECT public.system_stability_activities()` (what "
        f"the relay runs on every hint and every reconcile), on one connection, with "
        f"{r.rows:,} finished tasks in `worker.tasks` and {r.active} active analytics tasks "
        f"appended after them (`bench/read_cost.py`). Loading the finished rows "
        f"(`INSERT ... SELECT generate_series`, foreign key unchecked) took {r.load_s:.1f} s, "
        f"`VACUUM ANALYZE` {r.vacuum_s:.1f} s; the table is {r.table_mb:,.0f} MiB. Then "
        f"the index `db install` names in its warning, built with "
        f"`CREATE INDEX CONCURRENTLY` in {r.index_s:.1f} s ({r.index_mb:.2f} MiB: it holds "
        "the active rows only):",
        "",
        "```sql",
        r.create_index,
        "```",
        "",
        "| index on state | plan of the activity's read | reads | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, phase in (("none", without), ("**the suggested one**", with_index)):
        lines.append(
            f"| {name} | {phase.plan} | {phase.reads:,} | {phase.p50_ms:.2f} "
            f"| {phase.p99_ms:.2f} | {phase.max_ms:.2f} |"
        )
    warned = f"warns: {r.warned}" if r.warned else "does not warn"
    lines += [
        "",
        f"At this size `db install` (and `check`, and a relay at start) {warned}. Without the "
        "index every read is a scan of every finished task the system has ever had; with "
        f"it, {without.p50_ms / max(with_index.p50_ms, 1e-9):,.0f} times faster at the "
        "median (the index holds the active rows only: finished ones do not grow it). Run "
        "alone: `python -m bench --only readcost` (`--quick`: 1,000,000 rows).",
        "",
    ]
    return lines


def writers_section(w: Any, command: str) -> list[str]:
    from bench.writer_cost import describe

    days = time.strftime("%Y-%m-%d", time.gmtime())
    lines = [
        "## 9. Writer cost per profile",
        "",
        f"Measured on {days} in one run, `{command}` (`bench/writer_cost.py`), on a machine "
        "other jobs share: compare within a row, and prefer the CPU ratios. Each profile has "
        "a database of its own, its schema made as its system makes it (the demo tables for "
        "seed and statbus; the schemas procrastinate's and pgqueuer's PyPI packages create; "
        "pg-boss's and graphile-worker's, created by their npm packages through our drivers "
        "in `tests/queues/`; River's and Oban's fixtures in `tests/fixtures/`) and `db "
        f"install` with the profile's activities. {w.clients} pgbench clients, {w.rounds} "
        f"rounds of {w.seconds:g} s per variant, each client running a job's life on the "
        "profile's table, each step its own transaction: enqueue, fetch, finish, and an idle "
        "worker's empty fetch (an UPDATE of no row; `bench/sql/<profile>_job.pgbench`; the "
        "seed's and statbus's are section 2's churn). Variants alternate within each round: "
        "our triggers disabled (the queue's own triggers and notifications stay on); ours "
        "with the hold flag clear and no relay listening, so every statement that changes a "
        "visible row notifies (the writer's worst case); ours with the flag held, as while a "
        "relay polls under load (the relay's reads are not counted here: section 2 has "
        "them). Ratios are to the first column: throughput kept, and CPU (PostgreSQL's CPU "
        "per job life, none's over the variant's). *Hints per job life*: the notifications "
        f"a listener received over {w.lives:,} job lives run by one client, per variant: "
        "exact where the rest is noisy. Held does strictly less than ours (the same "
        "triggers, no NOTIFY), so a row where it costs more shows the noise of the run.",
        "",
        *describe(w),
        "",
        "- statbus's profile installs no trigger of ours (it listens to statbus's own "
        "channels): its row runs statbus's own notifying triggers "
        "(`bench/sql/statbus_triggers.sql`) against none, what its writers pay for the hints "
        "the profile uses; they never read the hold flag, and its hints are on its channels.",
        "- pgqueuer's own statement trigger (a NOTIFY on `ch_pgqueuer` for every statement) "
        "and graphile-worker's `jobs:insert` (sent by `add_job`) are on in every variant: "
        "their first column is the queue as it ships, and their hints column counts ours.",
        "- pg-boss: jobs of a queue created with its defaults go to the partition "
        "`pgboss.job_common`, and pg-boss's statements name it: ours there are the row "
        "triggers with `WHEN` that PostgreSQL clones from `pgboss.job`. Its script is pg-boss "
        "12.38's send (an insert taking the queue's settings from `pgboss.queue`), claim (the "
        "oldest runnable job, `FOR UPDATE SKIP LOCKED`, to `active`) and complete (fenced on "
        "the attempt); graphile-worker 0.18's is `add_job`, its worker's claim (locks the "
        "job, counts the attempt) and completion (a `DELETE`). Each client has a queue (a "
        "task) of its own, so that its claim finds the job it just sent.",
        "",
    ]
    return lines
