"""Whether a role reads every row of a table: the table exists, the role may SELECT it, and
row-level security shows it every row (it owns the table without FORCE, is superuser or
BYPASSRLS, or a permissive ``USING (true)`` policy covers it and no restrictive one does).
Otherwise the functions, which run as that role, would count no rows and say "stable".
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from relay.config.activities import split_name

# Tables are found by name in the catalog, not with to_regclass(): the relay's own role has
# no USAGE on the data system's schemas, and needs none.
RELATION = """
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
LEFT JOIN pg_catalog.pg_class AS c ON c.oid = ({RELATION})
WHERE r.rolname = %(role)s
"""


async def check_table(
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
