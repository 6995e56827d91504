-- statbus's own notifications, as statbus sends them (facts from statisticsnorway/statbus,
-- written here for the benchmark): a row trigger on import_job for every insert, update or
-- delete ('import_job', {"verb","id"}); a row trigger on worker.tasks for updates that change
-- the state ('worker_task_changed', {"id","parent_id"}); and, standing in for its enqueue
-- functions, the queue's name on 'worker_tasks' for every task added. Installed disabled
-- beside the demo tables; the trigger-cost benchmark enables them for its "statbus" variant.

CREATE OR REPLACE FUNCTION public.bench_statbus_import_job_notify()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('import_job', json_build_object('verb', TG_OP, 'id', OLD.id)::text);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('import_job', json_build_object('verb', TG_OP, 'id', NEW.id)::text);
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION worker.bench_statbus_task_changed()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state IS DISTINCT FROM NEW.state THEN
        PERFORM pg_notify('worker_task_changed',
            json_build_object('id', NEW.id, 'parent_id', NULL)::text);
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION worker.bench_statbus_task_enqueued()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('worker_tasks',
        (SELECT queue FROM worker.command_registry WHERE command = NEW.command));
    RETURN NEW;
END;
$$;

CREATE OR REPLACE TRIGGER bench_statbus_import_job_notify
AFTER INSERT OR UPDATE OR DELETE ON public.import_job
FOR EACH ROW EXECUTE FUNCTION public.bench_statbus_import_job_notify();

CREATE OR REPLACE TRIGGER bench_statbus_task_changed
AFTER UPDATE ON worker.tasks
FOR EACH ROW EXECUTE FUNCTION worker.bench_statbus_task_changed();

CREATE OR REPLACE TRIGGER bench_statbus_task_enqueued
AFTER INSERT ON worker.tasks
FOR EACH ROW EXECUTE FUNCTION worker.bench_statbus_task_enqueued();
