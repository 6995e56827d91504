"""Drives tests/fixtures/statbus.sql (the shape of statbus's database) through real states.

Every function runs its statements on the connection it is given and commits nothing itself:
on an autocommit connection each call takes effect, and notifies, at once. The writes go
where statbus's own code writes (import_job's columns, statbus's enqueue and spawn functions,
worker.tasks' columns), so the fixture's triggers fire as statbus's would, and they respect
its checks: a failed task or import job always gets an error, no other task state has one.

The three activities of the relay's "statbus" profile are statbus's three status functions:
``statbus_indicators`` reads their ``active``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "statbus.sql"

AsyncConn = psycopg.AsyncConnection[Any]

IMPORT_JOB_STATES = (
    "waiting_for_upload",
    "upload_completed",
    "preparing_data",
    "analysing_data",
    "waiting_for_review",
    "approved",
    "rejected",
    "processing_data",
    "failed",
    "finished",
)
IMPORT_MODES = ("legal_unit", "establishment_formal", "establishment_informal", "generic_unit")
TASK_STATES = ("pending", "processing", "interrupted", "waiting", "completed", "failed")
CHILD_MODES = ("concurrent", "serial")

# Activity name in the relay's statbus profile -> statbus's status function.
INDICATOR_FUNCTIONS = {
    "importing": "public.is_importing",
    "deriving_statistical_units": "public.is_deriving_statistical_units",
    "deriving_reports": "public.is_deriving_reports",
}

# Every channel the fixture notifies on.
CHANNELS = (
    "import_job",
    "import_job_progress",
    "worker_tasks",
    "worker_task_changed",
    "worker_status",
    "worker_queue_change",
)

_DEFAULT_ERROR = "fixture: failed"

# The fixture's stand-in for statbus's built-in definitions: a job's definition unless the
# caller names one (``definition_id=``, None for none).
DEFAULT_DEFINITION = "fixture_legal_unit"

# What statbus's /api/sse/import-jobs listener reads for an import_job notification: the row
# as to_jsonb() gives it, plus four fields of its definition (LEFT JOIN: nulls without one).
# Read as text, so the caller sees jsonb's own key order and number spelling.
ENRICHED_IMPORT_JOB = """
SELECT (to_jsonb(ij.*) || jsonb_build_object('import_definition', jsonb_build_object(
            'slug', d.slug, 'name', d.name, 'mode', d.mode, 'custom', d.custom)))::text
FROM public.import_job AS ij
LEFT JOIN public.import_definition AS d ON ij.definition_id = d.id
WHERE ij.id = %s
"""


async def apply_statbus_fixture(conn_or_dsn: AsyncConn | str) -> None:
    """Apply the fixture, in one transaction, to a fresh database, as a superuser.

    Given a connection that is not in autocommit mode, the caller commits.
    """
    script = FIXTURE.read_bytes()
    if isinstance(conn_or_dsn, str):
        async with await psycopg.AsyncConnection.connect(conn_or_dsn, autocommit=True) as conn:
            async with conn.transaction():
                await conn.execute(script)
        return
    async with conn_or_dsn.transaction():
        await conn_or_dsn.execute(script)


# --- import jobs -----------------------------------------------------------------------------


def _with_error(state: str, cols: dict[str, Any]) -> dict[str, Any]:
    if state not in IMPORT_JOB_STATES:
        raise ValueError(f"not an import_job_state: {state!r}")
    if state == "failed" and cols.get("error") is None:
        cols = {**cols, "error": _DEFAULT_ERROR}
    return cols


async def add_import_definition(
    conn: AsyncConn,
    slug: str,
    *,
    name: str | None = None,
    mode: str = "legal_unit",
    custom: bool = True,
    **cols: Any,
) -> int:
    """INSERT an import definition (notifies nothing); its id. ``name`` defaults to the slug."""
    if mode not in IMPORT_MODES:
        raise ValueError(f"not an import_mode: {mode!r}")
    values = {"slug": slug, "name": name or slug, "mode": mode, "custom": custom, **cols}
    query = sql.SQL("INSERT INTO public.import_definition ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    cur = await conn.execute(query, list(values.values()))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def update_import_definition(conn: AsyncConn, definition_id: int, **cols: Any) -> None:
    """UPDATE a definition's columns (notifies nothing: statbus's import_job channel is the
    job's own)."""
    query = sql.SQL("UPDATE public.import_definition SET {} WHERE id = {}").format(
        sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder()) for name in cols
        ),
        sql.Placeholder(),
    )
    cur = await conn.execute(query, [*cols.values(), definition_id])
    if cur.rowcount != 1:
        raise LookupError(f"no import definition {definition_id}")


