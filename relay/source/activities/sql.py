"""The SQL that ``db install`` generates from the activities: reads, details and triggers.

Generated, not templated: every name comes from the config, checked against
``spec.IDENTIFIER`` (so double quotes are a complete quoting), every state literal is
quoted here, and snippets sit in parentheses inside functions quoted with ``DOLLAR_TAG``.

What it creates (all owned by the installing role, all ``SECURITY DEFINER`` with a pinned
``search_path`` so the relay's role needs no table privileges):

* per table activity, a view ``<schema>.system_stability_active_<name>`` of its active rows;
* ``public.system_stability_activities()``: ``{"<name>": true|false, ...}`` in one snapshot,
  the relay's one read (however many activities there are);
* ``public.is_system_stable()``: no activity active (NULL if one cannot tell);
* ``public.system_stability_details(max_items)`` and, for the seed's API,
  ``get_import_jobs_in_progress()`` and ``get_analytics_tasks_in_progress()``;
* one statement trigger ``system_stability_hint`` per table hinted by triggers;
* per enrich read of the feeds, ``public.system_stability_enrich_<name>(jsonb)``;
* and it drops whatever an earlier install created that this config no longer has.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

from relay.config.activities import (
    ALL_EVENTS,
    DOLLAR_TAG,
    ENRICH_PREFIX,
    Activity,
    ActivityDetails,
    EnrichRead,
    ListName,
    enrich_function,
    split_name,
)

LISTS: tuple[ListName, ...] = ("import_jobs", "analytics_tasks")
SEED_LIST_FUNCTIONS = {
    "import_jobs": "public.get_import_jobs_in_progress",
    "analytics_tasks": "public.get_analytics_tasks_in_progress",
}
VIEW_PREFIX = "system_stability_active_"
ITEMS_PREFIX = "system_stability_items_"
MARKER = "stability-relay:"
HEADER = "LANGUAGE sql STABLE SECURITY DEFINER\nSET search_path = pg_catalog, pg_temp\n"
# Functions of earlier designs (per-row hint triggers, registry-compiled WHEN clauses, text
# activeness helpers): dropped once the triggers above no longer use them.
LEGACY_FUNCTIONS = """DROP FUNCTION IF EXISTS worker.system_stability_registry_hint();
DROP FUNCTION IF EXISTS public.import_job_state_is_active(text);
DROP FUNCTION IF EXISTS worker.task_state_is_active(text);
DROP FUNCTION IF EXISTS worker.system_stability_task_hint();
DROP FUNCTION IF EXISTS worker.system_stability_compile_commands();"""
# Views of the design before activities: dropped on install.
LEGACY_VIEWS = (
    "public.system_stability_active_import_jobs",
    "worker.system_stability_active_tasks",
)


def ident(name: str) -> str:
    return f'"{name}"'


def qualified(name: str) -> str:
    schema, table = split_name(name)
    return f"{ident(schema)}.{ident(table)}"


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_name(activity: Activity) -> str:
    assert activity.table is not None
    schema, _ = split_name(activity.table)
    return f"{schema}.{VIEW_PREFIX}{activity.name}"


def active_condition(activity: Activity) -> str:
    """The WHERE clause of a table activity's active rows (alias ``t``)."""
    if not activity.active_states:  # the filter alone (spec: a table without states)
        return f"({activity.filter})"
    states = ", ".join(literal(s) for s in activity.active_states)
    condition = f"t.{ident(activity.state_column)} IN ({states})"
    if activity.filter:
        condition += f"\n    AND ({activity.filter})"
    return condition


def activity_value(activity: Activity) -> str:
    """The SQL boolean that says whether ``activity`` is active."""
    if activity.expression is not None:
        return f"({activity.expression})"
    return f"EXISTS (SELECT FROM {qualified(view_name(activity))})"


def details_source(activity: Activity, details: ActivityDetails) -> tuple[str, str]:
    """The FROM target and WHERE clause of an activity's details rows."""
    if details.table is not None:
        where = details.where or "true"
        return qualified(details.table), where
    assert activity.table is not None
    return qualified(activity.table), details.where or active_condition(activity)


FINGERPRINT = re.compile(r"config ([0-9a-f]{16})")


def fingerprint(activities: Sequence[Activity]) -> str:
    """What the generated SQL would be, in 16 hex digits: a relay compares it with the
    installed one's (in the comment of system_stability_activities()) before it reports."""
    return hashlib.sha256(_generated(activities).encode()).hexdigest()[:16]


