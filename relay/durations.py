"""Durations as the config writes them (``"15s"``, ``"2m"``, ``"500ms"``): plumbing shared by
the config's duration fields (``relay/config/fields.py``), a feed's coalescing window
(``relay/config/feeds.py``) and the activities' ``overdue_after``
(``relay/config/activities.py``)."""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """``"15s"``, ``"2m"``, ``"500ms"`` or a number of seconds, to seconds."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "15s", got {value!r}')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        shown = f'"{value}"' if isinstance(value, str) else repr(value)
        raise ValueError(f'expected a duration like "15s", got {shown}')
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds
