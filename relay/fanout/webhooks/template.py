"""The template kind: a JSON body from the config, its ``{{field}}`` placeholders filled.

The template was parsed as JSON (or YAML) when the config was loaded (relay/config/settings.py
checks the field names), so filling works on the parsed tree, never on text: a string that is
exactly one placeholder becomes the field's JSON value (a list, a number, null), and a
placeholder inside a longer string is replaced by the field's text. Whatever a value holds
(quotes, backslashes, newlines, braces, another "{{...}}"), it lands inside one JSON value
and is escaped by the encoder; it is never read as template again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


def fill(tree: Any, fields: Mapping[str, Any]) -> Any:
    """A copy of ``tree`` with every placeholder replaced from ``fields``."""
    if isinstance(tree, str):
        whole = _PLACEHOLDER.fullmatch(tree)
        if whole is not None:
            return fields.get(whole.group(1))
        # One pass over the template's own text: a substituted value is not scanned again.
        return _PLACEHOLDER.sub(lambda match: _text(fields.get(match.group(1))), tree)
    if isinstance(tree, dict):
        return {key: fill(value, fields) for key, value in tree.items()}
    if isinstance(tree, list):
        return [fill(value, fields) for value in tree]
    return tree


def _text(value: Any) -> str:
    """A field inside a longer string: lists joined with ", ", null as nothing."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_text(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)
