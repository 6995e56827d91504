"""What "busy" means, declared: activities, how each is read, and what hints at a change.

The system is *processing* while any activity is active. An activity is either

* a **table** form: rows of ``table`` whose ``state_column`` is one of ``active_states``
  (and, optionally, match ``filter``), or, for a table without a state column (graphile-worker),
  the rows that match ``filter`` alone (``active_states: []``), or
* an **expression** form: a SQL boolean expression, such as a function the data system
  already has (``(public.is_importing()->>'active')::boolean``).

Hints: statement triggers that ``db install`` creates (``hints.triggers``), or NOTIFY
channels the system already sends (``hints.channels``), or both. With channels only, no
trigger is installed and writers pay nothing extra; whatever reaches no channel is caught
by the reconcile (``stability.reconcile_interval``).

Signals (``relay/state/signals.py``; all optional). An activity's **rows** are its active rows
(table form), or, for the expression form, the rows its details list (``details.table`` where
``details.where``): an expression activity declares details to have rows.

* ``stalled``: a SQL boolean over one of the activity's rows (alias ``t``) saying that row
  makes no progress, e.g. procrastinate's ``doing`` jobs whose worker's heartbeat is older
  than 60 s. The condition's own threshold (the 60 s) is the config author's; the relay says
  "stalled since" from when it first saw a stalled row.
* ``age_column``: a timestamp column of the rows' table (``timestamptz``, or ``timestamp``
  holding UTC as Oban's ``inserted_at`` does): the activity's lag is the age of its oldest row.
* ``overdue_after``: how long a busy period may run before the activity is overdue. Unset:
  ``signals.overdue_factor`` times the 90th percentile of its history's periods, once the
  history has ``signals.overdue_min_periods`` of them (``relay/config/state.py``).

SQL snippets (``expression``, ``filter``, ``stalled``, ``details.fields``,
``details.order_by``) are the config author's, like a migration's: ``db install`` checks each
one against the database before it writes anything. Names are schema-qualified and plain
(lower-case identifiers).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from relay.config.fields import Section
from relay.durations import parse_duration

IDENTIFIER = r"[a-z_][a-z0-9_]{0,62}"
_QUALIFIED = re.compile(rf"^({IDENTIFIER})\.({IDENTIFIER})$")
DOLLAR_TAG = "$stability_relay$"  # generated functions' bodies are quoted with it

TriggerEvent = Literal["insert", "update", "delete", "truncate"]
ALL_EVENTS: tuple[TriggerEvent, ...] = ("insert", "update", "delete", "truncate")
ListName = Literal["import_jobs", "analytics_tasks"]


def _qualified(value: Any) -> Any:
    if isinstance(value, str) and not _QUALIFIED.match(value):
        raise ValueError(f'expected a qualified name like "public.import_job", got "{value}"')
    return value


QualifiedName = Annotated[str, BeforeValidator(_qualified)]
Identifier = Annotated[str, Field(pattern=rf"^{IDENTIFIER}$")]
# Generated names add up to 24 characters to an activity's name; PostgreSQL cuts names at 63.
ActivityName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,38}$")]


def _without_dollar_tag(value: str) -> str:
    """A value that goes inside a generated function's body must not end its quoting."""
    if DOLLAR_TAG in value:
        raise ValueError(f"must not contain {DOLLAR_TAG}")
    return value


def _plain_text(value: Any) -> Any:
    """A label or a state goes into generated SQL (as a literal) and into systemd's STATUS=."""
    if isinstance(value, str):
        if any(ord(c) < 32 or c == "\x7f" for c in value) or "\\" in value:
            raise ValueError("must not contain control characters or backslashes")
        return _without_dollar_tag(value)
    return value


PlainText = Annotated[str, BeforeValidator(_plain_text)]


