-- stability-relay: the database side. Idempotent: apply it again after every upgrade.
-- Needs the data system's tables: public.import_job, worker.tasks, worker.command_registry.
-- The NOTIFY channel below, system_stability, is database.channel: `db install` writes it in.
--
-- Why the triggers send hints, not answers
-- ----------------------------------------
-- The original design called is_system_stable() inside a statement trigger and sent
-- {"stable": ...}. That value is computed inside the writing transaction, before it commits
-- and without seeing other transactions' uncommitted work, so two concurrent writers can each
-- announce a state that is false once both have committed. Here a trigger only says "this
-- table was written" (a hint with a constant payload). NOTIFY is delivered after commit, so
-- by the time the relay receives a hint the change is visible, and the relay answers every
-- hint by calling is_system_stable() in a fresh snapshot. After the last change commits, the
-- relay's answer is the committed truth. Spurious hints are harmless (one extra cheap query).
--
-- Why the triggers are cheap: the hold
-- ------------------------------------
-- A notifying transaction takes a database-wide lock at commit and wakes every listener. And
-- row triggers are dear even when they send nothing: their WHEN clauses are prepared afresh
-- for every statement. Measured under worker churn (bench/, docs/benchmarks.md): per-row
-- triggers filtered by WHEN clauses kept 0.6 of the no-trigger throughput whether they
-- notified or not; an empty statement-level trigger keeps 0.97. So the triggers here are
-- statement-level and plain (no SECURITY DEFINER, no SET: those cost every call), and they
-- notify only while no relay *holds*:
--
--   * When hints come faster than the relay reads (its reads are at least
--     stability.min_read_interval apart anyway), the relay takes the hold in two steps, and
--     polls is_system_stable() every min_read_interval from then on. Step 1 (request) sets
--     the flag to 2 and announces {"hold":true}, committed; writers still notify on 2. Step 2
--     (confirm) sets it to 1, but only if it is still 2. From then on writers skip their
--     NOTIFY: under load, a write costs one flag read and no notification at all. The flag is
--     a sequence: setval() is seen by every session at once and never rolled back.
--   * Every relay that learns of the hold (the announcement, or a read that returns 1 or 2)
--     polls until it reads the flag 0 again. Two steps, so that writers never skip before
--     the announcement is committed: it reaches every relay, and a hold whose announcement
--     failed to commit stays at 2, which costs polling, never a hint.
--   * A relay ends a hold by setting the flag to 0 (release). Writers from then on notify
--     again. A writer that read 1 before the release may commit later, unannounced: so every
--     relay that reads 0 after polling *drains*. It commits a transaction id of its own
--     (larger than that of any writer that read 1: a writer has its id before its trigger
--     reads the flag, and the relay's comes after the release, which came after that read),
--     so from then on every snapshot lists such a writer while it runs. The next read's
--     snapshot names the transactions running; the drain ends at the first read whose
--     snapshot has none of them running any more, and that read sees their commits.
--   * Request, confirm and release take one advisory lock, so a confirm cannot turn a
--     released request into a hold nobody announced.
--   A relay that connects treats itself as coming out of a hold and drains once, so a hold
--   ended just before it connected cannot hide a commit from it. A hold left set by relays
--   that are gone is found by the next relay's first read and ended by it. Tests:
--   tests/test_hold.py (the drain with a writer committing after the release, several
--   relays, random concurrent transactions with holds taken and ended throughout).
--
-- Other properties:
-- * PostgreSQL delivers identical notifications of one transaction once: a transaction or a
--   bulk statement sends at most one hint per table.
-- * A transaction that sent no notification skips the global NOTIFY lock at commit.
-- * No trigger reads the tables or calls is_system_stable(): the write path never scans.
-- * The flag is readable by PUBLIC (granted below). Without that grant a writer's trigger
--   fails on PostgreSQL before 18 and reads NULL, and notifies, on 18; a relay that reads NULL
--   polls as if held. Either way the flag can cost hints, never lose one.
-- * Caveats: statement triggers are not cloned to partitions (a write addressed to a
--   partition of a partitioned import_job or tasks would not hint: add the trigger there);
--   a prepared (two-phase) transaction cannot have sent NOTIFY, so two-phase writers fail
--   unless a hold is on (as with any NOTIFY trigger); session_replication_role = replica
--   skips all triggers.

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

-- Activeness: the single source of truth, two views that the functions below read. The
-- states are untyped literals, so they take the column's type (enum or text) and an index on
-- state serves them: a relay polling during a hold reads an index, not the whole queue table
-- (a scan cost 6 ms per read at 50,000 tasks, bench/notes.md). A NULL state is not active.

CREATE OR REPLACE VIEW public.system_stability_active_import_jobs AS
SELECT j.id
FROM public.import_job AS j
WHERE j.state NOT IN ('finished', 'rejected', 'waiting_for_review', 'waiting_for_upload', 'failed');

CREATE OR REPLACE VIEW worker.system_stability_active_tasks AS
SELECT t.id
FROM worker.tasks AS t
JOIN worker.command_registry AS cr ON cr.command = t.command
WHERE cr.queue = 'analytics' AND t.state IN ('pending', 'processing', 'waiting');

-- What the relay calls. SECURITY DEFINER so its role needs no table privileges; the pinned
-- search_path stops a caller from planting objects that the owner's code would resolve.

CREATE OR REPLACE FUNCTION public.is_system_stable()
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT NOT EXISTS (SELECT FROM public.system_stability_active_import_jobs)
        AND NOT EXISTS (SELECT FROM worker.system_stability_active_tasks);
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
    WHERE t.id IN (SELECT id FROM worker.system_stability_active_tasks)
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
    WHERE j.id IN (SELECT id FROM public.system_stability_active_import_jobs)
    ORDER BY j.priority NULLS LAST, j.id;
$$;

-- The hold flag (see the top of this file): 0 no hold, 2 requested, 1 held.
CREATE SEQUENCE IF NOT EXISTS public.system_stability_hold
    AS smallint MINVALUE 0 MAXVALUE 2 START 0 NO CYCLE;
-- Development builds had MAXVALUE 1 (one step, no request). Altered only then: ALTER SEQUENCE
-- waits for the writers that read the flag.
DO $$
BEGIN
    IF (SELECT seqmax FROM pg_catalog.pg_sequence
        WHERE seqrelid = 'public.system_stability_hold'::pg_catalog.regclass) < 2 THEN
        ALTER SEQUENCE public.system_stability_hold MAXVALUE 2;
    END IF;
END;
$$;
-- Writers' triggers read it as the writer: anyone may read it.
GRANT SELECT ON SEQUENCE public.system_stability_hold TO PUBLIC;
-- A fresh sequence reads NULL, which a relay takes for "cannot read": make it 0.
SELECT pg_catalog.setval('public.system_stability_hold', 0)
WHERE pg_catalog.pg_sequence_last_value('public.system_stability_hold') IS NULL;

-- For the relay (roles.sql grants them). All three take the same advisory lock (b"stabhold"),
-- waiting at most a second: a relay stuck behind another's slow commit gets an error, not a
-- stalled listening connection.

CREATE OR REPLACE FUNCTION public.system_stability_request_hold()
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '1s'
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(8319381486946970724);
    IF coalesce(pg_sequence_last_value('public.system_stability_hold'), 0) = 0 THEN
        PERFORM setval('public.system_stability_hold', 2);
    END IF;
    PERFORM pg_notify('system_stability', '{"hold":true}');
END;
$$;

CREATE OR REPLACE FUNCTION public.system_stability_confirm_hold()
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '1s'
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(8319381486946970724);
    IF pg_sequence_last_value('public.system_stability_hold') = 2 THEN
        PERFORM setval('public.system_stability_hold', 1);
        RETURN true;
    END IF;
    RETURN false;
END;
$$;

CREATE OR REPLACE FUNCTION public.system_stability_release_hold()
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '1s'
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(8319381486946970724);
    PERFORM setval('public.system_stability_hold', 0);
END;
$$;

DROP FUNCTION IF EXISTS public.system_stability_set_hold(boolean);

-- The writers' trigger function. Deliberately not SECURITY DEFINER and without a SET clause:
-- both cost every call (13% of a worker's throughput, bench/), and the function reads nothing
-- but the flag, with the writer's own rights. Every name is schema-qualified instead.
CREATE OR REPLACE FUNCTION public.system_stability_hint()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- pg_sequence_last_value() is what the pg_sequences view calls; unlike a SELECT from the
    -- sequence it runs as a simple expression, which is what keeps this trigger cheap.
    IF pg_catalog.pg_sequence_last_value('public.system_stability_hold'::pg_catalog.regclass)
        IS DISTINCT FROM 1 THEN
        PERFORM pg_catalog.pg_notify('system_stability', TG_ARGV[0]);
    END IF;
    RETURN NULL;
END;
$$;

-- Earlier versions hinted per row, with WHEN clauses compiled from the registry.
DROP TRIGGER IF EXISTS system_stability_hint_insert ON public.import_job;
DROP TRIGGER IF EXISTS system_stability_hint_update ON public.import_job;
DROP TRIGGER IF EXISTS system_stability_hint_delete ON public.import_job;
DROP TRIGGER IF EXISTS system_stability_hint_truncate ON public.import_job;
DROP TRIGGER IF EXISTS system_stability_hint_insert ON worker.tasks;
DROP TRIGGER IF EXISTS system_stability_hint_update ON worker.tasks;
DROP TRIGGER IF EXISTS system_stability_hint_delete ON worker.tasks;
DROP TRIGGER IF EXISTS system_stability_hint_truncate ON worker.tasks;

-- Any write to a table that is_system_stable() reads hints: statement-level, so a statement
-- costs one call however many rows it touches (or none). CREATE OR REPLACE TRIGGER (not DROP +
-- CREATE): it takes a SHARE ROW EXCLUSIVE lock rather than ACCESS EXCLUSIVE, so re-installing
-- on a busy system does not block readers of the tables.

CREATE OR REPLACE TRIGGER system_stability_hint
AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.import_job
FOR EACH STATEMENT
EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');

CREATE OR REPLACE TRIGGER system_stability_hint
AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON worker.tasks
FOR EACH STATEMENT
EXECUTE FUNCTION public.system_stability_hint('{"table":"tasks"}');

CREATE OR REPLACE TRIGGER system_stability_hint
AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON worker.command_registry
FOR EACH STATEMENT
EXECUTE FUNCTION public.system_stability_hint('{"table":"command_registry"}');

DROP FUNCTION IF EXISTS worker.system_stability_registry_hint();
-- Earlier versions' activeness helpers (text arguments: no index could serve them).
DROP FUNCTION IF EXISTS public.import_job_state_is_active(text);
DROP FUNCTION IF EXISTS worker.task_state_is_active(text);
DROP FUNCTION IF EXISTS worker.system_stability_task_hint();
DROP FUNCTION IF EXISTS worker.system_stability_compile_commands();

COMMENT ON FUNCTION public.is_system_stable() IS
    'stability-relay: true when no import job and no analytics task is active.';
COMMENT ON FUNCTION public.get_analytics_tasks_in_progress() IS
    'stability-relay: the active analytics tasks, as JSON objects.';
COMMENT ON FUNCTION public.get_import_jobs_in_progress() IS
    'stability-relay: the active import jobs, as JSON objects.';
