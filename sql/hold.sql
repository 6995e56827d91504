-- stability-relay: the hold and the hint triggers' function. Idempotent: apply it again after
-- every upgrade. `db install` applies it first, then the SQL it generates from the config's
-- activities (relay/source/activities/sql.py: the reads, the details and the triggers themselves).
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
-- notify only while no relay *holds*. They notify only for a statement that changed a row an
-- activity can see (sql.py generates, per table, a function that reads the statement's
-- transition tables): an idle worker's poll, an UPDATE of no row, sends nothing, so it keeps
-- no relay reading. A partitioned table hints by row triggers instead, filtered by WHEN:
-- they are cloned to every partition, statement triggers are not (sql.py, _row_triggers).
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
--   tests/source/test_hold.py (the drain with a writer committing after the release, several
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
-- * Caveats: a partition's own TRUNCATE, its DROP or DETACH fire no trigger of its parent's
--   (the reconcile finds what they changed, stability.reconcile_interval); a prepared
--   (two-phase) transaction cannot have sent NOTIFY, so two-phase writers fail unless a hold
--   is on (as with any NOTIFY trigger); session_replication_role = replica skips all
--   triggers.

-- The hold flag (see the top of this file): 0 no hold, 2 requested, 1 held.
CREATE SEQUENCE IF NOT EXISTS public.system_stability_hold
    AS smallint MINVALUE 0 MAXVALUE 2 START 0 NO CYCLE;
-- Development builds had MAXVALUE 1 (one step, no request). Altered only then: ALTER SEQUENCE
-- waits for the writers that read the flag.
DO $$
BEGIN
    IF (SELECT s.seqmax FROM pg_catalog.pg_sequence AS s
        WHERE s.seqrelid OPERATOR(pg_catalog.=)
              'public.system_stability_hold'::pg_catalog.regclass::pg_catalog.oid)
       OPERATOR(pg_catalog.<) 2::pg_catalog.int8 THEN
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

-- They run as their owner: in the transaction that creates them, so no other role can ever
-- call them (roles.sql grants them to the relay's role).
REVOKE EXECUTE ON FUNCTION
    public.system_stability_request_hold(),
    public.system_stability_confirm_hold(),
    public.system_stability_release_hold()
FROM PUBLIC;

-- The writers' trigger function. Deliberately not SECURITY DEFINER and without a SET clause:
-- both cost every call (13% of a worker's throughput, bench/), and the function reads nothing
-- but the flag, with the writer's own rights. It runs under each writer's search_path, which
-- may list a schema that others can create in ahead of pg_catalog, so every function,
-- operator and type is schema-qualified instead: no overload planted in such a schema can be
-- chosen (CVE-2018-1058). IS DISTINCT FROM cannot name its operator, hence coalesce (a
-- syntax, not a function): a flag that cannot be read, NULL, notifies.
CREATE OR REPLACE FUNCTION public.system_stability_hint()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- pg_sequence_last_value() is what the pg_sequences view calls; unlike a SELECT from the
    -- sequence it runs as a simple expression, which is what keeps this trigger cheap.
    IF coalesce(
        pg_catalog.pg_sequence_last_value('public.system_stability_hold'::pg_catalog.regclass),
        0::pg_catalog.int8) OPERATOR(pg_catalog.<>) 1::pg_catalog.int8 THEN
        PERFORM pg_catalog.pg_notify('system_stability', TG_ARGV[0]);
    END IF;
    RETURN NULL;
END;
$$;

-- The notification of the generated hint functions (one per table, sql.py: they decide
-- whether a statement changed a row an activity sees), which cannot name the channel: it is
-- written here. Called only when a hint is sent; plain and qualified for the same reasons.
CREATE OR REPLACE FUNCTION public.system_stability_notify(payload text)
RETURNS void
LANGUAGE sql
AS $$
    SELECT pg_catalog.pg_notify('system_stability', payload)
$$;
-- Writers' triggers call it as the writer: anyone may (like the flag above), also where the
-- installer's default privileges revoke EXECUTE from PUBLIC. It can only send a hint, which
-- costs a read and is never believed.
GRANT EXECUTE ON FUNCTION public.system_stability_notify(text) TO PUBLIC;
