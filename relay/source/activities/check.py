"""No silent wrongness: the activities checked against the database, every problem listed.

Run by ``db install`` (as the installing role, which will own the functions) and by the
relay at the start of every listener session (for the role that owns the installed
functions). Each problem names its key path and, where the database can be put right,
the statement that does it. What is checked:

* every table exists, and the reading role may SELECT it;
* a table activity's state column exists, and each active state is a value of its enum;
* row-level security: the reading role sees every row (it owns the table without FORCE,
  is superuser or BYPASSRLS, or a permissive ``USING (true)`` policy covers it and no
  restrictive one does). Otherwise the functions would count no rows and say "stable";
* the same for the tables the feeds' enrich functions read (:func:`check_enrichers`);
* at install only, each SQL snippet compiles in the functions' ``search_path`` (and an
  expression is boolean): planned, never executed.

And one piece of advice, never a refusal (:func:`read_scans`): a table activity's read (its
active rows, on every hint and every reconcile) that would scan a table of more than
``READ_SCAN_ROWS`` rows, with the ``CREATE INDEX CONCURRENTLY`` that serves it. ``db install``
and ``check`` print it; a relay logs it once per process (``activity_read_scans``).
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection

from relay.config.activities import Activity, EnrichRead, split_name
from relay.config.profiles import CUSTOM
from relay.errors import SchemaMismatch, SchemaMissing
from relay.logs import get_logger
from relay.source.activities.sql import (
    FINGERPRINT,
    active_condition,
    details_source,
    fingerprint,
    ident,
    literal,
    qualified,
)

log = get_logger("relay.source.activities.check")

BOOLEAN_OID = 16
JSON_OIDS = (114, 3802)  # json, jsonb
SEARCH_PATH = "SET LOCAL search_path = pg_catalog, pg_temp"
UNRESOLVED_HINT = (
    " (name every object with its schema: the functions run with search_path pg_catalog, pg_temp)"
)

# Tables are found by name in the catalog, not with to_regclass(): the relay's own role has
# no USAGE on the data system's schemas, and needs none.
_RELATION = """
    SELECT c.oid FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS ns ON ns.oid = c.relnamespace
    WHERE ns.nspname = %(schema)s AND c.relname = %(name)s
      AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
"""

_TABLE = f"""
SELECT c.oid IS NOT NULL AS found,
       coalesce(c.relrowsecurity, false) AS rls,
       coalesce(c.relforcerowsecurity, false) AS forced,
       pg_catalog.pg_get_userbyid(c.relowner) AS owner,
       r.rolsuper OR r.rolbypassrls AS bypasses,
       pg_catalog.pg_has_role(r.oid, c.relowner, 'USAGE') AS owns,
       pg_catalog.has_table_privilege(r.oid, c.oid, 'SELECT') AS can_select,
       EXISTS (
           SELECT FROM pg_catalog.pg_policy AS p
           WHERE p.polrelid = c.oid AND p.polpermissive AND p.polcmd IN ('r', '*')
             AND pg_catalog.pg_get_expr(p.polqual, p.polrelid) = 'true'
             AND EXISTS (SELECT FROM pg_catalog.unnest(p.polroles) AS pr
                         WHERE pr OPERATOR(pg_catalog.=) 0::pg_catalog.oid
                            OR pg_catalog.pg_has_role(r.oid, pr, 'USAGE'))
       ) AS open_policy,
       EXISTS (
           SELECT FROM pg_catalog.pg_policy AS p
           WHERE p.polrelid = c.oid AND NOT p.polpermissive AND p.polcmd IN ('r', '*')
             AND EXISTS (SELECT FROM pg_catalog.unnest(p.polroles) AS pr
                         WHERE pr OPERATOR(pg_catalog.=) 0::pg_catalog.oid
                            OR pg_catalog.pg_has_role(r.oid, pr, 'USAGE'))
       ) AS restricted
FROM pg_catalog.pg_roles AS r
LEFT JOIN pg_catalog.pg_class AS c ON c.oid = ({_RELATION})
WHERE r.rolname = %(role)s
"""

_COLUMN = f"""
SELECT ty.typtype = 'e' AS is_enum,
       pg_catalog.format_type(a.atttypid, NULL) AS type_name,
       array(SELECT e.enumlabel::text FROM pg_catalog.pg_enum AS e
             WHERE e.enumtypid = a.atttypid ORDER BY e.enumsortorder) AS labels