def install_script(activities: Sequence[Activity], enrichers: Sequence[EnrichRead] = ()) -> str:
    """The activities' SQL (fingerprinted), then the feeds' enrich functions (not: a relay
    that serves no feed needs none of them, and they do not change what "busy" means)."""
    comment = literal(f"{MARKER} whether each activity is active; config {fingerprint(activities)}")
    return (
        _generated(activities)
        + f"COMMENT ON FUNCTION public.system_stability_activities() IS {comment};\n\n"
        + enrich_script(enrichers)
    )


def enrich_query(read: EnrichRead, payloads: str) -> str:
    """One statement answering, for each element of the jsonb array ``payloads``, the object
    to send or null, in order (spec.EnrichRead)."""
    joins = "".join(
        f"\n        LEFT JOIN {qualified(join.table)} AS {ident(join.alias)} ON ({join.condition})"
        for join in read.joins
    )
    unread = ", ".join(literal(verb) for verb in read.unread) or "NULL"
    verb, wrap, key = literal(read.verb), literal(read.wrap), literal(read.payload_key)
    # The payload's key takes the column's own type through the table's row type: no type is
    # declared, and a value the type refuses fails the call (the relay then retries alone).
    match = (
        f"(pg_catalog.jsonb_populate_record(NULL::{qualified(read.table)}, "
        f"pg_catalog.jsonb_build_object({literal(read.key)}, p.item -> {key}))).{ident(read.key)}"
    )
    return (
        "    SELECT COALESCE(pg_catalog.jsonb_agg(\n"
        "        CASE\n"
        f"            WHEN (p.item ->> {verb}) IN ({unread}) THEN pg_catalog.jsonb_build_object(\n"
        f"                {verb}, p.item -> {verb}, {wrap},\n"
        f"                pg_catalog.jsonb_build_object({literal(read.key)}, p.item -> {key}))\n"
        f"            WHEN r.found THEN pg_catalog.jsonb_build_object({verb}, p.item -> {verb}, "
        f"{wrap}, r.body)\n"
        "        END ORDER BY p.n), '[]'::pg_catalog.jsonb)\n"
        f"    FROM pg_catalog.jsonb_array_elements({payloads}) WITH ORDINALITY AS p (item, n)\n"
        "    LEFT JOIN LATERAL (\n"
        f"        SELECT true AS found, ({read.row})::pg_catalog.jsonb AS body\n"
        f"        FROM {qualified(read.table)} AS t{joins}\n"
        f"        WHERE t.{ident(read.key)} = {match}\n"
        "        LIMIT 1\n"
        f"    ) AS r ON NOT COALESCE((p.item ->> {verb}) IN ({unread}), false)"
    )


def enrich_script(enrichers: Sequence[EnrichRead]) -> str:
    """Each enrich function, SECURITY DEFINER with a pinned search_path like the others, and
    revoked from PUBLIC here (roles.sql grants every one to stability_relay); those of an
    earlier install that this config no longer has are dropped."""
    parts = []
    for read in enrichers:
        name = enrich_function(read)
        parts.append(
            _function(
                name,
                "payloads jsonb",
                "jsonb",
                enrich_query(read, "payloads"),
                f"enrich {read.name}: for each payload, the object a feed sends, or null.",
            )
            + f"\nREVOKE EXECUTE ON FUNCTION {name}(jsonb) FROM PUBLIC;"
        )
    keep = _array([enrich_function(read).split(".")[1] for read in enrichers])
    pattern = ENRICH_PREFIX.replace("_", "\\_") + "%"
    parts.append(f"""DO $$
DECLARE
    stale record;
BEGIN
    FOR stale IN
        SELECT p.oid::pg_catalog.regprocedure AS fn FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace
              OPERATOR(pg_catalog.=) 'public'::pg_catalog.regnamespace::pg_catalog.oid
          AND p.proname::pg_catalog.text
              OPERATOR(pg_catalog.~~) '{pattern}'::pg_catalog.text
          AND p.proname::pg_catalog.text OPERATOR(pg_catalog.<>) ALL ({keep})
    LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION %s', stale.fn);
    END LOOP;
END;
$$;""")
    return "\n\n".join(parts) + "\n"


