"""The activeness read and the details, generated from the activities (``sql.py`` puts them
in the install script).

* per table activity, a view ``<schema>.system_stability_active_<name>`` of its active rows;
* ``public.system_stability_activities()``: ``{"<name>": true|false, ...}`` in one snapshot,
  the relay's one read (however many activities there are);
* ``public.is_system_stable()``: no activity active (NULL if one cannot tell);
* ``public.system_stability_details(max_items)``, its per-activity items functions, the
  indicators and the slugs (for the history), and, for the seed's API,
  ``get_import_jobs_in_progress()`` and ``get_analytics_tasks_in_progress()``.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.config.activities import Activity, ActivityDetails, ListName, split_name
from relay.source.activities.sqltext import MARKER, definer_function, ident, literal, qualified

LISTS: tuple[ListName, ...] = ("import_jobs", "analytics_tasks")
SEED_LIST_FUNCTIONS = {
    "import_jobs": "public.get_import_jobs_in_progress",
    "analytics_tasks": "public.get_analytics_tasks_in_progress",
}
VIEW_PREFIX = "system_stability_active_"
ITEMS_PREFIX = "system_stability_items_"


def view_name(activity: Activity) -> str:
    assert activity.table is not None
    schema, _ = split_name(activity.table)
    return f"{schema}.{VIEW_PREFIX}{activity.name}"


def active_condition(activity: Activity) -> str:
    """The WHERE clause of a table activity's active rows (alias ``t``)."""
    if not activity.active_states:  # the filter alone (the config: a table without states)
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


def active_views(activities: Sequence[Activity]) -> list[str]:
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


def activities_function(activities: Sequence[Activity]) -> str:
    pairs = ",\n".join(
        f"        {literal(activity.name)}, {activity_value(activity)}" for activity in activities
    )
    body = f"    SELECT pg_catalog.jsonb_build_object(\n{pairs}\n    )"
    return definer_function(
        "public.system_stability_activities",
        "",
        "jsonb",
        body,
        "whether each activity is active, read in one snapshot.",
    )


# The verdict, over the activities' jsonb ({"<name>": true|false|null}): processing (false)
# when one is active, unknown (NULL) when none is and one cannot tell, else stable.
VERDICT = (
    "WHEN bool_or({alias}.value = 'true'::jsonb) THEN false",
    "WHEN bool_or({alias}.value = 'null'::jsonb) THEN NULL",
    "ELSE true",
)


def stable_verdict(activities: str, alias: str, indent: str | None = None) -> str:
    """The ``SELECT`` of the verdict over ``activities`` (a jsonb expression): one line, or
    one clause a line under ``indent``. is_system_stable() and the details' ``system_stable``
    both say it, in one snapshot each."""
    clause = " " if indent is None else f"\n{indent}"
    branch = " " if indent is None else f"\n{indent}    "
    cases = branch.join(case.format(alias=alias) for case in VERDICT)
    return (
        f"SELECT CASE{branch}{cases}{clause}END"
        f"{clause}FROM pg_catalog.jsonb_each({activities}) AS {alias}"
    )


def is_system_stable() -> str:
    body = "    " + stable_verdict("public.system_stability_activities()", "a", indent="    ")
    return definer_function(
        "public.is_system_stable",
        "",
        "boolean",
        body,
        "true when no activity is active.",
    )


def items_name(activity: Activity) -> str:
    return f"public.{ITEMS_PREFIX}{activity.name}"


def items_functions(activities: Sequence[Activity]) -> list[str]:
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
            definer_function(
                items_name(activity),
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


def details_function(activities: Sequence[Activity]) -> str:
    ctes = ["    truth AS (SELECT public.system_stability_activities() AS a)"]
    for index, activity in enumerate(activities):
        if activity.details is not None:
            ctes.append(
                f"    i{index} AS MATERIALIZED (SELECT item, n FROM "
                f"{items_name(activity)}(max_items) WITH ORDINALITY AS x (item, n))"
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
    stable = f"({stable_verdict('truth.a', 'e')})"
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
    return definer_function(
        "public.system_stability_details",
        "max_items integer",
        "json",
        body,
        "the details API: each activity with its rows, in one snapshot.",
    )


def indicators_function(activities: Sequence[Activity]) -> str:
    pairs = [
        f"        {literal(activity.name)}, ({activity.indicator})"
        for activity in activities
        if activity.indicator is not None
    ]
    body = "    SELECT pg_catalog.json_build_object(\n" + ",\n".join(pairs) + "\n    )"
    return definer_function(
        "public.system_stability_indicators",
        "",
        "json",
        body,
        "each activity's own JSON indicator, read in one snapshot.",
    )


def slugs_function(activities: Sequence[Activity]) -> str:
    """The slugs (an import job's name) of each activity's rows that have one: the history
    records them with the periods."""
    pairs = [
        f"        {literal(a.name)}, (SELECT coalesce(pg_catalog.jsonb_agg(i ->> 'slug'), "
        f"'[]') FROM {items_name(a)}(100) AS i WHERE i ->> 'slug' IS NOT NULL)"
        for a in activities
        if a.details is not None and "slug" in a.details.fields
    ]
    body = "    SELECT pg_catalog.jsonb_build_object(\n" + ",\n".join(pairs) + "\n    )"
    return definer_function(
        "public.system_stability_slugs",
        "",
        "jsonb",
        body,
        "the slugs of each activity's rows, for the history.",
    )


def seed_list_functions(activities: Sequence[Activity]) -> list[str]:
    functions = []
    for list_name, function in SEED_LIST_FUNCTIONS.items():
        sources = [
            f"SELECT {index} AS k, item, n FROM {items_name(activity)}(NULL) "
            "WITH ORDINALITY AS x (item, n)"
            for index, activity in enumerate(activities)
            if activity.details is not None and activity.details.list == list_name
        ]
        if sources:
            body = f"    SELECT s.item FROM ({' UNION ALL '.join(sources)}) AS s ORDER BY s.k, s.n"
        else:
            body = "    SELECT NULL::json LIMIT 0"
        functions.append(
            definer_function(
                function, "", "SETOF json", body, f"the seed's {list_name}, as JSON objects."
            )
        )
    return functions
