"""What a feed sends, as data: JSON written as JavaScript writes it, reshaped payloads,
templates filled in per event or per client, and the client filter's values.

Pure functions over parsed JSON; nothing here touches a socket or the loop.

JSON as ``JSON.stringify`` writes it (the routes a feed replaces parsed the payload and wrote
it again): no spaces; non-ASCII text as is; a number that is a whole number below 1e21 without
a fraction (``100.00`` is ``100``, ``12.50`` is ``12.5``). One difference is left: a number
below 1e-4 that is not whole (Python writes ``1e-05``, JavaScript ``0.00001``).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from typing import Any

from relay.config import ClientFilter, Reshape

# A stand-in for the connection's id while a per-client template is encoded: the bytes are
# then cut where it stands, and each client's id goes in between (one encoding for many).
_CONNECTION_MARK = "\x00connection\x00"
_CONNECTION_MARK_JSON = json.dumps(_CONNECTION_MARK)[1:-1]
_BASE36 = string.digits + string.ascii_lowercase
# JavaScript's parseInt(text) without a radix: optional sign, then "0x" and hex digits, or
# decimal digits; whatever follows is ignored ("12abc" is 12); no digit: NaN.
_PARSE_INT = re.compile(r"([+-]?)(?:0[xX]([0-9a-fA-F]+)|([0-9]+))", re.ASCII)


class BadFilter(ValueError):
    """A client's filter values cannot be read: the request is answered 400."""


def _number(literal: str) -> int | float:
    value = float(literal)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{literal[:20]} is not a finite number")
    if value.is_integer() and abs(value) < 1e21:
        return int(value)  # JSON.stringify(100.00) is "100"
    return value


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def parse(text: str | bytes) -> Any:
    """JSON read as JavaScript reads it: every number a double, whole ones written whole."""
    return json.loads(text, parse_float=_number, parse_constant=_not_json)


def encode(value: Any) -> str:
    """Compact JSON, non-ASCII text as is (as JSON.stringify writes it)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud800"): only its escape is UTF-8
        return json.dumps(value, separators=(",", ":"))
    return text


def lookup(value: Any, path: Sequence[str]) -> Any:
    """``value[path[0]][path[1]]...``; None where a step is missing or not an object."""
    for step in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(step)
    return value


def key_text(value: Any) -> str | None:
    """How a payload's value is compared with a client's filter values."""
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def fill(value: Any, variables: Mapping[str, Any]) -> Any:
    """A template with its ``$variables`` filled in (``$$x`` is the literal ``$x``)."""
    if isinstance(value, dict):
        return {key: fill(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, variables) for item in value]
    if isinstance(value, str) and value.startswith("$"):
        return value[1:] if value.startswith("$$") else variables[value]
    return value


def uses(template: Any, names: Sequence[str]) -> bool:
    """Whether ``template`` holds one of the variables ``names``."""
    if isinstance(template, dict):
        return any(uses(item, names) for item in template.values())
    if isinstance(template, list):
        return any(uses(item, names) for item in template)
    return isinstance(template, str) and template in names


def pieces(template: Any, variables: Mapping[str, Any]) -> list[bytes]:
    """The template encoded once, cut where the connection's id goes: join the pieces with
    a client's id to get its bytes (ids are base36: nothing in them needs escaping)."""
    text = encode(fill(template, {**variables, "$connection_id": _CONNECTION_MARK}))
    return [part.encode() for part in text.split(_CONNECTION_MARK_JSON)]


def connection_id() -> str:
    """Eight base36 characters, as the routes a feed replaces named their connections."""
    return "".join(secrets.choice(_BASE36) for _ in range(8))


def reshape(payload: Mapping[str, Any], rule: Reshape, variables: Mapping[str, Any]) -> Any:
    """The object sent for ``payload`` (``config.Reshape``); ``variables`` fill ``add``."""
    if rule.keep is not None:
        order: Sequence[str] = rule.keep
    else:
        sources = {source: name for name, source in rule.rename.items()}
        order = list(dict.fromkeys([*rule.add, *(sources.get(k, k) for k in payload)]))
    shaped: dict[str, Any] = {}
    for name in order:
        if name in rule.add:
            shaped[name] = fill(rule.add[name], variables)
            continue
        source = rule.rename.get(name, name)
        value = payload.get(source)
        if value is not None:
            shaped[name] = value
        elif name in rule.defaults:
            shaped[name] = rule.defaults[name]
        elif source in payload:
            shaped[name] = None  # present and null: JSON.stringify keeps it; absent: it is not
    return shaped


def parse_values(raw: Sequence[str], rule: ClientFilter) -> tuple[list[Any], frozenset[str]]:
    """A client's filter values (``?ids=...``): as listed (for ``$ids``) and as compared.

    Raises :class:`BadFilter` with the reason for a list that cannot be read."""
    if rule.values == "positive_integers":
        # As URLSearchParams.get(): the first occurrence only.
        items = [item.strip() for item in raw[0].split(",")] if raw else []
        numbers: list[Any] = []
        for item in items:
            if item in ("", "0"):
                continue
            match = _PARSE_INT.match(item)
            if match is None:
                raise BadFilter(f"{rule.param}: {item[:20]!r} is not a number")
            sign, hexadecimal, decimal = match.groups()
            number = int(hexadecimal, 16) if hexadecimal else int(decimal)
            number = -number if sign == "-" else number
            if number <= 0:
                raise BadFilter(f"{rule.param}: {item[:20]!r} is not above 0")
            numbers.append(number)
        if len(numbers) > rule.max_values:
            raise BadFilter(f"{rule.param}: at most {rule.max_values} values")
        return numbers, frozenset(str(n) for n in numbers)
    values = [v.strip() for text in raw for v in text.split(",")]
    if not values or any(not v or len(v) > 200 for v in values):
        raise BadFilter(f"{rule.param}: expected a comma-separated list of values")
    if len(values) > rule.max_values:
        raise BadFilter(f"{rule.param}: at most {rule.max_values} values")
    return values, frozenset(values)