FROM pg_catalog.pg_attribute AS a
JOIN pg_catalog.pg_type AS ty ON ty.oid = a.atttypid
WHERE a.attrelid = ({_RELATION}) AND a.attname = %(column)s
  AND a.attnum > 0 AND NOT a.attisdropped
"""

INSTALLED = """
SELECT public.system_stability_activities(),
       pg_catalog.obj_description(
           'public.system_stability_activities()'::pg_catalog.regprocedure, 'pg_proc')
"""

OWNER_OF_FUNCTIONS = """
SELECT pg_catalog.pg_get_userbyid(p.proowner)
FROM pg_catalog.pg_proc AS p
WHERE p.oid OPERATOR(pg_catalog.=)
      pg_catalog.to_regprocedure('public.system_stability_activities()')::pg_catalog.oid
"""


@dataclass(frozen=True, slots=True)
class Where:
    """How problems name an activity: its key path, and the profile it came from."""

    index: int
    profile: str | None

    def path(self, key: str) -> str:
        named = self.profile not in (None, CUSTOM)
        origin = f' (profile "{self.profile}")' if named else ""
        return f"activities[{self.index}].{key}{origin}"


async def check_activities(
    conn: AsyncConnection[Any],
    activities: Sequence[Activity],
    *,
    role: str,
    profile: str | None = None,
    snippets: bool = False,
) -> list[str]:
    """Every problem, as ``key.path: message`` lines; empty when the config is right."""
    problems: list[str] = []
    for index, activity in enumerate(activities):
        where = Where(index, profile)
        missing = await _check_tables(conn, activity, where, role, problems)
        if activity.table is not None and activity.table not in missing:
            await _check_states(conn, activity, where, problems)
        if snippets and not missing:
            await _check_snippets(conn, activity, where, problems)
    return problems


async def verify_installed(
    conn: AsyncConnection[Any], activities: Sequence[Activity], profile: str | None
) -> None:
    """At a relay's start: the installed functions are this config's, and their owner sees
    everything the activities read.

    Raises :class:`SchemaMissing` when nothing is installed, :class:`SchemaMismatch` with
    every problem otherwise. (Every read checks the activities' names again:
    ``relay/source/listener.py``.)
    """
    owner = await functions_owner(conn)
    if owner is None:
        raise SchemaMissing(
            "public.system_stability_activities() is missing: run `stability-relay db install`"
        )
    problems = await _installed_config(conn, activities)
    problems += await check_activities(conn, activities, role=owner, profile=profile)
    if problems:
        raise SchemaMismatch(problems)
    await log_read_scans_once(conn, activities, profile)


async def _installed_config(
    conn: AsyncConnection[Any], activities: Sequence[Activity]
) -> list[str]:
    """The installed SQL was generated from these activities: same names, same fingerprint."""
    cursor = await conn.execute(INSTALLED)
    row = await cursor.fetchone()
    answer, comment = row if row else (None, None)
    installed = sorted(answer) if isinstance(answer, dict) else []
    configured = sorted(activity.name for activity in activities)
    if installed != configured:
        return [
            f"activities: the database has {installed or 'none'} installed, this config has "
            f"{configured}: run `stability-relay db install` with this config"
        ]
    found = FINGERPRINT.search(comment or "")
    if found is None or found.group(1) != fingerprint(activities):
        return [
            "activities: the installed SQL was generated from another definition of them (or "
            "by an older relay): run `stability-relay db install` with this config"
        ]
    return []


async def functions_owner(conn: AsyncConnection[Any]) -> str | None:
    """The role the installed functions run as; None when they are not installed."""
    cursor = await conn.execute(OWNER_OF_FUNCTIONS)
    row = await cursor.fetchone()
    return str(row[0]) if row else None


def _table_key(activity: Activity, table: str) -> str:
    if table == activity.table:
        return "table"
    if table in activity.tables:
        return f"tables[{activity.tables.index(table)}]"
    return "details.table"


async def _check_tables(
    conn: AsyncConnection[Any], activity: Activity, where: Where, role: str, problems: list[str]
) -> set[str]:
    missing: set[str] = set()
    for table in activity.read_tables:
        key = where.path(_table_key(activity, table))
        if not await _check_table(conn, table, key, role, problems):
            missing.add(table)
    return missing


async def _check_table(
    conn: AsyncConnection[Any], table: str, key: str, role: str, problems: list[str]
) -> bool:
    """Whether ``table`` exists; each problem with ``role`` reading all of it, in ``problems``."""
    schema, name = split_name(table)
    cursor = await conn.execute(_TABLE, {"schema": schema, "name": name, "role": role})
    row = await cursor.fetchone()
    if row is None:
        problems.append(f'{key}: role "{role}" does not exist')
        return True
    found, rls, forced, owner, bypasses, owns, can_select, open_policy, restricted = row
    if not found:
        problems.append(f"{key}: table {table} does not exist")
        return False
    if not can_select:
        problems.append(
            f'{key}: role "{role}" may not read {table}: '
            f'GRANT SELECT ON {table} TO "{role}" (or install as its owner "{owner}")'
        )
    if rls and not _sees_every_row(forced, bypasses, owns, open_policy, restricted):
        problems.append(_rls_problem(key, table, role, owner, forced, owns))
    return True


async def check_enrichers(
    conn: AsyncConnection[Any],
    enrichers: Sequence[EnrichRead],
    *,
    role: str,
    profile: str | None = None,
    snippets: bool = False,
) -> list[str]:
    """The feeds' enrich reads, as the activities are checked: every table they read exists
    and ``role`` sees every row of it (a function that cannot see a row would send nothing for
    it, silently); at install, the row expression and the joins compile and give JSON."""
    problems: list[str] = []
    named = profile not in (None, CUSTOM)
    origin = f' (profile "{profile}")' if named else ""
    for read in enrichers:
        missing = False
        for index, table in enumerate(read.tables):
            part = "table" if index == 0 else f"joins[{index - 1}].table"
            key = f'enrich read "{read.name}".{part}{origin}'
            missing |= not await _check_table(conn, table, key, role, problems)
        if snippets and not missing:
            joins = "".join(
                f" LEFT JOIN {qualified(join.table)} AS {join.alias} ON ({join.condition})"
                for join in read.joins
            )
            query = f"SELECT ({read.row}) FROM {qualified(read.table)} AS t{joins} LIMIT 0"
            key = f'enrich read "{read.name}".row{origin}'
            described = await _plan(conn, query, key, problems)
            if described is not None and described not in JSON_OIDS:
                problems.append(f"{key}: must be json or jsonb")
    return problems


def _sees_every_row(
    forced: bool, bypasses: bool, owns: bool, open_policy: bool, restricted: bool
) -> bool:
    if bypasses or (owns and not forced):
        return True
    return open_policy and not restricted


def _rls_problem(key: str, table: str, role: str, owner: str, forced: bool, owns: bool) -> str:
    why = (
        "it owns the table, but FORCE ROW LEVEL SECURITY applies the policies to it too"
        if owns and forced
        else "it neither owns the table nor has BYPASSRLS, and no policy shows it every row"
    )
    fixes = [
        f'install as the table\'s owner "{owner}" (db install --dsn with that role)'
        if not owns
        else f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY",
        f'ALTER ROLE "{role}" BYPASSRLS',
        f'CREATE POLICY stability_relay_read_all ON {table} FOR SELECT TO "{role}" USING (true)',
    ]
    return (
        f'{key}: {table} has row-level security and the relay\'s functions run as "{role}": '
        f"{why}, so they would count too few rows and could report stable while work runs. "
        f"Fix one of: {'; or '.join(fixes)}"
    )


async def _check_states(
    conn: AsyncConnection[Any], activity: Activity, where: Where, problems: list[str]
) -> None:
    assert activity.table is not None
    if not activity.active_states:  # the filter alone: no state column is read
        return
    schema, name = split_name(activity.table)
    params = {"schema": schema, "name": name, "column": activity.state_column}
    cursor = await conn.execute(_COLUMN, params)
    row = await cursor.fetchone()
    if row is None:
        problems.append(
            f'{where.path("state_column")}: column "{activity.state_column}" of '
            f"{activity.table} does not exist"
        )
        return
    is_enum, type_name, labels = row
    if not is_enum:
        return
    for position, state in enumerate(activity.active_states):
        if state not in labels:
            problems.append(
                f'{where.path(f"active_states[{position}]")}: "{state}" is not a value of '
                f"{type_name} (its values: {', '.join(labels)})"
            )


async def _check_snippets(
    conn: AsyncConnection[Any], activity: Activity, where: Where, problems: list[str]
) -> None:
    if activity.expression is not None:
        query = f"SELECT ({activity.expression}) LIMIT 0"
        described = await _plan(conn, query, where.path("expression"), problems)
        if described is not None and described != BOOLEAN_OID:
            problems.append(
                f"{where.path('expression')}: must be boolean; add ::boolean if it is text "
                "such as ->>'active'"
            )
    if activity.indicator is not None:
        described = await _plan(
            conn, f"SELECT ({activity.indicator}) LIMIT 0", where.path("indicator"), problems
        )
        if described is not None and described not in JSON_OIDS:
            problems.append(f"{where.path('indicator')}: must be json or jsonb")
    if activity.table is not None and activity.filter:
        query = f"SELECT FROM {qualified(activity.table)} AS t WHERE {active_condition(activity)}"
        await _plan(conn, query + " LIMIT 0", where.path("filter"), problems)
    details = activity.details
    if details is not None:
        source, condition = details_source(activity, details)
        fields = ", ".join(f"({expression})" for expression in details.fields.values())
        order = f" ORDER BY {details.order_by}" if details.order_by else ""
        query = f"SELECT {fields} FROM {source} AS t WHERE {condition}{order} LIMIT 0"
        await _plan(conn, query, where.path("details"), problems)


async def _plan(
    conn: AsyncConnection[Any], query: str, key: str, problems: list[str]
) -> int | None:
    """Plan ``query`` in the functions' search_path; the first column's type, or None."""
    try:
        async with conn.transaction(force_rollback=True):
            await conn.execute(SEARCH_PATH)
            cursor = await conn.execute(query.encode())
    except psycopg.Error as error:
        message = error.diag.message_primary or str(error)
        unresolved = error.sqlstate in ("42883", "42P01", "42704")
        hint = UNRESOLVED_HINT if unresolved else ""
        problems.append(f"{key}: {message}{hint}")
        return None
    description = cursor.description
    return description[0].type_code if description else None


# -- what a table activity's read costs as its table grows ----------------------------------

# Above this many rows, a read that scans the table is worth an index (a scan of 2 million
# finished tasks: 58 ms per read; with the index: 0.08 ms).
READ_SCAN_ROWS = 100_000
RELTUPLES = "pg_class.reltuples"
PLANNER_ESTIMATE = "the planner's estimate: the table was never analyzed"
_SUBQUERY = re.compile(r"\bselect\b", re.IGNORECASE)

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
WHERE c.oid = ({_RELATION})
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


def index_name(activity: Activity) -> str:
    """``<table>_<activity>_active_idx``, cut to PostgreSQL's 63 characters (never the
    relay's ``system_stability_`` prefix: the index is the data system's, not the relay's)."""
    assert activity.table is not None
    _, table = split_name(activity.table)
    suffix = f"_{activity.name}_active_idx"
    return table[: 63 - len(suffix)] + suffix


