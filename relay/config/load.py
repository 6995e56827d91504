"""Loading the configuration: one YAML file, with the command line's overrides and the
environment's ``${NAME}`` values, validated in one step.

Every problem is reported with its key path (``http.heartbeat: expected a duration
like "15s", got "fast"``); the result is a frozen object passed down to every
component. The config file and the variables it names are read here only; the process's
own settings are read where they apply (systemd's NOTIFY_SOCKET in ``relay/fanout/systemd.py``,
RELAY_SSE_TAKEOVER in ``relay/fanout/takeover.py``, RELAY_TOKEN by the CLI's ``wait``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from relay.config.settings import Config
from relay.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# An item of a YAML flow collection holding `${VAR}` (`[${TOKEN}]`, `{X-Token: ${T}}`,
# `[tok-${T}]`) is not valid YAML ("{" is a flow indicator). Only a document that does not
# parse as written is retried with such items quoted, so a valid one is never rewritten.
_FLOW_ENV_ITEM = re.compile(
    r"(?:(?<=[\[{])|(?<=, )|(?<=: ))"
    r"(\s*)([^\s,\[\]{}'\"#]*\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}\n]*)?\}[^\s,\[\]{}'\"#]*)(\s*)"
    r"(?=[\]},])"
)


def interpolate_env(
    tree: Any,
    environ: Mapping[str, str],
    path: str = "",
    *,
    literal: Collection[str] = (),
) -> tuple[Any, list[str]]:
    """Replace ``${NAME}`` and ``${NAME:-default}`` inside the string values of a parsed tree.

    It runs on what YAML has already parsed, so a substituted value is never YAML: whatever
    it holds (``#``, ``: ``, quotes, line breaks) stays one string where it was, and
    comments, keys and non-string scalars stay as written. Values at the key paths in
    ``literal`` (the command line's) are kept as given. Returns the new tree and one
    ``key.path: ...`` problem per variable that is not set (naming it, never a value).
    """
    problems: list[str] = []
    if path and path in literal:
        return tree, problems
    if isinstance(tree, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            problems.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(substitute, tree), problems
    if isinstance(tree, dict):
        result: dict[Any, Any] = {}
        for key, value in tree.items():
            result[key], sub = interpolate_env(value, environ, _join(path, key), literal=literal)
            problems.extend(sub)
        return result, problems
    if isinstance(tree, list):
        items = []
        for index, value in enumerate(tree):
            item, sub = interpolate_env(value, environ, _join(path, index), literal=literal)
            items.append(item)
            problems.extend(sub)
        return items, problems
    return tree, problems


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


# Values under these keys may be secrets: error messages never repeat them.
_SECRET_PATH = re.compile(r"^(database\.dsn|auth\.|webhooks\[\d+\]\.(url|secret|headers|token))")


def format_validation_error(error: ValidationError) -> list[str]:
    """One ``key.path: message`` line per problem."""
    lines = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            path = _join(path, part)
        kind = item["type"]
        secret = _SECRET_PATH.match(path) is not None
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "value_error":
            message = str(item["ctx"]["error"]) if "ctx" in item else item["msg"]
            if secret:
                message = message.split(", got ")[0]
        else:
            message = f"{item['msg'][0].lower()}{item['msg'][1:]}"
            if not secret:  # never echo what may be a password, token or secret URL
                message += f", got {item['input']!r}"
        lines.append(f"{path or '<root>'}: {message}")
    return lines


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    require_dsn: bool = False,
) -> Config:
    """Read, interpolate and validate; raise :class:`ConfigError` listing every problem.

    ``overrides`` are dotted keys (``{"http.listen": "0.0.0.0:80"}``) from the command line.
    """
    environ = os.environ if environ is None else environ
    tree: Any = {}
    if path is not None:
        tree = _read_yaml(Path(path))
    if not isinstance(tree, dict):
        raise ConfigError([f"<root>: expected a mapping of sections, got {type(tree).__name__}"])
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)  # before interpolation: a flag replaces ${VAR} too
    tree, problems = interpolate_env(tree, environ, literal=(overrides or {}).keys())
    database = tree.get("database")
    if isinstance(database, dict) and not database.get("dsn") and environ.get("RELAY_DSN"):
        database["dsn"] = environ["RELAY_DSN"]
    elif database is None and environ.get("RELAY_DSN"):
        tree["database"] = {"dsn": environ["RELAY_DSN"]}
    if not tree.get("state_directory") and environ.get("STATE_DIRECTORY"):
        # systemd's StateDirectory=; it may list several, colon-separated: use the first.
        tree["state_directory"] = environ["STATE_DIRECTORY"].split(":")[0]
    try:
        config = Config.model_validate(tree)
    except ValidationError as error:
        raise ConfigError([*problems, *format_validation_error(error)]) from None
    if problems:
        raise ConfigError(problems)
    if require_dsn and not config.database.dsn:
        raise ConfigError(["database.dsn: required (in the file, with --dsn, or as $RELAY_DSN)"])
    return config


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so a key like ``on:`` stays "on"."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_ConfigLoader) or {}
    except yaml.YAMLError:
        quoted = _FLOW_ENV_ITEM.sub(r'\1"\2"\3', text)
        if quoted == text:
            raise
    try:
        return yaml.load(quoted, Loader=_ConfigLoader) or {}
    except yaml.YAMLError:
        pass
    return yaml.load(text, Loader=_ConfigLoader) or {}  # raises: the error as written


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{path}: cannot read the file ({error.strerror})"]) from None
    try:
        return _load_yaml(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}: {problem}{where}"]) from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value
