-- Other ways of hinting, for the trigger-cost benchmark (bench/triggers.py), beside the
-- demo tables and installed disabled; each calls hold.sql's system_stability_hint() and so
-- reads the hold flag like ours.
-- * bench_plain_*: the previous release's hint, one plain statement trigger per table that
--   fires for every statement, whether it changed a row or not.
-- * bench_rows_*: what `db install` creates on a partitioned table, row triggers filtered by
--   WHEN on the seed profile's active states (old or new row), cloned to every partition.

CREATE OR REPLACE TRIGGER bench_plain_hint
AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON worker.tasks
FOR EACH STATEMENT EXECUTE FUNCTION public.system_stability_hint('{"table":"tasks"}');
CREATE OR REPLACE TRIGGER bench_plain_hint
AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.import_job
FOR EACH STATEMENT EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');

CREATE OR REPLACE TRIGGER bench_rows_insert AFTER INSERT ON worker.tasks FOR EACH ROW
WHEN (NEW.state::text = ANY (ARRAY['pending', 'processing', 'waiting']))
EXECUTE FUNCTION public.system_stability_hint('{"table":"tasks"}');
CREATE OR REPLACE TRIGGER bench_rows_update AFTER UPDATE ON worker.tasks FOR EACH ROW
WHEN (OLD.state::text = ANY (ARRAY['pending', 'processing', 'waiting'])
      OR NEW.state::text = ANY (ARRAY['pending', 'processing', 'waiting']))
EXECUTE FUNCTION public.system_stability_hint('{"table":"tasks"}');
CREATE OR REPLACE TRIGGER bench_rows_delete AFTER DELETE ON worker.tasks FOR EACH ROW
WHEN (OLD.state::text = ANY (ARRAY['pending', 'processing', 'waiting']))
EXECUTE FUNCTION public.system_stability_hint('{"table":"tasks"}');
CREATE OR REPLACE TRIGGER bench_rows_truncate AFTER TRUNCATE ON worker.tasks
FOR EACH STATEMENT EXECUTE FUNCTION public.system_stability_hint('{"table":"tasks"}');

CREATE OR REPLACE TRIGGER bench_rows_insert AFTER INSERT ON public.import_job FOR EACH ROW
WHEN (NEW.state::text = ANY (ARRAY['upload_completed', 'preparing_data', 'analysing_data',
                                   'approved', 'processing_data']))
EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');
CREATE OR REPLACE TRIGGER bench_rows_update AFTER UPDATE ON public.import_job FOR EACH ROW
WHEN (OLD.state::text = ANY (ARRAY['upload_completed', 'preparing_data', 'analysing_data',
                                   'approved', 'processing_data'])
      OR NEW.state::text = ANY (ARRAY['upload_completed', 'preparing_data', 'analysing_data',
                                      'approved', 'processing_data']))
EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');
CREATE OR REPLACE TRIGGER bench_rows_delete AFTER DELETE ON public.import_job FOR EACH ROW
WHEN (OLD.state::text = ANY (ARRAY['upload_completed', 'preparing_data', 'analysing_data',
                                   'approved', 'processing_data']))
EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');
CREATE OR REPLACE TRIGGER bench_rows_truncate AFTER TRUNCATE ON public.import_job
FOR EACH STATEMENT EXECUTE FUNCTION public.system_stability_hint('{"table":"import_job"}');

ALTER TABLE worker.tasks DISABLE TRIGGER bench_plain_hint;
ALTER TABLE public.import_job DISABLE TRIGGER bench_plain_hint;
ALTER TABLE worker.tasks DISABLE TRIGGER bench_rows_insert;
ALTER TABLE worker.tasks DISABLE TRIGGER bench_rows_update;
ALTER TABLE worker.tasks DISABLE TRIGGER bench_rows_delete;
ALTER TABLE worker.tasks DISABLE TRIGGER bench_rows_truncate;
ALTER TABLE public.import_job DISABLE TRIGGER bench_rows_insert;
ALTER TABLE public.import_job DISABLE TRIGGER bench_rows_update;
ALTER TABLE public.import_job DISABLE TRIGGER bench_rows_delete;
ALTER TABLE public.import_job DISABLE TRIGGER bench_rows_truncate;
