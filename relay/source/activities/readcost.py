"""What a table activity's read costs as its table grows: one piece of advice, never a refusal.

A table activity's read (its active rows, on every hint and every reconcile) that would scan a
table of more than ``READ_SCAN_ROWS`` rows is reported (:func:`read_scans`) with the
``CREATE INDEX CONCURRENTLY`` that serves it (``indexes.py``). ``db install`` and ``check``
print it; a relay logs it once per process (``activity_read_scans``).
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection

from relay.config.activities import Activity, split_name
from relay.logs import get_logger
from relay.source.activities.indexes import filter_columns, index_for
from relay.source.activities.privileges import RELATION
from relay.source.activities.reads import active_condition
from relay.source.activities.sql import fingerprint
from relay.source.activities.sqltext import SEARCH_PATH, qualified

log = get_logger("relay.source.activities.readcost")

# Above this many rows, a read that scans the table is worth an index (a scan of 2 million
# finished tasks: 58 ms per read; with the index: 0.08 ms).
READ_SCAN_ROWS = 100_000
RELTUPLES = "pg_class.reltuples"
PLANNER_ESTIMATE = "the planner's estimate: the table was never analyzed"


_READ_TABLE = f"""
SELECT c.relkind::pg_catalog.text, c.reltuples::pg_catalog.float8,
       array(SELECT a.attname::pg_catalog.text FROM pg_catalog.pg_attribute AS a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS columns,
       array(SELECT pg_catalog.json_build_array(
                        ci.relname::pg_catalog.text, ka.attname::pg_catalog.text,
                        pg_catalog.pg_get_expr(i.indpred, i.indrelid))::pg_catalog.text
             FROM pg_catalog.pg_index AS i
             JOIN pg_catalog.pg_class AS ci ON ci.oid = i.indexrelid
             LEFT JOIN pg_catalog.pg_attribute AS ka
               ON ka.attrelid = c.oid AND ka.attnum = i.indkey[0] AND ka.attnum > 0
             WHERE i.indrelid = c.oid AND i.indisvalid AND i.indisready) AS indexes
FROM pg_catalog.pg_class AS c
WHERE c.oid = ({RELATION})
"""


@dataclass(frozen=True, slots=True)
class ReadScan:
    """A table activity whose read would scan a large table, and the index that serves it
    (``create_index`` empty when none can: a filter-only activity whose filter PostgreSQL
    refuses in an index predicate)."""

    activity: str
    table: str
    rows: int
    rows_from: str  # RELTUPLES or PLANNER_ESTIMATE
    plan: str  # what the read would do: "Parallel Seq Scan on worker.tasks", ...
    create_index: str  # the statement, copy-pasteable; "" when no index serves the read
    filter_left_out: str | None  # why the activity's filter is not in the index's predicate

    def describe(self) -> str:
        """Several lines for a terminal: the statement alone on its line, indented."""
        read = (
            f'activity "{self.activity}": {self.table} has {self.rows:,} rows '
            f"({self.rows_from}) and its read would be a {self.plan}, on every hint and "
            "every reconcile."
        )
        if not self.create_index:
            return "\n".join(
                textwrap.wrap(f"{read} No index serves it: {self.filter_left_out}.", 92)
            )
        lines = [
            *textwrap.wrap(
                f"{read} This index serves it (run it on its own, not in a transaction: "
                "CONCURRENTLY does not block the table's writers):",
                92,
            ),
            "",
            f"    {self.create_index}",
        ]
        if self.filter_left_out:
            note = f"The activity's filter is left out of it: {self.filter_left_out}."
            lines += ["", *textwrap.wrap(note, 92)]
        return "\n".join(lines)


def read_query(activity: Activity) -> str:
    """The active-rows read as the generated view reads it (its ``EXISTS`` stops at a row)."""
    assert activity.table is not None
    condition = active_condition(activity)
    return f"SELECT FROM {qualified(activity.table)} AS t WHERE {condition} LIMIT 1"


async def read_scans(conn: AsyncConnection[Any], activities: Sequence[Activity]) -> list[ReadScan]:
    """Each table activity whose read would scan a table of more than ``READ_SCAN_ROWS`` rows.

    The read is planned (``EXPLAIN``, never ``ANALYZE``) in the functions' ``search_path``;
    it scans when the plan reads the table with a (Parallel) Seq Scan, or through an index
    that does not serve it: one with no condition on the state column (a filter-only
    activity: an index neither partial nor with a condition). A role that may not plan it
    (the relay's own has no privilege on the data system's tables) is answered from the
    catalog instead: served when a valid index leads with the state column or has a
    predicate on it (filter-only: a predicate on every column the filter names). Tables that
    do not exist are left to the other checks. Nothing is written (all in a rolled-back
    transaction).
    """
    found: list[ReadScan] = []
    async with conn.transaction(force_rollback=True):
        await conn.execute(SEARCH_PATH)
        for activity in activities:
            if activity.table is None:
                continue
            scan = await _read_scan(conn, activity)
            if scan is not None:
                found.append(scan)
    return found


@dataclass(frozen=True, slots=True)
class _Index:
    name: str
    leading: str | None  # its first key column; None for an expression
    predicate: str | None  # pg_get_expr of a partial index's predicate


def _names(word: str, text: str | None) -> bool:
    return text is not None and re.search(rf"\b{re.escape(word)}\b", text) is not None


async def _read_scan(conn: AsyncConnection[Any], activity: Activity) -> ReadScan | None:
    assert activity.table is not None
    schema, name = split_name(activity.table)
    cursor = await conn.execute(_READ_TABLE, {"schema": schema, "name": name})
    row = await cursor.fetchone()
    if row is None:
        return None
    relkind, reltuples, columns, rows_of_indexes = row
    if relkind not in ("r", "m"):  # a view, a partitioned or a foreign table: not judged here
        return None
    indexes = [_Index(*json.loads(text)) for text in rows_of_indexes]
    if activity.active_states:
        column = activity.state_column
        if column not in columns:  # reported by _check_states
            return None
        serving = {index.name for index in indexes if _names(column, index.predicate)}
        indexed = bool(serving) or any(index.leading == column for index in indexes)
        without = f"no index on {column}"
    else:
        named = filter_columns(activity, columns)
        serving = {
            index.name
            for index in indexes
            if index.predicate is not None and all(_names(c, index.predicate) for c in named)
        }
        indexed = bool(named) and bool(serving)
        without = "no partial index on the columns its filter names"
    plan = await _explain(conn, read_query(activity))
    rows, rows_from = int(reltuples), RELTUPLES
    if reltuples < 0:  # never vacuumed nor analyzed: what the planner assumes instead
        whole = await _explain(conn, f"SELECT FROM {qualified(activity.table)}")
        if whole is None:
            return None
        rows, rows_from = int(whole.get("Plan Rows", 0)), PLANNER_ESTIMATE
    if rows <= READ_SCAN_ROWS:
        return None
    if plan is None:
        if indexed:
            return None
        how = f"scan of {activity.table} (judged from the catalog: {without})"
    else:
        partial = {index.name for index in indexes if index.predicate is not None}
        found = _scan_in_plan(plan, schema, name, activity, serving, partial)
        if found is None:
            return None
        how = f"{found} on {activity.table}"
    statement, left_out = await index_for(conn, activity, columns)
    return ReadScan(activity.name, activity.table, rows, rows_from, how, statement, left_out)


async def _explain(conn: AsyncConnection[Any], query: str) -> dict[str, Any] | None:
    """The plan's top node (EXPLAIN, FORMAT JSON, VERBOSE); None if it cannot be planned."""
    try:
        async with conn.transaction(force_rollback=True):
            cursor = await conn.execute(f"EXPLAIN (FORMAT JSON, VERBOSE) {query}".encode())
            row = await cursor.fetchone()
    except psycopg.Error:
        if conn.broken:
            raise
        return None
    if row is None:
        return None
    document = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    plan = document[0]["Plan"]
    return plan if isinstance(plan, dict) else None


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _scan_in_plan(
    plan: dict[str, Any],
    schema: str,
    name: str,
    activity: Activity,
    serving: set[str],
    partial: set[str],
) -> str | None:
    """How the plan scans the table (``"Parallel Seq Scan"``, ...), or None if it does not.

    With states, an index node serves the read when its condition names the state column or
    its predicate does (``serving``). A filter-only read has no column to look up: an index
    serves it when it has a condition, or when it is partial (PostgreSQL uses a partial index
    only where the read's condition implies its predicate); a bitmap serves it when every
    index under it does (an OR of conditions is a BitmapOr of them)."""
    if activity.active_states:
        column = activity.state_column
        word = re.compile(rf"\b{re.escape(column)}\b")

        def serves(node: dict[str, Any]) -> bool:
            found = word.search(node.get("Index Cond", ""))
            return bool(found) or node.get("Index Name") in serving

        lacking, bitmap_serves = f"with no condition on {column}", any
    else:

        def serves(node: dict[str, Any]) -> bool:
            return bool(node.get("Index Cond")) or node.get("Index Name") in partial

        lacking, bitmap_serves = "of the whole index (no condition, not partial)", all

    for node in _nodes(plan):
        if node.get("Relation Name") != name or node.get("Schema", schema) != schema:
            continue
        kind = node.get("Node Type", "")
        if kind == "Seq Scan":
            return "Parallel Seq Scan" if node.get("Parallel Aware") else "Seq Scan"
        if kind in ("Index Scan", "Index Only Scan") and not serves(node):
            return f"{kind} using {node.get('Index Name')}, {lacking}"
        if kind == "Bitmap Heap Scan":
            below = [n for n in _nodes(node) if n.get("Node Type") == "Bitmap Index Scan"]
            if not below or not bitmap_serves(serves(n) for n in below):
                return f"Bitmap Heap Scan {lacking}"
    return None


# Databases and configs whose reads were judged in this process: logged once, not on every
# reconnect.
_judged: set[tuple[str, ...]] = set()


async def log_read_scans_once(
    conn: AsyncConnection[Any], activities: Sequence[Activity], profile: str | None
) -> None:
    """At a relay's start (``verify_installed``): each read that would scan a large table, as
    a warning ``activity_read_scans``, once per process for this database and config."""
    info = conn.info
    key = (info.host, str(info.port), info.dbname, fingerprint(activities))
    if key in _judged:
        return
    _judged.add(key)
    try:
        scans = await read_scans(conn, activities)
    except psycopg.Error as error:
        if conn.broken:
            raise
        log.info("activity_read_cost_unknown", error=error.diag.message_primary or str(error))
        return
    for scan in scans:
        fields = asdict(scan)  # the activity, then its profile, then the rest in field order
        log.warning(
            "activity_read_scans", activity=fields.pop("activity"), profile=profile, **fields
        )