def _generated(activities: Sequence[Activity]) -> str:
    parts = [
        "-- stability-relay: generated by `stability-relay db install` from the activities.\n"
        "-- Idempotent: apply it again after every change of the config or the schema.",
        "\n".join(f"DROP VIEW IF EXISTS {qualified(view)};" for view in LEGACY_VIEWS),
        *_views(activities),
        _activities_function(activities),
        _is_system_stable(),
        *_items_functions(activities),
        _details_function(activities),
        _indicators_function(activities),
        _slugs_function(activities),
        *_seed_list_functions(activities),
        *_triggers(activities),
        _drop_stale(activities),
        LEGACY_FUNCTIONS,
        _revoke_from_public(activities),
    ]
    return "\n\n".join(parts) + "\n"


def _function(name: str, arguments: str, returns: str, body: str, comment: str) -> str:
    return (
        f"CREATE OR REPLACE FUNCTION {name}({arguments})\nRETURNS {returns}\n{HEADER}"
        f"AS {DOLLAR_TAG}\n{body}\n{DOLLAR_TAG};\n"
        f"COMMENT ON FUNCTION {name}({_types(arguments)}) IS {literal(f'{MARKER} {comment}')};"
    )


def _types(arguments: str) -> str:
    return ", ".join(part.split()[-1] for part in arguments.split(",") if part.strip())


def _views(activities: Sequence[Activity]) -> list[str]:
    views = []
    for activity in activities:
        if activity.table is None:
            continue
        name = qualified(view_name(activity))
        views.append(
            f"-- {activity.name}: the active rows of {activity.table}. The states are untyped\n"
            "-- literals, so they take the column's type and an index on it can serve them.\n"
            f"DROP VIEW IF EXISTS {name};\n"
            f"CREATE VIEW {name} AS\nSELECT t.*\nFROM {qualified(activity.table)} AS t\n"
            f"WHERE {active_condition(activity)};\n"
            f"COMMENT ON VIEW {name} IS {literal(f'{MARKER} activity {activity.name}')};"
        )
    return views


def _activities_function(activities: Sequence[Activity]) -> str:
    pairs = ",\n".join(
        f"        {literal(activity.name)}, {activity_value(activity)}" for activity in activities
    )
    body = f"    SELECT pg_catalog.jsonb_build_object(\n{pairs}\n    )"
    return _function(
        "public.system_stability_activities",
        "",
        "jsonb",
        body,
        "whether each activity is active, read in one snapshot.",
    )


def _is_system_stable() -> str:
    body = (
        "    SELECT CASE\n"
        "        WHEN bool_or(a.value = 'true'::jsonb) THEN false\n"
        "        WHEN bool_or(a.value = 'null'::jsonb) THEN NULL\n"
        "        ELSE true\n"
        "    END\n"
        "    FROM pg_catalog.jsonb_each(public.system_stability_activities()) AS a"
    )
    return _function(
        "public.is_system_stable",
        "",
        "boolean",
        body,
        "true when no activity is active.",
    )


def _items_name(activity: Activity) -> str:
    return f"public.{ITEMS_PREFIX}{activity.name}"


def _items_functions(activities: Sequence[Activity]) -> list[str]:
    functions = []
    for activity in activities:
        details = activity.details
        if details is None:
            continue
        source, where = details_source(activity, details)
        fields = ",\n".join(
            f"        {literal(name)}, ({sql})" for name, sql in details.fields.items()
        )
        order = f"\n    ORDER BY {details.order_by}" if details.order_by else ""
        body = (
            f"    SELECT pg_catalog.json_build_object(\n{fields}\n    )\n"
            f"    FROM {source} AS t\n    WHERE {where}{order}\n    LIMIT max_items"
        )
        functions.append(
            _function(
                _items_name(activity),
                "max_items integer",
                "SETOF json",
                body,
                f"the rows the details list for activity {activity.name}.",
            )
        )
    return functions


def _count(activity: Activity) -> str:
    assert activity.details is not None
    source, where = details_source(activity, activity.details)
    return f"(SELECT count(*) FROM {source} AS t WHERE {where})"


