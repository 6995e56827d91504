"""The hint triggers, generated from the activities (``sql.py`` puts them in the install script).

One set of statement triggers ``system_stability_hint_<event>`` per table hinted by triggers,
hinting only when a statement changed a row an activity can see (:func:`visible_rows`); row
triggers on a partitioned table or a partition; a plain statement trigger for TRUNCATE.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from relay.config.activities import ALL_EVENTS, DOLLAR_TAG, Activity, split_name
from relay.source.activities.sqltext import MARKER, ident, literal, qualified


def hinted_tables(activities: Sequence[Activity]) -> dict[str, tuple[str, ...]]:
    """Each table our triggers hint on, with its statements (in PostgreSQL's order)."""
    events: dict[str, set[str]] = {}
    for activity in activities:
        if not activity.hint_triggers:
            continue
        for table in activity.hinted_tables:
            events.setdefault(table, set()).update(activity.hint_triggers)
    return {
        table: tuple(event for event in ALL_EVENTS if event in wanted)
        for table, wanted in events.items()
    }


# A table's visible rows: per state column, the states that count; None: every row counts.
Visible = dict[str, tuple[str, ...]] | None


def visible_rows(activities: Sequence[Activity]) -> dict[str, Visible]:
    """For each hinted table, the rows whose change an activity can see.

    A table activity sees the rows of its table in its active states, before or after the
    change; its filter is left out (a superset: a row it excludes costs a hint, one read).
    Every other table it reads (``tables``), an expression's tables, the table of a filter-only
    activity (``active_states: []``) and one whose details list other rows (``details.where``)
    count every row. A table several activities read: the union."""
    visible: dict[str, Visible] = {}
    for activity in activities:
        if not activity.hint_triggers:
            continue
        for table in activity.hinted_tables:
            states: Visible = None
            narrow = activity.details is None or activity.details.where is None
            if table == activity.table and activity.active_states and narrow:
                states = {activity.state_column: activity.active_states}
            if table not in visible:
                visible[table] = states
            elif visible[table] is None or states is None:
                visible[table] = None
            else:
                merged = dict(visible[table] or {})
                for column, more in states.items():
                    merged[column] = tuple(dict.fromkeys([*merged.get(column, ()), *more]))
                visible[table] = merged
    return visible


HINT_TRIGGER = "system_stability_hint"
HINT_ROWS_PREFIX = "system_stability_hint_"
HINT_ROWS_MARKER = f"{MARKER} hint rows of"
OLD_ROWS, NEW_ROWS = "system_stability_old", "system_stability_new"
ROW_EVENTS = ("insert", "update", "delete")


def trigger_name(event: str) -> str:
    return f"{HINT_TRIGGER}_{event}"


def hint_rows_function(table: str) -> str:
    """The function of a table's statement triggers: its name, public and unique per table
    (PostgreSQL cuts names at 63 characters: the bare name is cut, a digest keeps it unique)."""
    _, bare = split_name(table)
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    return f"public.{HINT_ROWS_PREFIX}{bare[:30]}_{digest}"


def _row_condition(visible: Visible, alias: str) -> str | None:
    """The SQL boolean over row ``alias`` that says it is visible; None: every row is."""
    if visible is None:
        return None
    return " OR ".join(
        f"{alias}.{ident(column)}::pg_catalog.text OPERATOR(pg_catalog.=) ANY ("
        f"ARRAY[{', '.join(literal(s) for s in states)}]::pg_catalog.text[])"
        for column, states in visible.items()
    )


def _exists(rows: str, visible: Visible) -> str:
    condition = _row_condition(visible, "t")
    where = f" WHERE {condition}" if condition else ""
    return f"EXISTS (SELECT FROM {rows} AS t{where})"


def _hint_rows_function(table: str, visible: Visible) -> str:
    """Plain plpgsql, like hold.sql's system_stability_hint() and for the same reasons (no
    SECURITY DEFINER, no SET, every name qualified): the hold first, then whether the
    statement's transition tables hold a visible row. One trigger per statement (PostgreSQL
    allows transition tables only on a trigger of one event), the function tells by TG_OP;
    a transition table is named only in the branch of the events that have it."""
    name = hint_rows_function(table)
    notify = "PERFORM public.system_stability_notify(TG_ARGV[0]);"
    body = f"""BEGIN
    IF coalesce(
        pg_catalog.pg_sequence_last_value('public.system_stability_hold'::pg_catalog.regclass),
        0::pg_catalog.int8) OPERATOR(pg_catalog.=) 1::pg_catalog.int8 THEN
        RETURN NULL;
    END IF;
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT'::pg_catalog.text THEN
        IF {_exists(NEW_ROWS, visible)} THEN
            {notify}
        END IF;
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE'::pg_catalog.text THEN
        IF {_exists(OLD_ROWS, visible)} THEN
            {notify}
        END IF;
    ELSIF {_exists(OLD_ROWS, visible)}
        OR {_exists(NEW_ROWS, visible)} THEN
        {notify}
    END IF;
    RETURN NULL;
END;"""
    comment = literal(f"{HINT_ROWS_MARKER} {table}: a hint when a statement changed one.")
    return (
        f"CREATE OR REPLACE FUNCTION {name}()\nRETURNS trigger\nLANGUAGE plpgsql\n"
        f"AS {DOLLAR_TAG}\n{body}\n{DOLLAR_TAG};\n"
        f"COMMENT ON FUNCTION {name}() IS {comment};"
    )


def _row_triggers(table: str, events: Sequence[str], visible: Visible) -> str:
    """The DO block that creates the INSERT/UPDATE/DELETE triggers of ``table``, chosen by
    its kind when applied (the text stays the same, so its fingerprint does too):

    * a plain table: statement triggers with transition tables, hinting when a statement
      changed a visible row (a statement that changed none, an idle worker's poll, is silent);
    * a partitioned table, or a partition: row triggers, filtered by WHEN on the visible rows.
      A statement trigger of a partitioned table never fires for statements that name a
      partition, and is not cloned; a row trigger is cloned by PostgreSQL to every partition,
      those created or attached later included, and fires whichever table the statement
      names. Transition tables are not allowed on them (nor on a partition's row triggers)."""
    target = qualified(table)
    payload = literal(json.dumps({"table": split_name(table)[1]}, separators=(",", ":")))
    rows, statements = [], []
    for event in events:
        name = trigger_name(event)
        sides = {"insert": ("NEW",), "update": ("OLD", "NEW"), "delete": ("OLD",)}[event]
        conditions = [c for side in sides if (c := _row_condition(visible, side)) is not None]
        when = f"\n            WHEN ({' OR '.join(conditions)})" if conditions else ""
        rows.append(
            f"        CREATE OR REPLACE TRIGGER {name}\n"
            f"            AFTER {event.upper()} ON {target} FOR EACH ROW{when}\n"
            f"            EXECUTE FUNCTION public.system_stability_hint({payload});"
        )
        referencing = {
            "insert": f"NEW TABLE AS {NEW_ROWS}",
            "update": f"OLD TABLE AS {OLD_ROWS} NEW TABLE AS {NEW_ROWS}",
            "delete": f"OLD TABLE AS {OLD_ROWS}",
        }[event]
        statements.append(
            f"        CREATE OR REPLACE TRIGGER {name}\n"
            f"            AFTER {event.upper()} ON {target}\n"
            f"            REFERENCING {referencing}\n            FOR EACH STATEMENT\n"
            f"            EXECUTE FUNCTION {hint_rows_function(table)}({payload});"
        )
    row_kind = (
        "SELECT FROM pg_catalog.pg_class AS c\n"
        f"        WHERE c.oid OPERATOR(pg_catalog.=) {literal(target)}::pg_catalog.regclass\n"
        "          AND (c.relkind OPERATOR(pg_catalog.=) 'p'::pg_catalog.\"char\"\n"
        "               OR c.relispartition)"
    )
    return (
        f"DO {DOLLAR_TAG}\nBEGIN\n    IF EXISTS ({row_kind}) THEN\n"
        + "\n".join(rows)
        + "\n    ELSE\n"
        + "\n".join(statements)
        + f"\n    END IF;\nEND;\n{DOLLAR_TAG};"
    )


def hint_triggers(activities: Sequence[Activity]) -> list[str]:
    """Per hinted table: its hint function and INSERT/UPDATE/DELETE triggers (_row_triggers),
    and a plain statement trigger for TRUNCATE, which has no transition tables (the channel is
    in hold.sql's functions). A partitioned table's TRUNCATE trigger fires when the statement
    names it (every partition is emptied); a partition's own TRUNCATE, DROP or DETACH fires
    no trigger of the parent's: the reconcile finds what they changed."""
    visible = visible_rows(activities)
    parts = []
    for table, events in hinted_tables(activities).items():
        row_events = [event for event in events if event in ROW_EVENTS]
        if row_events:
            parts.append(_hint_rows_function(table, visible[table]))
            parts.append(_row_triggers(table, row_events, visible[table]))
        if "truncate" in events:
            payload = json.dumps({"table": split_name(table)[1]}, separators=(",", ":"))
            parts.append(
                f"CREATE OR REPLACE TRIGGER {trigger_name('truncate')}\n"
                f"AFTER TRUNCATE ON {qualified(table)}\nFOR EACH STATEMENT\n"
                f"EXECUTE FUNCTION public.system_stability_hint({literal(payload)});"
            )
    return parts


def wanted_triggers(activities: Sequence[Activity]) -> list[tuple[str, str]]:
    return [
        (table, trigger_name(event))
        for table, events in hinted_tables(activities).items()
        for event in events
    ]
