"""What a feed sends, as data: JSON written as JavaScript writes it, reshaped payloads,
templates filled in per event or per client, and the client filter's values.

Pure functions over parsed JSON; nothing here touches a socket or the loop.

JSON as ``JSON.parse`` then ``JSON.stringify`` write it (the routes a feed replaces parsed
each payload and wrote it again): every number a double in JavaScript's spelling (``100.00``
is ``100``, ``12.50`` is ``12.5``, ``1e-7`` stays), integer-like keys first, no spaces,
non-ASCII text as is.
"""

from __future__ import annotations

import decimal
import json
import math
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
_INDEX_KEY = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_SURROGATE = re.compile("[\ud800-\udfff]")
# ECMAScript's WhiteSpace and LineTerminator (Python's strip() also takes U+001C-U+001F and
# U+0085, and leaves U+FEFF).
_JS_SPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)


class BadFilter(ValueError):
    """A client's filter values cannot be read: the request is answered 400."""


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _double(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"{literal[:20]} is not a finite number")
    return value


def parse(text: str | bytes) -> Any:
    """JSON read as JavaScript reads it: every number a double."""
    return json.loads(text, parse_float=_double, parse_int=_double, parse_constant=_not_json)


def encode(value: Any) -> str:
    """``JSON.stringify(value)``: compact; numbers in JavaScript's spelling (100.00 is 100,
    1e-7 is 1e-7, 12345678901234567890 is 12345678901234567000); an object's integer-like
    keys first, ascending, then the others in order; text as is, lone surrogates escaped."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int | float):
        number = float(value)
        out.append(js_number(number) if math.isfinite(number) else "null")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif isinstance(value, Mapping):
        out.append("{")
        for index, (key, item) in enumerate(_js_order(value)):
            if index:
                out.append(",")
            out.append(_string(str(key)))
            out.append(":")
            _write(item, out)
        out.append("}")
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")


def _string(text: str) -> str:
    encoded = json.dumps(text, ensure_ascii=False)
    if _SURROGATE.search(encoded):  # well-formed JSON.stringify escapes lone surrogates
        encoded = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded)
    return encoded


def _js_order(obj: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """JavaScript's own-key order: array-index keys ascending, then the rest as inserted."""
    items = list(obj.items())
    index = [(k, v) for k, v in items if _INDEX_KEY.fullmatch(k) and int(k) < 2**32 - 1]
    if not index:
        return items
    rest = [(k, v) for k, v in items if not (_INDEX_KEY.fullmatch(k) and int(k) < 2**32 - 1)]
    return sorted(index, key=lambda kv: int(kv[0])) + rest


def js_number(value: float) -> str:
    """``Number.prototype.toString`` of a finite double (ECMAScript Number::toString)."""
    if value == 0:
        return "0"  # -0 too
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, as ECMAScript asks for.
    _, digit_tuple, exponent = decimal.Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    assert isinstance(exponent, int)
    k = len(digits)
    n = k + exponent  # value = 0.digits x 10^n
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"


def js_trim(text: str) -> str:
    """``String.prototype.trim``: JavaScript's white space and line terminators only."""
    return text.strip(_JS_SPACE)


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
    if isinstance(value, int | float):
        return js_number(float(value)) if math.isfinite(value) else None
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
        items = [js_trim(item) for item in raw[0].split(",")] if raw else []
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
            numbers.append(float(number))
        if len(numbers) > rule.max_values:
            raise BadFilter(f"{rule.param}: at most {rule.max_values} values")
        return numbers, frozenset(js_number(n) for n in numbers)
    values = [v.strip() for text in raw for v in text.split(",")]
    if not values or any(not v or len(v) > 200 for v in values):
        raise BadFilter(f"{rule.param}: expected a comma-separated list of values")
    if len(values) > rule.max_values:
        raise BadFilter(f"{rule.param}: at most {rule.max_values} values")
    return values, frozenset(values)
