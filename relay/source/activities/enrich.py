"""The feeds' enrich functions, ``public.system_stability_enrich_<name>(jsonb)``: for each
payload of a notification, the row a feed sends with it (``relay/config/activities.py``:
``EnrichRead``). Installed after the activities' SQL, outside its fingerprint (``sql.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.config.activities import ENRICH_PREFIX, EnrichRead, enrich_function
from relay.source.activities.sqltext import (
    definer_function,
    drop_public_functions,
    ident,
    literal,
    qualified,
    text_array,
)


def enrich_query(read: EnrichRead, payloads: str) -> str:
    """One statement answering, for each element of the jsonb array ``payloads``, the object
    to send or null, in order (``EnrichRead``)."""
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
            definer_function(
                name,
                "payloads jsonb",
                "jsonb",
                enrich_query(read, "payloads"),
                f"enrich {read.name}: for each payload, the object a feed sends, or null.",
            )
            + f"\nREVOKE EXECUTE ON FUNCTION {name}(jsonb) FROM PUBLIC;"
        )
    keep = text_array([enrich_function(read).split(".")[1] for read in enrichers])
    pattern = ENRICH_PREFIX.replace("_", "\\_") + "%"
    loop = drop_public_functions(pattern, keep)
    parts.append(f"DO $$\nDECLARE\n    stale record;\nBEGIN\n{loop}\nEND;\n$$;")
    return "\n\n".join(parts) + "\n"
