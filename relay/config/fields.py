"""The value types the sections share: durations, sizes, a state's name, and the base of
every section (frozen, and an unknown key is an error)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ByteSize, ConfigDict, TypeAdapter

from relay.durations import parse_duration

# The spellings sizes accept (units are case-sensitive: KB and MB are 1000-based, KiB and MiB
# 1024-based); pydantic's ByteSize does the arithmetic. It alone would also take "64k" (64000),
# "8bit" (1), "0.5B" (0), "64mb" and true (1), none of which a buffer size should mean.
_SIZE = re.compile(r"^\s*\d+\s*(?:B|KiB|MiB|KB|MB)?\s*$", re.ASCII)
_SIZE_ADAPTER: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)


def parse_size(value: Any) -> int:
    """``"64KiB"``, ``"1MB"`` or a number of bytes, to bytes (by :class:`pydantic.ByteSize`)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and _SIZE.match(value):
        return int(_SIZE_ADAPTER.validate_python(value))
    raise ValueError(f'expected a size like "64KiB", got {value!r}')


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0s")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]
Size = Annotated[int, BeforeValidator(parse_size)]
StateName = Literal["stable", "processing", "unknown"]


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