# A snippet's quoted parts (string literals, quoted identifiers): never rewritten nor searched.
_QUOTED = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*")""")
_ALIAS = re.compile(r"\bt\.")
_ALIASED_COLUMN = re.compile(r"\bt\.([a-z_][a-z0-9_]*)\b")
_WORD = re.compile(r"\b[a-z_][a-z0-9_]*\b")


def _unquoted(snippet: str) -> list[str]:
    """The parts of ``snippet`` outside quotes (``re.split`` puts the quoted ones between)."""
    return _QUOTED.split(snippet)[::2]


def unaliased(snippet: str) -> str:
    """``snippet`` as an index predicate can hold it: the read's alias ``t.`` dropped (a
    predicate names the table's columns bare), quoted parts untouched, spaces collapsed."""
    parts = _QUOTED.split(snippet)
    bare = "".join(part if index % 2 else _ALIAS.sub("", part) for index, part in enumerate(parts))
    return " ".join(bare.split())


def filter_columns(activity: Activity, columns: Sequence[str] | None = None) -> list[str]:
    """The columns a filter names, in order: those of ``columns`` (the table's, from the
    catalog) it names, with or without the alias; without ``columns``, the ``t.<column>`` it
    names (a bare word could be a keyword or a function)."""
    found: list[str] = []
    for part in _unquoted(activity.filter or ""):
        if columns is None:
            found += _ALIASED_COLUMN.findall(part)
        else:
            found += [word for word in _WORD.findall(part) if word in columns]
    return list(dict.fromkeys(found))


