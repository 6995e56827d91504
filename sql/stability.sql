-- stability-relay: the database side. Idempotent: apply it again after every upgrade.
-- Needs the data system's tables: public.import_job, worker.tasks, worker.command_registry.
--
-- Why the triggers send hints, not answers
-- ----------------------------------------
-- The original design called is_system_stable() inside a statement trigger and sent
-- {"stable": ...}. That value is computed inside the writing transaction, before it commits
-- and without seeing other transactions' uncommitted work, so two concurrent writers can each
-- announce a state that is false once both have committed. Here a trigger only says "a row
-- that counts towards stability has changed" (a hint with a constant payload). NOTIFY is
-- delivered after commit, so by the time the relay receives a hint the change is visible, and
-- the relay answers every hint by calling is_system_stable() in a fresh snapshot. The relay is
-- therefore exact: after the last change commits, its answer is the committed truth. Spurious
-- hints are harmless (one extra cheap query); a missed hint is not, so every change that can
-- alter is_system_stable() sends one:
--   import_job:        a row becomes active or inactive (insert, update, delete), TRUNCATE;
--   worker.tasks:      a task starts or stops counting (an active task of an analytics
--                      command), an active analytics task changes command, TRUNCATE;
--   command_registry:  any change (a command moving queue changes which tasks count).
-- A registry change recompiles the task triggers under a lock, so no task write straddles
-- it (see worker.system_stability_compile_commands() below).
-- The UPDATE triggers are not `UPDATE OF state`: a column-specific trigger does not fire when a
-- BEFORE trigger changes the column, and the WHEN clause costs next to nothing.
--
-- Why this is cheap
-- -----------------
-- * A row notifies only when its activeness changes. The WHEN clauses are evaluated by the
--   executor (the IMMUTABLE SQL helpers below are inlined), so an UPDATE that does not change
--   activeness, like pending -> processing, queues no trigger event and calls no function.
-- * Tasks outside the analytics queue never notify, and never call a function either: the
--   task triggers' WHEN clauses are literals (the analytics commands, the active states),
--   recompiled from the registry by the registry's own trigger. Before, every activeness
--   change of any task called a plpgsql function that looked the command up in the registry,
--   and helper calls in WHEN clauses are prepared afresh per statement: together a good part
--   of the cost under worker churn (bench/, docs/benchmarks.md).
-- * The payload is constant per table, and PostgreSQL delivers identical notifications of one
--   transaction once: a bulk statement touching many rows sends one notification.
-- * A transaction that sent no notification skips the global NOTIFY lock at commit; the
--   original design took it on every write and cut worker throughput to a third.
-- * No trigger calls is_system_stable(): the write path never scans the tables.
--
-- Caveat for the data system's migrations: the WHEN clauses depend on the state and command
-- columns, so `ALTER TABLE ... ALTER COLUMN state TYPE ...` needs these triggers dropped first
-- (adding an enum value with ALTER TYPE ... ADD VALUE does not).

DO $$
DECLARE
    missing text := (
        SELECT string_agg(name, ', ')
        FROM unnest(ARRAY['public.import_job', 'worker.tasks', 'worker.command_registry']) AS name
        WHERE pg_catalog.to_regclass(name) IS NULL
    );
BEGIN
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'the data system''s tables are missing: %', missing
            USING ERRCODE = 'undefined_table';
    END IF;
END;
$$;

-- Activeness: the single source of truth. SQL-standard bodies are parsed once, here, so they do
-- not depend on the caller's search_path, and stay inlinable (no SET clause, IMMUTABLE).