async def add_import_job(
    conn: AsyncConn, slug: str, state: str = "waiting_for_upload", **cols: Any
) -> int:
    """INSERT an import job directly in ``state`` (statbus's jobs start in waiting_for_upload:
    a later state skips the state-change triggers). Notifies import_job INSERT.

    Its definition is the fixture's built-in one unless ``definition_id`` is given (None: no
    definition, which statbus never has)."""
    values: dict[str, Any] = {"slug": slug, "state": state, **_with_error(state, cols)}
    columns = [sql.Identifier(name) for name in values]
    params: list[sql.Composable] = [sql.Placeholder()] * len(values)
    if "definition_id" not in values:
        columns.append(sql.Identifier("definition_id"))
        params.append(
            sql.SQL("(SELECT id FROM public.import_definition WHERE slug = {})").format(
                sql.Literal(DEFAULT_DEFINITION)
            )
        )
    query = sql.SQL("INSERT INTO public.import_job ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(columns), sql.SQL(", ").join(params)
    )
    cur = await conn.execute(query, list(values.values()))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def enriched_import_job(conn: AsyncConn, job_id: int) -> str | None:
    """The job as statbus's import-jobs listener reads it (``ENRICHED_IMPORT_JOB``), as jsonb
    text; None when there is no such row (the listener then sends nothing)."""
    cur = await conn.execute(ENRICHED_IMPORT_JOB, (job_id,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def report_progress(conn: AsyncConn, job_id: int, **counters: Any) -> None:
    """A worker's progress step: UPDATE the counters (imported_rows,
    completed_analysis_steps_weighted, error_count, warning_count, total_rows, …); the BEFORE
    trigger computes the percentages, the AFTER trigger notifies import_job_progress when one
    of its columns is in the statement (and import_job, as every UPDATE does)."""
    await update_import_job(conn, job_id, **counters)


async def update_import_job(conn: AsyncConn, job_id: int, **cols: Any) -> None:
    """UPDATE columns of a job (not its state: see ``set_import_state``)."""
    if not cols:
        raise ValueError("nothing to update")
    if "state" in cols:
        raise ValueError("use set_import_state for the state")
    await _update_job(conn, job_id, cols)


async def set_import_state(conn: AsyncConn, job_id: int, state: str, **cols: Any) -> None:
    """UPDATE a job's state (and ``cols`` in the same statement), as statbus's worker and UI do.

    The triggers run as in statbus: waiting_for_upload -> upload_completed and
    waiting_for_review -> approved enqueue an ``import_job`` task (worker_tasks 'import');
    import_job and import_job_progress are notified. Progress percentages are computed from
    the counters: pass ``total_analysis_steps_weighted`` and
    ``completed_analysis_steps_weighted`` (or ``total_rows`` and ``imported_rows``), not the
    percentages.
    """
    await _update_job(conn, job_id, {"state": state, **_with_error(state, cols)})


async def delete_import_job(conn: AsyncConn, job_id: int) -> None:
    await conn.execute("DELETE FROM public.import_job WHERE id = %s", (job_id,))


async def _update_job(conn: AsyncConn, job_id: int, cols: dict[str, Any]) -> None:
    query = sql.SQL("UPDATE public.import_job SET {} WHERE id = {}").format(
        sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder()) for name in cols
        ),
        sql.Placeholder(),
    )
    cur = await conn.execute(query, [*cols.values(), job_id])
    if cur.rowcount != 1:
        raise LookupError(f"import job {job_id} not updated (missing, or hidden by RLS)")


async def notify_import_job(conn: AsyncConn, verb: str, job_id: int) -> None:
    """pg_notify on import_job with the payload statbus's row trigger sends (same SQL
    expression, so the same text), without a write: for a verb about a row that is not
    there, or is not what the verb says."""
    if verb not in ("INSERT", "UPDATE", "DELETE"):
        raise ValueError(f"not a trigger verb: {verb!r}")
    await conn.execute(
        "SELECT pg_notify('import_job', json_build_object('verb', %s::text, 'id', %s::integer)"
        "::text)",
        (verb, job_id),
    )