def suggested_index(
    activity: Activity, *, with_filter: bool, columns: Sequence[str] | None = None
) -> str:
    """``CREATE INDEX CONCURRENTLY`` over the active rows only: small (the active rows are
    few), and it serves the read at any size.

    With states: on the state column, where it holds an active state (and the filter, when
    ``with_filter``). A filter-only activity (``active_states: []``): its predicate is the
    filter itself, on the first column the filter names (``columns``: the table's, when
    known), or on ``(true)`` when none is found (the predicate alone does the work: the
    read asks for no column, and PostgreSQL scans the whole, small, index)."""
    assert activity.table is not None
    condition = unaliased(activity.filter) if activity.filter else None
    if activity.active_states:
        column = ident(activity.state_column)
        states = ", ".join(literal(state) for state in activity.active_states)
        key, predicate = column, f"{column} IN ({states})"
        if with_filter and condition:
            predicate += f" AND ({condition})"
    else:
        assert condition is not None
        named = filter_columns(activity, columns)
        key, predicate = (ident(named[0]) if named else "(true)"), f"({condition})"
    return (
        f"CREATE INDEX CONCURRENTLY {ident(index_name(activity))} "
        f"ON {qualified(activity.table)} ({key}) WHERE {predicate};"
    )


def filter_refused_statically(activity: Activity) -> str | None:
    """Why the filter cannot go in an index predicate, when its text alone says so."""
    if activity.filter and _SUBQUERY.search(activity.filter):
        if not activity.active_states:
            return (
                "its filter, the whole of its active condition, holds a subquery, which an "
                "index predicate cannot hold"
            )
        return (
            "it holds a subquery, which an index predicate cannot hold; the states alone keep "
            "the index to the active rows, and the read applies the filter to those"
        )
    return None


