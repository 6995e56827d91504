"""The index that keeps a table activity's read of its active rows cheap as its table grows:
``CREATE INDEX CONCURRENTLY`` over the active rows only, with the activity's filter in its
predicate when PostgreSQL takes it there (``readcost.py`` says when a read needs one).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection

from relay.config.activities import Activity, split_name
from relay.source.activities.sqltext import ident, literal, qualified

_SUBQUERY = re.compile(r"\bselect\b", re.IGNORECASE)


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


async def index_for(
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
