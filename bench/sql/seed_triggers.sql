-- The seed document's design, verbatim but for the schema: a statement-level trigger on every
-- INSERT or UPDATE OF state that computes is_system_stable() inside the writing transaction
-- and sends {"stable": ...}. Installed in its own schema so our functions stay untouched.
-- For the trigger-cost benchmark only.
CREATE SCHEMA IF NOT EXISTS bench_seed;

CREATE OR REPLACE FUNCTION bench_seed.is_system_stable()
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    has_active_jobs boolean;
BEGIN
    SELECT EXISTS (
        SELECT 1 FROM public.import_job
        WHERE state NOT IN ('finished', 'rejected', 'waiting_for_review', 'waiting_for_upload')

        UNION ALL

        SELECT 1 FROM worker.tasks t
        JOIN worker.command_registry cr ON t.command = cr.command
        WHERE cr.queue = 'analytics'
          AND t.state IN ('pending', 'processing')
        LIMIT 1
    ) INTO has_active_jobs;
    RETURN NOT has_active_jobs;
END;
$$;

CREATE OR REPLACE FUNCTION bench_seed.notify_system_stability_change()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    is_stable boolean;
BEGIN
    SELECT bench_seed.is_system_stable() INTO is_stable;
    PERFORM pg_notify('system_stability', json_build_object('stable', is_stable)::text);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER bench_seed_notify_on_import_job_change
AFTER INSERT OR UPDATE OF state ON public.import_job
FOR EACH STATEMENT
EXECUTE FUNCTION bench_seed.notify_system_stability_change();

CREATE OR REPLACE TRIGGER bench_seed_notify_on_task_change
AFTER INSERT OR UPDATE OF state ON worker.tasks
FOR EACH STATEMENT
EXECUTE FUNCTION bench_seed.notify_system_stability_change();