def index_suggestion(activity: Activity) -> tuple[str, str | None]:
    """Without a database (``db install --print``): the statement ("" when no index can
    serve the read), and a note on the filter."""
    if not activity.filter:
        return suggested_index(activity, with_filter=False), None
    refused = filter_refused_statically(activity)
    if refused:
        statement = suggested_index(activity, with_filter=False) if activity.active_states else ""
        return statement, refused
    return suggested_index(activity, with_filter=True), (
        "the filter is in the predicate, unchecked: PostgreSQL refuses it if it calls a "
        "function that is not IMMUTABLE; then leave it out"
        if activity.active_states
        else "the filter is the predicate, unchecked: PostgreSQL refuses it if it calls a "
        "function that is not IMMUTABLE, and then no index serves the read"
    )


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
    statement, left_out = await _index_for(conn, activity, columns)
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


async def _index_for(
    conn: AsyncConnection[Any], activity: Activity, columns: Sequence[str]
) -> tuple[str, str | None]:
    """The index statement, with the filter in its predicate when PostgreSQL takes it there:
    tried on an empty temporary copy of the table's columns (rolled back), as the real
    statement would have it. A filter-only activity whose filter is refused gets none."""
    if not activity.filter or filter_refused_statically(activity):
        return index_suggestion(activity)
    assert activity.table is not None
    with_filter = suggested_index(activity, with_filter=True, columns=columns)
    _, name = split_name(activity.table)
    on_copy = with_filter.replace("CONCURRENTLY ", "", 1).replace(
        f"ON {qualified(activity.table)} ", f"ON pg_temp.{ident(name)} ", 1
    )
    try:
        async with conn.transaction(force_rollback=True):
            await conn.execute(
                f"CREATE TEMPORARY TABLE {ident(name)} (LIKE {qualified(activity.table)})".encode()
            )
            await conn.execute(on_copy.encode())
    except psycopg.Error as error:
        if conn.broken:
            raise
        if error.sqlstate == "42501":  # may not create a temporary table: unchecked
            return with_filter, index_suggestion(activity)[1]
        message = error.diag.message_primary or str(error)
        if not activity.active_states:
            return "", (
                f"its filter, the whole of its active condition, is refused in an index "
                f"predicate: {message}"
            )
        return suggested_index(activity, with_filter=False), (
            f"PostgreSQL refuses it in an index predicate: {message}; the states alone keep "
            "the index to the active rows, and the read applies the filter to those"
        )
    return with_filter, None


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
        log.warning(
            "activity_read_scans",
            activity=scan.activity,
            profile=profile,
            table=scan.table,
            rows=scan.rows,
            rows_from=scan.rows_from,
            plan=scan.plan,
            create_index=scan.create_index,
            filter_left_out=scan.filter_left_out,
        )
