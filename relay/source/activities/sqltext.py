"""How the generated SQL is written: quoting, the functions' common form, the stale-object loop.

Every name comes from the config, checked against ``IDENTIFIER`` (relay/config/activities.py),
so double quotes are a complete quoting; every state literal is quoted here, and snippets sit
in parentheses inside functions quoted with ``DOLLAR_TAG``. Each function is ``SECURITY
DEFINER`` with a pinned ``search_path`` (``HEADER``), so the relay's role needs no table
privileges.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.config.activities import DOLLAR_TAG, split_name

MARKER = "stability-relay:"
HEADER = "LANGUAGE sql STABLE SECURITY DEFINER\nSET search_path = pg_catalog, pg_temp\n"
# Set in a transaction that plans a snippet or a read as the functions would run it.
SEARCH_PATH = "SET LOCAL search_path = pg_catalog, pg_temp"


def ident(name: str) -> str:
    return f'"{name}"'


def qualified(name: str) -> str:
    schema, table = split_name(name)
    return f"{ident(schema)}.{ident(table)}"


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def text_array(values: Sequence[str]) -> str:
    return "ARRAY[" + ", ".join(literal(v) for v in values) + "]::pg_catalog.text[]"


def definer_function(name: str, arguments: str, returns: str, body: str, comment: str) -> str:
    return (
        f"CREATE OR REPLACE FUNCTION {name}({arguments})\nRETURNS {returns}\n{HEADER}"
        f"AS {DOLLAR_TAG}\n{body}\n{DOLLAR_TAG};\n"
        f"COMMENT ON FUNCTION {name}({_types(arguments)}) IS {literal(f'{MARKER} {comment}')};"
    )


def _types(arguments: str) -> str:
    return ", ".join(part.split()[-1] for part in arguments.split(",") if part.strip())


def drop_public_functions(
    pattern: str, keep: str, *, described: str = "", wrap: bool = True
) -> str:
    """The loop, in a DO block, that drops each function of schema public whose name is LIKE
    ``pattern`` (and, given ``described``, whose comment is LIKE it) and not in ``keep`` (a
    text array): what an earlier install made that this one does not."""
    like = "\n              " if wrap else " "
    comment = (
        "          AND pg_catalog.obj_description(p.oid, 'pg_proc'::pg_catalog.name)\n"
        f"              OPERATOR(pg_catalog.~~) '{described}'::pg_catalog.text\n"
        if described
        else ""
    )
    return (
        "    FOR stale IN\n"
        "        SELECT p.oid::pg_catalog.regprocedure AS fn FROM pg_catalog.pg_proc AS p\n"
        "        WHERE p.pronamespace\n"
        "              OPERATOR(pg_catalog.=) 'public'::pg_catalog.regnamespace::pg_catalog.oid\n"
        f"          AND p.proname::pg_catalog.text{like}"
        f"OPERATOR(pg_catalog.~~) '{pattern}'::pg_catalog.text\n"
        f"{comment}"
        f"          AND p.proname::pg_catalog.text OPERATOR(pg_catalog.<>) ALL ({keep})\n"
        "    LOOP\n"
        "        EXECUTE pg_catalog.format('DROP FUNCTION %s', stale.fn);\n"
        "    END LOOP;"
    )