CREATE OR REPLACE FUNCTION public.import_job_state_is_active(state text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(
    state NOT IN ('finished', 'rejected', 'waiting_for_review', 'waiting_for_upload', 'failed'),
    false
);

CREATE OR REPLACE FUNCTION worker.task_state_is_active(state text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(state IN ('pending', 'processing', 'waiting'), false);

-- What the relay calls. SECURITY DEFINER so its role needs no table privileges; the pinned
-- search_path stops a caller from planting objects that the owner's code would resolve.

CREATE OR REPLACE FUNCTION public.is_system_stable()
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT NOT EXISTS (
        SELECT FROM public.import_job AS j
        WHERE public.import_job_state_is_active(j.state::text)
    ) AND NOT EXISTS (
        SELECT FROM worker.tasks AS t
        JOIN worker.command_registry AS cr ON cr.command = t.command
        WHERE cr.queue = 'analytics' AND worker.task_state_is_active(t.state::text)
    );
$$;

CREATE OR REPLACE FUNCTION public.get_analytics_tasks_in_progress()
RETURNS SETOF json
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT json_build_object(
        'id', t.id,
        'command', t.command,
        'state', t.state,
        'created_at', t.created_at,
        'duration_ms', t.duration_ms
    )
    FROM worker.tasks AS t
    JOIN worker.command_registry AS cr ON cr.command = t.command
    WHERE cr.queue = 'analytics' AND worker.task_state_is_active(t.state::text)
    ORDER BY t.priority NULLS LAST, t.id;
$$;

CREATE OR REPLACE FUNCTION public.get_import_jobs_in_progress()
RETURNS SETOF json
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT json_build_object(
        'id', j.id,
        'slug', j.slug,
        'description', j.description,
        'state', j.state,
        'total_rows', j.total_rows,
        'imported_rows', j.imported_rows,
        -- import_completed_pct defaults to 0 before the system fills it in: fall back to rows.
        'progress_pct', coalesce(
            nullif(j.import_completed_pct, 0),
            round(100.0 * j.imported_rows / nullif(j.total_rows, 0), 2),
            j.import_completed_pct
        ),
        'priority', j.priority,
        'created_at', j.created_at,
        'updated_at', j.updated_at
    )
    FROM public.import_job AS j
    WHERE public.import_job_state_is_active(j.state::text)
    ORDER BY j.priority NULLS LAST, j.id;
$$;

-- Trigger functions: search_path pinned. The payload comes from the trigger's argument, so it
-- is a constant. PostgreSQL refuses to call a trigger function other than as a trigger.

CREATE OR REPLACE FUNCTION public.system_stability_hint()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('system_stability', TG_ARGV[0]);
    RETURN NULL;
END;
$$;

-- Which tasks count: an active task whose command is in the analytics queue. The task
-- triggers' WHEN clauses spell this out as literals (the analytics commands, the active
-- states), compiled by this function at install and whenever the registry changes: a WHEN
-- clause is prepared afresh for every statement, and calling (even inlining) SQL helpers
-- there cost the worker a fifth of its throughput; literals cost next to nothing. The active
-- states must agree with worker.task_state_is_active() (tests/test_sql.py checks it).
-- Replacing the triggers takes a SHARE ROW EXCLUSIVE lock on worker.tasks until the registry
-- change commits, so no task write straddles it: each is judged by the registry before the
-- change (and committed before it, so the registry's own hint covers it) or after it. Two
-- registry changes compile one after the other for the same reason. Caveats: a registry
-- change waits for task writes in flight and holds new ones until it commits (keep such
-- transactions short); one that deletes a command while tasks of that command are being
-- written can deadlock with them (PostgreSQL aborts one); and a REPEATABLE READ transaction
-- compiles the registry as its snapshot shows it (change the registry in READ COMMITTED).
CREATE OR REPLACE FUNCTION worker.system_stability_compile_commands()
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    commands text;
    counts_old text;
    counts_new text;
BEGIN
    SELECT pg_catalog.quote_literal(coalesce(array_agg(cr.command ORDER BY cr.command), '{}'))
    INTO commands
    FROM worker.command_registry AS cr
    WHERE cr.queue = 'analytics';
    -- One row's "counts", for OLD or NEW: the same text for both but for the row's name.
    counts_old := format(
        'coalesce(OLD.command = ANY (%s::text[]) '
        'AND OLD.state::text IN (''pending'', ''processing'', ''waiting''), false)',
        commands
    );
    counts_new := format(
        'coalesce(NEW.command = ANY (%s::text[]) '
        'AND NEW.state::text IN (''pending'', ''processing'', ''waiting''), false)',
        commands
    );
    EXECUTE format(
        'CREATE OR REPLACE TRIGGER system_stability_hint_insert AFTER INSERT ON worker.tasks '
        'FOR EACH ROW WHEN (%s) EXECUTE FUNCTION worker.system_stability_task_hint()',
        counts_new
    );
    EXECUTE format(
        'CREATE OR REPLACE TRIGGER system_stability_hint_update AFTER UPDATE ON worker.tasks '
        'FOR EACH ROW WHEN (%1$s <> %2$s '
        'OR (OLD.command IS DISTINCT FROM NEW.command AND %2$s)) '
        'EXECUTE FUNCTION worker.system_stability_task_hint()',
        counts_old, counts_new
    );
    EXECUTE format(
        'CREATE OR REPLACE TRIGGER system_stability_hint_delete AFTER DELETE ON worker.tasks '
        'FOR EACH ROW WHEN (%s) EXECUTE FUNCTION worker.system_stability_task_hint()',
        counts_old
    );
END;
$$;

REVOKE EXECUTE ON FUNCTION worker.system_stability_compile_commands() FROM PUBLIC;

-- The WHEN clauses have established that a task started or stopped counting, or that an
-- active analytics task changed command: hint. SECURITY DEFINER and pinned like every relay
-- function, though it reads nothing.
CREATE OR REPLACE FUNCTION worker.system_stability_task_hint()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('system_stability', '{"table":"tasks"}');
    RETURN NULL;
END;
$$;

-- A registry change may change which tasks count: recompile the helper, then hint.
CREATE OR REPLACE FUNCTION worker.system_stability_registry_hint()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM worker.system_stability_compile_commands();
    PERFORM pg_catalog.pg_notify('system_stability', '{"table":"command_registry"}');
    RETURN NULL;
END;
$$;

-- CREATE OR REPLACE TRIGGER (not DROP + CREATE): it takes a SHARE ROW EXCLUSIVE lock rather than
-- ACCESS EXCLUSIVE, so re-installing on a busy system does not block readers of the tables.

CREATE OR REPLACE TRIGGER system_stability_hint_insert
AFTER INSERT ON public.import_job
FOR EACH ROW
WHEN (public.import_job_state_is_active(NEW.state::text))
EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');

CREATE OR REPLACE TRIGGER system_stability_hint_update
AFTER UPDATE ON public.import_job
FOR EACH ROW
WHEN (
    public.import_job_state_is_active(OLD.state::text)
    <> public.import_job_state_is_active(NEW.state::text)
)
EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');

CREATE OR REPLACE TRIGGER system_stability_hint_delete
AFTER DELETE ON public.import_job
FOR EACH ROW
WHEN (public.import_job_state_is_active(OLD.state::text))
EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');

CREATE OR REPLACE TRIGGER system_stability_hint_truncate
AFTER TRUNCATE ON public.import_job
FOR EACH STATEMENT
EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');

-- worker.tasks: insert, update and delete triggers, compiled from the registry (above).
SELECT worker.system_stability_compile_commands();

CREATE OR REPLACE TRIGGER system_stability_hint_truncate
AFTER TRUNCATE ON worker.tasks
FOR EACH STATEMENT
EXECUTE FUNCTION public.system_stability_hint('{"table":"tasks"}');

CREATE OR REPLACE TRIGGER system_stability_hint
AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON worker.command_registry
FOR EACH STATEMENT
EXECUTE FUNCTION worker.system_stability_registry_hint();

COMMENT ON FUNCTION public.is_system_stable() IS
    'stability-relay: true when no import job and no analytics task is active.';
COMMENT ON FUNCTION public.get_analytics_tasks_in_progress() IS
    'stability-relay: the active analytics tasks, as JSON objects.';
COMMENT ON FUNCTION public.get_import_jobs_in_progress() IS
    'stability-relay: the active import jobs, as JSON objects.';