async def notify_raw(conn: AsyncConn, channel: str, payload: str) -> None:
    """pg_notify with a payload given as text, byte for byte."""
    await conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


async def add_user(conn: AsyncConn, email: str) -> int:
    """A row in auth."user": auth.uid() is its id while current_user is ``email``."""
    cur = await conn.execute('INSERT INTO auth."user" (email) VALUES (%s) RETURNING id', (email,))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


# --- worker tasks ----------------------------------------------------------------------------


async def enqueue_collect_changes(conn: AsyncConn, name: str = "fixture unit") -> int:
    """Change a base table the way statbus's users do: its statement trigger enqueues a
    pending ``collect_changes`` (one at most) and notifies worker_tasks 'analytics'.
    Returns the pending collect_changes' id."""
    await conn.execute("INSERT INTO public.legal_unit (name) VALUES (%s)", (name,))
    cur = await conn.execute(
        "SELECT id FROM worker.tasks WHERE command = 'collect_changes' AND state = 'pending'"
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def spawn(
    conn: AsyncConn,
    command: str,
    payload: Mapping[str, Any] | None = None,
    parent_id: int | None = None,
    priority: int | None = None,
    child_mode: str | None = None,
) -> int | None:
    """worker.spawn(): a task (a child of ``parent_id``), notifies worker_tasks with its queue.
    None when a dedup index made it a no-op."""
    cur = await conn.execute(
        "SELECT worker.spawn(%s, %s::jsonb, %s, %s, %s::worker.child_mode)",
        (command, json.dumps(dict(payload or {})), parent_id, priority, child_mode),
    )
    row = await cur.fetchone()
    assert row is not None
    return None if row[0] is None else int(row[0])


async def start_pipeline(conn: AsyncConn, *, phases: bool = False) -> dict[str, int]:
    """Enqueue a pipeline root (``collect_changes``, pending) through a base-table change.

    With ``phases``, do what the worker and collect_changes' handler do next: the root goes
    processing, spawns its two serial phase children (pending), and waits for them. Returns
    the ids by command: collect_changes, and derive_units_phase and derive_reports_phase.
    """
    root = await enqueue_collect_changes(conn)
    ids = {"collect_changes": root}
    if not phases:
        return ids
    await set_task_state(conn, root, "processing")
    payload = {"valid_from": "2020-01-01", "valid_until": "infinity"}
    for command in ("derive_units_phase", "derive_reports_phase"):
        child = await spawn(conn, command, payload, parent_id=root, child_mode="serial")
        assert child is not None
        ids[command] = child
    await set_task_state(conn, root, "waiting")
    return ids


async def add_task(conn: AsyncConn, command: str, parent_id: int | None = None) -> int:
    """A pending task through worker.spawn() (a child of ``parent_id``): notifies worker_tasks
    with its queue, not worker_task_changed (that is for state changes)."""
    task = await spawn(conn, command, parent_id=parent_id)
    if task is None:
        raise LookupError(f"spawn of {command} was a no-op (a pending one exists)")
    return task


async def add_task_family(
    conn: AsyncConn, children: int, parent_command: str = "derive_statistical_history"
) -> tuple[int, list[int]]:
    """A parent task (``parent_command``, no parent of its own) with ``children`` pending
    children (its child command), as statbus's fan-out steps spawn them."""
    child_command = {
        "derive_statistical_history": "derive_statistical_history_period",
        "derive_statistical_unit_facet": "derive_statistical_unit_facet_partition",
        "derive_statistical_history_facet": "derive_statistical_history_facet_period",
    }[parent_command]
    parent = await add_task(conn, parent_command)
    kids = [await add_task(conn, child_command, parent_id=parent) for _ in range(children)]
    return parent, kids


async def set_task_state(
    conn: AsyncConn, task_id: int, state: str, *, error: str | None = None
) -> None:
    """UPDATE a task's state as the worker does, with its timestamps; a failed task gets
    ``error`` (a default when None), any other state none. Notifies worker_task_changed when
    the state changes."""
    if state not in TASK_STATES:
        raise ValueError(f"not a task_state: {state!r}")
    if error is not None and state != "failed":
        raise ValueError("only a failed task has an error")
    cur = await conn.execute(
        """
        UPDATE worker.tasks SET
            state = %(state)s::worker.task_state,
            error = CASE WHEN %(state)s = 'failed' THEN %(error)s END,
            process_start_at = CASE WHEN %(state)s = 'processing'
                                    THEN COALESCE(process_start_at, clock_timestamp())
                                    ELSE process_start_at END,
            worker_pid = CASE WHEN %(state)s = 'processing' THEN pg_backend_pid()
                              ELSE worker_pid END,
            process_stop_at = CASE WHEN %(state)s IN ('waiting', 'completed', 'failed')
                                   THEN COALESCE(process_stop_at, clock_timestamp())
                                   ELSE process_stop_at END,
            completed_at = CASE WHEN %(state)s IN ('completed', 'failed')
                                THEN clock_timestamp() END
        WHERE id = %(id)s
        """,
        {"state": state, "error": error or _DEFAULT_ERROR, "id": task_id},
    )
    if cur.rowcount != 1:
        raise LookupError(f"no task {task_id}")


async def insert_task_raw(
    conn: AsyncConn,
    command: str,
    state: str = "pending",
    *,
    parent_id: int | None = None,
    payload: Mapping[str, Any] | None = None,
) -> int:
    """A plain INSERT into worker.tasks, bypassing statbus's enqueue and spawn functions: in
    statbus this notifies nothing."""
    if state not in TASK_STATES:
        raise ValueError(f"not a task_state: {state!r}")
    body = {**(payload or {}), "command": command}
    cur = await conn.execute(
        """
        INSERT INTO worker.tasks (command, state, error, payload, parent_id, depth)
        VALUES (%s, %s::worker.task_state, %s, %s::jsonb, %s,
                COALESCE((SELECT depth + 1 FROM worker.tasks WHERE id = %s), 0))
        RETURNING id
        """,
        (
            command,
            state,
            _DEFAULT_ERROR if state == "failed" else None,
            json.dumps(body),
            parent_id,
            parent_id,
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def delete_task(conn: AsyncConn, task_id: int) -> None:
    """DELETE a task and its descendants (as statbus's cleanup does): notifies nothing."""
    await conn.execute(
        """
        WITH RECURSIVE tree AS (
            SELECT id FROM worker.tasks WHERE id = %s
            UNION ALL
            SELECT t.id FROM worker.tasks AS t JOIN tree ON t.parent_id = tree.id
        )
        DELETE FROM worker.tasks WHERE id IN (SELECT id FROM tree)
        """,
        (task_id,),
    )


# --- the truth -------------------------------------------------------------------------------


async def statbus_truth(conn: AsyncConn) -> dict[str, dict[str, Any]]:
    """The three status functions' whole answers, by activity name, read with the
    connection's current role (the table owner, on the connection that applied the fixture:
    RLS does not filter it)."""
    cur = await conn.execute(
        "SELECT public.is_importing(), public.is_deriving_statistical_units(),"
        " public.is_deriving_reports()"
    )
    row = await cur.fetchone()
    assert row is not None
    return dict(zip(INDICATOR_FUNCTIONS, row, strict=True))


async def statbus_indicators(conn: AsyncConn) -> dict[str, bool]:
    """{"importing", "deriving_statistical_units", "deriving_reports"}: each function's active."""
    truth = await statbus_truth(conn)
    return {name: bool(answer["active"]) for name, answer in truth.items()}


def dig(value: Any, path: str) -> Any:
    """``dig(truth, "importing.jobs.0.state")``: dotted keys, list indexes as numbers."""
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


# --- the named situations --------------------------------------------------------------------


@dataclass(frozen=True)
class Situation:
    """A state of statbus reached through its real steps, with what its functions say then."""

    name: str
    setup: Callable[[AsyncConn], Awaitable[None]]
    expected: dict[str, bool]
    # dotted paths into statbus_truth() (see ``dig``) and their expected values
    details: dict[str, Any] = field(default_factory=dict)


def indicators(
    importing: bool = False, units: bool = False, reports: bool = False
) -> dict[str, bool]:
    """An expected ``statbus_indicators`` answer."""
    return {
        "importing": importing,
        "deriving_statistical_units": units,
        "deriving_reports": reports,
    }


async def _idle(conn: AsyncConn) -> None:
    return None


async def _lone_task_interrupted(conn: AsyncConn) -> None:
    # The worker died while collecting; on restart statbus marks the task interrupted.
    ids = await start_pipeline(conn)
    await set_task_state(conn, ids["collect_changes"], "processing")
    await set_task_state(conn, ids["collect_changes"], "interrupted")


async def _job_through(conn: AsyncConn, slug: str, *states: str) -> int:
    job = await add_import_job(conn, slug)
    for state in states:
        await set_import_state(conn, job, state)
    return job


async def _upload_completed(conn: AsyncConn) -> None:
    await _job_through(conn, "uploaded", "upload_completed")


async def _waiting_for_review(conn: AsyncConn) -> None:
    await _job_through(
        conn,
        "review",
        "upload_completed",
        "preparing_data",
        "analysing_data",
        "waiting_for_review",
    )


async def _approved(conn: AsyncConn) -> None:
    await _job_through(
        conn,
        "approved",
        "upload_completed",
        "preparing_data",
        "analysing_data",
        "waiting_for_review",
        "approved",
    )


async def _analysing_40(conn: AsyncConn) -> None:
    job = await add_import_job(conn, "analysing")
    # statbus sets total_analysis_steps_weighted = total_rows * max_analysis_priority here
    await set_import_state(
        conn, job, "upload_completed", total_rows=1000, total_analysis_steps_weighted=5000
    )
    await set_import_state(conn, job, "preparing_data")
    await set_import_state(conn, job, "analysing_data")
    await update_import_job(conn, job, completed_analysis_steps_weighted=2000)


async def _units_phase_running(conn: AsyncConn) -> None:
    ids = await start_pipeline(conn, phases=True)
    await set_task_state(conn, ids["derive_units_phase"], "processing")


async def _between_phases(conn: AsyncConn) -> None:
    ids = await start_pipeline(conn, phases=True)
    await set_task_state(conn, ids["derive_units_phase"], "processing")
    await set_task_state(conn, ids["derive_units_phase"], "completed")


async def _reports_phase_running(conn: AsyncConn) -> None:
    await _between_phases(conn)
    cur = await conn.execute("SELECT id FROM worker.tasks WHERE command = 'derive_reports_phase'")
    row = await cur.fetchone()
    assert row is not None
    await set_task_state(conn, row[0], "processing")


async def _pipeline_done(conn: AsyncConn) -> None:
    ids = await start_pipeline(conn, phases=True)
    for command in ("derive_units_phase", "derive_reports_phase", "collect_changes"):
        await set_task_state(conn, ids[command], "processing")
        await set_task_state(conn, ids[command], "completed")


STATES: list[Situation] = [
    Situation("idle", _idle, indicators()),
    Situation(
        "analytics_task_interrupted",
        _lone_task_interrupted,
        indicators(units=True),
        {"deriving_statistical_units.step": "collect_changes"},
    ),
    Situation(
        "import_waiting_for_review",
        _waiting_for_review,
        indicators(importing=True),
        {"importing.needs_review": True, "importing.jobs.0.state": "waiting_for_review"},
    ),
    Situation(
        "import_upload_completed",
        _upload_completed,
        indicators(),
        {"importing.needs_review": False, "importing.jobs": []},
    ),
    Situation("import_approved", _approved, indicators(), {"importing.jobs": []}),
    Situation(
        "import_analysing_40pct",
        _analysing_40,
        indicators(importing=True),
        {
            "importing.needs_review": False,
            "importing.jobs.0.state": "analysing_data",
            "importing.jobs.0.analysis_completed_pct": 40,
            "importing.jobs.0.total_rows": 1000,
        },
    ),
    Situation(
        "units_phase_running",
        _units_phase_running,
        indicators(units=True),
        {"deriving_reports.pending": True},
    ),
    Situation("between_phases", _between_phases, indicators(reports=True)),
    Situation("reports_phase_running", _reports_phase_running, indicators(reports=True)),
    Situation("pipeline_done", _pipeline_done, indicators()),
]