def _details_function(activities: Sequence[Activity]) -> str:
    ctes = ["    truth AS (SELECT public.system_stability_activities() AS a)"]
    for index, activity in enumerate(activities):
        if activity.details is not None:
            ctes.append(
                f"    i{index} AS MATERIALIZED (SELECT item, n FROM "
                f"{_items_name(activity)}(max_items) WITH ORDINALITY AS x (item, n))"
            )
    lists = []
    for list_name in LISTS:
        sources = [
            f"SELECT {index} AS k, item, n FROM i{index}"
            for index, activity in enumerate(activities)
            if activity.details is not None and activity.details.list == list_name
        ]
        union = " UNION ALL ".join(sources) or "SELECT 0 AS k, NULL::json AS item, 0 AS n LIMIT 0"
        lists.append(
            f"        {literal(list_name)}, coalesce((SELECT json_agg(s.item ORDER BY s.k, s.n) "
            f"FROM ({union}) AS s), '[]'::json)"
        )
    entries = []
    for index, activity in enumerate(activities):
        fields = [
            f"'label', {literal(activity.label)}",
            f"'active', truth.a -> {literal(activity.name)}",
        ]
        if activity.details is not None:
            fields.append(
                f"'items', coalesce((SELECT json_agg(item ORDER BY n) FROM i{index}), '[]'::json)"
            )
            fields.append(f"'total', {_count(activity)}")
        entries.append(
            f"            {literal(activity.name)}, pg_catalog.json_build_object(\n"
            f"                {', '.join(fields)})"
        )
    stable = (
        "(SELECT CASE WHEN bool_or(e.value = 'true'::jsonb) THEN false "
        "WHEN bool_or(e.value = 'null'::jsonb) THEN NULL ELSE true END "
        "FROM pg_catalog.jsonb_each(truth.a) AS e)"
    )
    body = (
        "    WITH\n"
        + ",\n".join(ctes)
        + "\n    SELECT pg_catalog.json_build_object(\n"
        + ",\n".join(lists)
        + f",\n        'system_stable', {stable},\n"
        + "        'activities', pg_catalog.json_build_object(\n"
        + ",\n".join(entries)
        + "\n        )\n    )\n    FROM truth"
    )
    return _function(
        "public.system_stability_details",
        "max_items integer",
        "json",
        body,
        "the details API: each activity with its rows, in one snapshot.",
    )


def _indicators_function(activities: Sequence[Activity]) -> str:
    pairs = [
        f"        {literal(activity.name)}, ({activity.indicator})"
        for activity in activities
        if activity.indicator is not None
    ]
    body = "    SELECT pg_catalog.json_build_object(\n" + ",\n".join(pairs) + "\n    )"
    return _function(
        "public.system_stability_indicators",
        "",
        "json",
        body,
        "each activity's own JSON indicator, read in one snapshot.",
    )


def _slugs_function(activities: Sequence[Activity]) -> str:
    """The slugs (an import job's name) of each activity's rows that have one: the history
    records them with the periods."""
    pairs = [
        f"        {literal(a.name)}, (SELECT coalesce(pg_catalog.jsonb_agg(i ->> 'slug'), "
        f"'[]') FROM {_items_name(a)}(100) AS i WHERE i ->> 'slug' IS NOT NULL)"
        for a in activities
        if a.details is not None and "slug" in a.details.fields
    ]
    body = "    SELECT pg_catalog.jsonb_build_object(\n" + ",\n".join(pairs) + "\n    )"
    return _function(
        "public.system_stability_slugs",
        "",
        "jsonb",
        body,
        "the slugs of each activity's rows, for the history.",
    )


def _seed_list_functions(activities: Sequence[Activity]) -> list[str]:
    functions = []
    for list_name, function in SEED_LIST_FUNCTIONS.items():
        sources = [
            f"SELECT {index} AS k, item, n FROM {_items_name(activity)}(NULL) "
            "WITH ORDINALITY AS x (item, n)"
            for index, activity in enumerate(activities)
            if activity.details is not None and activity.details.list == list_name
        ]
        if sources:
            body = f"    SELECT s.item FROM ({' UNION ALL '.join(sources)}) AS s ORDER BY s.k, s.n"
        else:
            body = "    SELECT NULL::json LIMIT 0"
        functions.append(
            _function(function, "", "SETOF json", body, f"the seed's {list_name}, as JSON objects.")
        )
    return functions


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


def _triggers(activities: Sequence[Activity]) -> list[str]:
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


def _wanted_triggers(activities: Sequence[Activity]) -> list[tuple[str, str]]:
    return [
        (table, trigger_name(event))
        for table, events in hinted_tables(activities).items()
        for event in events
    ]


def _array(values: Sequence[str]) -> str:
    return "ARRAY[" + ", ".join(literal(v) for v in values) + "]::pg_catalog.text[]"


