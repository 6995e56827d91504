-- stability-relay: the least-privilege role the relay connects as. Idempotent.
-- Apply after hold.sql and the generated activities (stability-relay db install does).
--
-- `stability_relay` is a NOLOGIN group role. It may connect, call the nine SECURITY DEFINER
-- functions (the six readers and the hold's request, confirm and release), the feeds' enrich
-- functions when the config has any, and LISTEN (LISTEN needs no privilege), and nothing else: it has no privileges on any table. The hold
-- flag's sequence is readable by PUBLIC (hold.sql). An operator creates the login role
-- the relay uses, once per cluster:
--
--     CREATE ROLE relay LOGIN PASSWORD '...' IN ROLE stability_relay;
--
-- and puts that role's name and password in the relay's configuration. Roles belong to the
-- cluster, so apply this file in every database the relay watches (it grants CONNECT on the
-- current one).
--
-- pg_notification_queue_usage() and pg_listening_channels(), which the relay reads for its
-- metrics, are executable by PUBLIC in PostgreSQL, so they need no grant here.
--
-- The nine functions are revoked from PUBLIC: they run as their owner. If other roles of the
-- data system call them (e.g. its web API), grant them EXECUTE, or make them members of
-- stability_relay.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'stability_relay') THEN
        CREATE ROLE stability_relay NOLOGIN;
    END IF;
EXCEPTION
    -- Another database's install created it concurrently (roles are cluster-wide, and the
    -- installer's advisory lock only serialises installs into the same database).
    WHEN duplicate_object OR unique_violation THEN NULL;
END;
$$;

REVOKE EXECUTE ON FUNCTION
    public.is_system_stable(),
    public.system_stability_activities(),
    public.system_stability_details(integer),
    public.system_stability_indicators(),
    public.get_analytics_tasks_in_progress(),
    public.get_import_jobs_in_progress(),
    public.system_stability_request_hold(),
    public.system_stability_confirm_hold(),
    public.system_stability_release_hold()
FROM PUBLIC;

DO $$
BEGIN
    EXECUTE pg_catalog.format('GRANT CONNECT ON DATABASE %I TO stability_relay',
        pg_catalog.current_database());
END;
$$;

-- The functions live in public; the tables they read need no grant (they run as their owner).
GRANT USAGE ON SCHEMA public TO stability_relay;

GRANT EXECUTE ON FUNCTION
    public.system_stability_record(text[], text[], timestamptz, interval),
    public.system_stability_history(timestamptz, text, integer),
    public.system_stability_history_summary(text),
    public.system_stability_typical(),
    public.is_system_stable(),
    public.system_stability_activities(),
    public.system_stability_details(integer),
    public.system_stability_indicators(),
    public.get_analytics_tasks_in_progress(),
    public.get_import_jobs_in_progress(),
    public.system_stability_request_hold(),
    public.system_stability_confirm_hold(),
    public.system_stability_release_hold()
TO stability_relay;

-- The feeds' enrich functions (public.system_stability_enrich_<name>(jsonb)), generated only
-- for a config whose feeds enrich (the statbus profile's import_job), and revoked from PUBLIC
-- where they are created: each one there is, and only those.
DO $$
DECLARE
    enrich record;
BEGIN
    FOR enrich IN
        SELECT p.oid::pg_catalog.regprocedure AS fn FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace
              OPERATOR(pg_catalog.=) 'public'::pg_catalog.regnamespace::pg_catalog.oid
          AND p.proname::pg_catalog.text
              OPERATOR(pg_catalog.~~) 'system\_stability\_enrich\_%'::pg_catalog.text
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO stability_relay', enrich.fn);
    END LOOP;
END;
$$;
