"""Command line: ``stability-relay run | check | db install | wait | webhook test | demo``.

Exit codes: 0 success, 1 runtime failure (e.g. cannot bind, database refused the
install), 2 invalid configuration or usage. Never a traceback for a user's mistake.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

import psycopg

from relay import __version__
from relay.config import Config, load_config
from relay.errors import ConfigError, RelayError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stability-relay",
        description="Relay a PostgreSQL data system's stability (stable/processing) "
        "to browsers (SSE), Prometheus and webhooks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the relay")
    _config_flags(run)
    _profile_flag(run)
    run.add_argument("--listen", metavar="HOST:PORT", help="HTTP address (default 127.0.0.1:8080)")

    check = commands.add_parser("check", help="validate a config file and exit")
    check.add_argument("--config", metavar="FILE", required=True)
    _profile_flag(check)

    db = commands.add_parser("db", help="database set-up")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    install = db_commands.add_parser("install", help="apply sql/ (idempotent)")
    install.add_argument("--dsn", help="PostgreSQL connection string (default: $RELAY_DSN)")
    install.add_argument("--config", metavar="FILE")
    _profile_flag(install)
    install.add_argument(
        "--demo-schema", action="store_true", help="also create the demo stand-in tables"
    )
    install.add_argument(
        "--print",
        action="store_true",
        dest="print_sql",
        help="write the SQL to stdout instead of applying it (for a DBA to apply with psql)",
    )

    webhook = commands.add_parser("webhook", help="webhook tools")
    hook_commands = webhook.add_subparsers(dest="webhook_command", required=True, metavar="ACTION")
    test = hook_commands.add_parser(
        "test", help="send a clearly marked test event to one target; print the answer"
    )
    test.add_argument("name", metavar="NAME", help="the webhook's name in the config")
    test.add_argument("--config", metavar="FILE", required=True)

    from relay.cli.wait import END_ON, END_ON_HELP, EXIT_CODES_HELP

    waiting = commands.add_parser(
        "wait",
        help="wait until the system is stable (or processing); for CI jobs",
        epilog=EXIT_CODES_HELP,
    )
    waiting.add_argument("--url", required=True, help="the relay's base URL")
    waiting.add_argument("--token", help="a bearer token (default: $RELAY_TOKEN)")
    waiting.add_argument("--until", choices=["stable", "processing"], default="stable")
    waiting.add_argument("--stable-for", default="0s", help='how long it must hold ("30s")')
    waiting.add_argument("--timeout", default="10m", help='give up after this long ("10m")')
    waiting.add_argument("--activity", help="wait for this activity only")
    waiting.add_argument("--end-on", default=",".join(END_ON), help=END_ON_HELP)

    demo = commands.add_parser("demo", help="embedded PostgreSQL + simulated workload + relay")
    demo.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8080")
    demo.add_argument("--period", type=float, default=4.0, help="seconds between flips")
    return parser


def _profile_flag(parser: argparse.ArgumentParser) -> None:
    from relay.config.profiles import DEFAULT_PROFILE, available

    names = ", ".join(f"{n} (default)" if n == DEFAULT_PROFILE else n for n in available())
    parser.add_argument(
        "--profile",
        metavar="NAME",
        help=f"the activities that mean busy: {names} (overrides the config's profile key)",
    )


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file")
    parser.add_argument("--dsn", help="PostgreSQL connection string (default: $RELAY_DSN)")


def _load(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    if getattr(args, "dsn", None):
        overrides["database.dsn"] = args.dsn
        _warn_if_password_on_command_line(args.dsn)
    if getattr(args, "listen", None):
        overrides["http.listen"] = args.listen
    if getattr(args, "profile", None):
        overrides["profile"] = args.profile
    require_dsn = not getattr(args, "print_sql", False)
    return load_config(getattr(args, "config", None), overrides=overrides, require_dsn=require_dsn)


def _warn_if_password_on_command_line(dsn: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(dsn).get("password")
    except Exception:  # refused with its own message when the config is validated
        return
    if password:
        print(
            "warning: --dsn carries a password, which every local user can read in "
            "/proc/<pid>/cmdline and ps: put the DSN in $RELAY_DSN (or the config file as "
            "${RELAY_DSN}), or the password in ~/.pgpass or $PGPASSWORD",
            file=sys.stderr,
        )


def _print_problems(error: ConfigError) -> None:
    from relay.source.install import InstallRefused

    if isinstance(error, InstallRefused):
        print("refusing to install: the database does not fit the activities:", file=sys.stderr)
    else:
        print("invalid configuration:", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as error:
        _print_problems(error)
        return EXIT_USAGE
    except RelayError as error:
        from relay.logs import redactor

        print(f"error: {redactor.mask(str(error))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "check":
        config = _load(args)
        print(
            f"{args.config}: OK (profile {config.profile}: {', '.join(config.activity_names)}; "
            f"{len(config.webhooks)} webhook(s))"
        )
        _print_read_scans(asyncio.run(read_scans_if_reachable(config)))
        return EXIT_OK
    if args.command == "run":
        return _run(_load(args), reload=(lambda: _load(args)) if args.config else None)
    if args.command == "db":
        return _db_install(args)
    if args.command == "webhook":
        return _webhook_test(load_config(args.config), args.name)
    if args.command == "wait":
        return _wait(args)
    if args.command == "demo":
        from relay.devtools.demo import run_demo

        return run_demo(listen=args.listen, period=args.period)
    raise AssertionError(args.command)


def _run(config: Config, reload: Callable[[], Config] | None) -> int:
    from relay import logs
    from relay.app import run

    logs.configure(config.logging, config.secrets())
    problems = asyncio.run(startup_problems(config))
    if problems:
        print("refusing to start: the database does not fit the activities:", file=sys.stderr)
        for problem in problems:
            print(f"  {logs.redactor.mask(problem)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return run(config, reload, os.environ)
    except OSError as error:
        listen = config.http.listen
        print(f"error: cannot listen on {listen}: {error.strerror or error}", file=sys.stderr)
        return EXIT_FAILURE


def _wait(args: argparse.Namespace) -> int:
    from relay.cli.wait import END_ON, WaitRequest, printable, wait
    from relay.config import parse_duration

    problems = []
    durations = {}
    for key in ("stable_for", "timeout"):
        try:
            durations[key] = parse_duration(getattr(args, key))
        except ValueError as error:
            problems.append(f"--{key.replace('_', '-')}: {error}")
    if len(durations) == 2 and durations["stable_for"] > durations["timeout"]:
        problems.append("--stable-for: longer than --timeout")
    if not args.url.startswith(("http://", "https://")):
        problems.append(f"--url: expected http:// or https://, got {args.url!r}")
    end_on = [kind.strip() for kind in args.end_on.split(",")]
    if end_on != ["none"] and not (end_on and set(end_on) <= set(END_ON)):
        problems.append(
            f"--end-on: expected stalled, overdue, both (comma-separated) or none, "
            f"got {printable(args.end_on)}"
        )
    if problems:
        raise ConfigError(problems)
    request = WaitRequest(
        url=args.url,
        until=args.until,
        stable_for=durations["stable_for"],
        timeout=durations["timeout"],
        activity=args.activity,
        token=args.token or os.environ.get("RELAY_TOKEN"),
        end_on=",".join(end_on),
    )
    return asyncio.run(wait(request))


def _webhook_test(config: Config, name: str) -> int:
    from relay import logs
    from relay.cli.wait import printable
    from relay.fanout.webhooks import send_test
    from relay.fanout.webhooks.delivery import BODY_PREVIEW, origin

    hooks = {hook.name: hook for hook in config.webhooks}
    if name not in hooks:
        known = ", ".join(hooks) or "none"
        raise ConfigError([f'webhooks: no webhook named "{name}" (configured: {known})'])
    hook = hooks[name]
    logs.redactor.update(config.secrets())
    print(f"sending a test event to {name} ({origin(hook.url)}, format {hook.format})")
    result = asyncio.run(send_test(hook, config.http.public_url))
    if result.status is None:
        print(f"no answer: {printable(logs.redactor.mask(result.reason), limit=BODY_PREVIEW)}")
        return EXIT_FAILURE
    redirect = " (redirects are not followed: configure the final URL)"
    print(f"HTTP {result.status}" + (redirect if 300 <= result.status < 400 else ""))
    if result.body:
        truncated = " [truncated]" if len(result.body.encode()) >= BODY_PREVIEW else ""
        # The receiver's words, escaped: its control characters never reach the terminal.
        body = logs.redactor.mask(result.body.rstrip())
        print(printable(body, limit=BODY_PREVIEW) + truncated)
    return EXIT_OK if 200 <= result.status < 300 else EXIT_FAILURE


def _print_read_scans(scans: list[Any]) -> None:
    """One block on stderr: each read that would scan a large table, and its index."""
    if not scans:
        return
    from relay import logs

    reads = "a read" if len(scans) == 1 else f"{len(scans)} reads"
    lines = [f"warning: {reads} would scan a large table (advice: nothing is refused):"]
    for scan in scans:
        lines += ["", *(f"  {line}" if line else "" for line in scan.describe().splitlines())]
    print(logs.redactor.mask("\n".join(lines)), file=sys.stderr)


def _db_install(args: argparse.Namespace) -> int:
    from relay import logs
    from relay.source.install import PARKED, install, printed, scripts, suggested_indexes

    config = _load(args)
    if args.print_sql:
        plan = scripts(
            config.activities,
            channel=config.database.channel,
            demo_schema=args.demo_schema,
            enrichers=config.enrichers,
        )
        for script in plan:
            sys.stdout.write(printed(script))
        sys.stdout.write(suggested_indexes(config.activities))
        return EXIT_OK
    logs.redactor.update(config.secrets())
    scans: list[Any] = []
    applied = asyncio.run(
        install(
            config.database.dsn,
            activities=config.activities,
            profile=config.profile,
            demo_schema=args.demo_schema,
            channel=config.database.channel,
            enrichers=config.enrichers,
            scans=scans,
        )
    )
    for name in applied:
        print(name if name == PARKED else f"applied {name}")
    print(f"activities ({config.profile}): {', '.join(config.activity_names)}")
    _print_read_scans(scans)
    return EXIT_OK


async def read_scans_if_reachable(config: Config) -> list[Any]:
    """For ``check``: the reads that would scan a large table, if the database can be reached
    now with the config's DSN (as its role: the relay's own is judged from the catalog);
    nothing otherwise, quietly (``check`` validates the file, not the database)."""
    from relay.errors import DatabaseUnavailable
    from relay.source import pg
    from relay.source.activities.readcost import read_scans

    if not config.database.dsn:
        return []
    try:
        async with asyncio.timeout(config.database.connect_timeout + 1):
            conn = await pg.connect(config.database, config.database.application_name)
    except (DatabaseUnavailable, TimeoutError, psycopg.Error):
        return []
    try:
        async with asyncio.timeout(config.database.heartbeat_timeout * 2):
            return list(await read_scans(conn, config.activities))
    except (TimeoutError, psycopg.Error) as error:
        print(
            f"warning: the reads' cost was not checked: {pg.describe_error(error)}", file=sys.stderr
        )
        return []
    finally:
        await conn.close()


async def startup_problems(config: Config) -> list[str]:
    """What would make the relay wrong on this database; nothing if it cannot be reached
    now (the listener checks again on every connection and reports nothing until it fits).
    """
    from relay.errors import DatabaseUnavailable, SchemaMismatch, SchemaMissing
    from relay.source import pg
    from relay.source.activities.check import verify_installed

    try:
        conn = await pg.connect(config.database, config.database.application_name)
    except DatabaseUnavailable:
        return []
    try:
        async with asyncio.timeout(config.database.heartbeat_timeout * 2):
            await verify_installed(conn, config.activities, config.profile)
    except SchemaMismatch as error:
        return error.problems
    except (SchemaMissing, TimeoutError, psycopg.Error) as error:
        # Not installed yet (an upgrade before `db install`), or the check could not finish:
        # start, report unknown, and let the listener check again on every connection.
        print(f"warning: {pg.describe_error(error)}; starting anyway", file=sys.stderr)
    finally:
        await conn.close()
    return []