def _drop_stale(activities: Sequence[Activity]) -> str:
    """Drop what an earlier install made that this one does not: triggers (those of earlier
    designs too: one statement trigger per table, per-row ones), their hint functions, views
    and items functions. A partition's clones of a row trigger go with the parent's."""
    wanted = _wanted_triggers(activities)
    tables = _array([table for table, _ in wanted])
    names = _array([name for _, name in wanted])
    functions = _array(
        [
            hint_rows_function(table).split(".")[1]
            for table, events in hinted_tables(activities).items()
            if any(event in ROW_EVENTS for event in events)
        ]
    )
    trigger_pattern = HINT_ROWS_PREFIX.replace("_", "\\_") + "%"
    views = _array([view_name(a) for a in activities if a.table is not None])
    items = _array([_items_name(a).split(".")[1] for a in activities if a.details is not None])
    return f"""DO $$
DECLARE
    stale record;
BEGIN
    FOR stale IN
        SELECT tg.tgrelid::pg_catalog.regclass AS tbl, tg.tgname FROM pg_catalog.pg_trigger AS tg
        WHERE (tg.tgname OPERATOR(pg_catalog.=) '{HINT_TRIGGER}'::pg_catalog.name
               OR tg.tgname::pg_catalog.text
                  OPERATOR(pg_catalog.~~) '{trigger_pattern}'::pg_catalog.text)
          AND NOT tg.tgisinternal
          AND tg.tgparentid OPERATOR(pg_catalog.=) 0::pg_catalog.oid
          AND NOT EXISTS (
              SELECT FROM ROWS FROM (pg_catalog.unnest({tables}), pg_catalog.unnest({names}))
                  AS w (tbl, name)
              WHERE pg_catalog.to_regclass(w.tbl)::pg_catalog.oid OPERATOR(pg_catalog.=) tg.tgrelid
                AND w.name OPERATOR(pg_catalog.=) tg.tgname::pg_catalog.text)
    LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', stale.tgname, stale.tbl);
    END LOOP;
    FOR stale IN
        SELECT p.oid::pg_catalog.regprocedure AS fn FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace
              OPERATOR(pg_catalog.=) 'public'::pg_catalog.regnamespace::pg_catalog.oid
          AND p.proname::pg_catalog.text
              OPERATOR(pg_catalog.~~) '{trigger_pattern}'::pg_catalog.text
          AND pg_catalog.obj_description(p.oid, 'pg_proc'::pg_catalog.name)
              OPERATOR(pg_catalog.~~) '{HINT_ROWS_MARKER} %'::pg_catalog.text
          AND p.proname::pg_catalog.text OPERATOR(pg_catalog.<>) ALL ({functions})
    LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION %s', stale.fn);
    END LOOP;
    FOR stale IN
        SELECT c.oid::pg_catalog.regclass AS view FROM pg_catalog.pg_class AS c
        WHERE c.relkind OPERATOR(pg_catalog.=) 'v'::pg_catalog."char"
          AND c.relname::pg_catalog.text OPERATOR(pg_catalog.~~) '{VIEW_PREFIX}%'::pg_catalog.text
          AND pg_catalog.obj_description(c.oid, 'pg_class'::pg_catalog.name)
              OPERATOR(pg_catalog.~~) '{MARKER} activity %'::pg_catalog.text
          AND c.oid OPERATOR(pg_catalog.<>) ALL (
              SELECT pg_catalog.to_regclass(x)::pg_catalog.oid
              FROM pg_catalog.unnest({views}) AS x
              WHERE pg_catalog.to_regclass(x) IS NOT NULL)
    LOOP
        EXECUTE pg_catalog.format('DROP VIEW %s', stale.view);
    END LOOP;
    FOR stale IN
        SELECT p.oid::pg_catalog.regprocedure AS fn FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace
              OPERATOR(pg_catalog.=) 'public'::pg_catalog.regnamespace::pg_catalog.oid
          AND p.proname::pg_catalog.text OPERATOR(pg_catalog.~~) '{ITEMS_PREFIX}%'::pg_catalog.text
          AND p.proname::pg_catalog.text OPERATOR(pg_catalog.<>) ALL ({items})
    LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION %s', stale.fn);
    END LOOP;
END;
$$;"""


def _revoke_from_public(activities: Sequence[Activity]) -> str:
    """Every generated function runs as its owner: only roles.sql's grants may call them."""
    names = [
        "public.system_stability_activities()",
        "public.is_system_stable()",
        "public.system_stability_details(integer)",
        "public.system_stability_indicators()",
        "public.system_stability_slugs()",
        *(f"{f}()" for f in SEED_LIST_FUNCTIONS.values()),
        *(f"{_items_name(a)}(integer)" for a in activities if a.details is not None),
    ]
    return "REVOKE EXECUTE ON FUNCTION\n    " + ",\n    ".join(names) + "\nFROM PUBLIC;"