def _snippet(value: Any) -> Any:
    """A SQL fragment goes inside a generated function: it must stay one expression."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        raise ValueError("must not be empty")
    if ";" in value:
        raise ValueError('must be one SQL expression, without ";"')
    return _without_dollar_tag(value)


Snippet = Annotated[str, BeforeValidator(_snippet)]


def _bound(value: Any) -> Any:
    """``overdue_after``: a duration like ``"30m"``, greater than zero."""
    if value is None:
        return None
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than 0s")
    return seconds


def split_name(qualified: str) -> tuple[str, str]:
    schema, _, name = qualified.partition(".")
    return schema, name


class Hints(Section):
    # Our statement triggers on the activity's tables, for these statements.
    triggers: tuple[TriggerEvent, ...] = ()
    # Channels the data system already notifies on when the activity may have changed.
    channels: tuple[Identifier, ...] = ()


class ActivityDetails(Section):
    """What the details API lists for an activity: rows of ``table`` matching ``where``."""

    # Default: the activity's own table and active rows (table form only).
    table: QualifiedName | None = None
    where: Snippet | None = None
    # Output name -> SQL expression over the row's columns (a bare name is a column).
    fields: dict[Identifier, Snippet] = Field(default_factory=dict, validate_default=True)
    order_by: Snippet | None = None
    # The seed's details keys: the items also appear in this list.
    list: ListName | None = None

    @field_validator("fields")
    @classmethod
    def _some_fields(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("list at least one field, like {id: id, state: state}")
        return value


class Activity(Section):
    name: ActivityName
    label: Annotated[PlainText, Field(min_length=1, max_length=80)]
    # The table form.
    table: QualifiedName | None = None
    state_column: Identifier = "state"
    active_states: tuple[Annotated[PlainText, Field(min_length=1, max_length=63)], ...] = ()
    filter: Snippet | None = None
    # The expression form.
    expression: Snippet | None = None
    # Further tables the activity reads (its filter's or its expression's): checked for
    # row-level security at install and start, and hinted by the triggers, if any.
    tables: tuple[QualifiedName, ...] = ()
    hints: Hints | None = None
    details: ActivityDetails | None = None
    # A SQL expression giving the system's own JSON for this activity (statbus's
    # is_importing()), served fresh by GET /api/system-status/indicators.
    indicator: Snippet | None = None
    # Signals (module docstring): a boolean over one of the activity's rows (alias t), a
    # timestamp column of its rows, a bound on its busy periods.
    stalled: Snippet | None = None
    age_column: Identifier | None = None
    overdue_after: Annotated[float | None, BeforeValidator(_bound)] = None

    @model_validator(mode="after")
    def _one_form(self) -> Activity:
        if (self.table is None) == (self.expression is None):
            raise ValueError("set exactly one of table (with active_states) or expression")
        if self.table is not None and not self.active_states and not self.filter:
            raise ValueError(
                "a table activity needs active_states (the states that count), or a filter "
                "alone (the condition an active row meets) when the table has no state column"
            )
        if self.expression is not None and (self.active_states or self.filter):
            raise ValueError("active_states and filter belong to the table form, not expression")
        if self.expression is not None and not self.tables:
            raise ValueError(
                "list the tables the expression reads under tables: they are checked for "
                "row-level security (and hinted, with hints.triggers)"
            )
        if self.details is not None and self.details.table is None and self.table is None:
            raise ValueError("details of an expression activity need their own details.table")
        if self.table is None and self.details is None and (self.stalled or self.age_column):
            raise ValueError(
                "stalled and age_column are over the activity's rows: an expression activity "
                "has rows only through its details (details.table and details.where)"
            )
        return self

    @property
    def read_tables(self) -> tuple[str, ...]:
        """Every table this activity (and its details) reads, the main one first."""
        own = (self.table,) if self.table else ()
        listed = (self.details.table,) if self.details and self.details.table else ()
        return tuple(dict.fromkeys([*own, *self.tables, *listed]))

    @property
    def hinted_tables(self) -> tuple[str, ...]:
        """The tables whose writes can change whether this activity is active."""
        own = (self.table,) if self.table else ()
        return tuple(dict.fromkeys([*own, *self.tables]))

    @property
    def hint_triggers(self) -> tuple[TriggerEvent, ...]:
        """Trigger events: as declared; by default all of them, unless channels hint."""
        if self.hints is None:
            return ALL_EVENTS
        return self.hints.triggers

    @property
    def hint_channels(self) -> tuple[str, ...]:
        return self.hints.channels if self.hints else ()


# -- enrich functions: what a feed sends instead of a notification's payload ----------------

ENRICH_PREFIX = "system_stability_enrich_"


class Join(Section):
    """A further table an enrich read joins to its row (LEFT JOIN: the row is kept without it)."""

    table: QualifiedName
    alias: Identifier
    # The join condition over ``t`` (the row) and ``alias``, like "d.id = t.definition_id".
    condition: Snippet


class EnrichRead(Section):
    """What ``db install`` generates as ``public.system_stability_enrich_<name>(payloads jsonb)``.

    For each payload (a JSON object), in order: when its ``verb`` is one of ``unread``,
    ``{verb, <wrap>: {<key>: the payload's <payload_key>}}`` without a read (a deleted row);
    otherwise the row of ``table`` (alias ``t``) whose ``key`` column equals the payload's
    ``payload_key``, as ``row`` builds it over ``t`` and the joins, as ``{verb, <wrap>: row}``;
    no such row: null (nothing is sent). One statement for the whole array.
    """

    name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,38}$")]
    table: QualifiedName
    key: Identifier = "id"
    payload_key: Identifier = "id"
    joins: tuple[Join, ...] = ()
    # A jsonb expression over t and the joins' aliases: what is sent of the row.
    row: Snippet = "pg_catalog.to_jsonb(t.*)"
    wrap: Identifier
    verb: Identifier = "verb"
    unread: tuple[Annotated[PlainText, Field(min_length=1, max_length=63)], ...] = ("DELETE",)

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([self.table, *(join.table for join in self.joins)]))

    @model_validator(mode="after")
    def _aliases(self) -> EnrichRead:
        aliases = [join.alias for join in self.joins]
        if "t" in aliases or len(set(aliases)) != len(aliases):
            raise ValueError('join aliases must be unique and not "t" (the row\'s own)')
        return self


def enrich_function(read: EnrichRead) -> str:
    return f"public.{ENRICH_PREFIX}{read.name}"
