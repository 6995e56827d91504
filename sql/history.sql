-- stability-relay: the history of busy periods. Idempotent. Applied by `db install` after the
-- generated activities (it calls their system_stability_slugs()).
--
-- One row per period during which an activity (or, with activity '', the system as a whole)
-- was active. Only the relay elected leader writes (relay/state/history.py), through
-- system_stability_record(); every relay reads, so several relays show one history and a
-- restart loses nothing. Rows that ended longer ago than the retention are deleted as new
-- ones are written.

CREATE TABLE IF NOT EXISTS public.system_stability_period (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    activity text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    slugs text[] NOT NULL DEFAULT '{}',
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
-- At most one open period per activity: a second leader (an overlap at fail-over) or a
-- repeated write cannot open another.
CREATE UNIQUE INDEX IF NOT EXISTS system_stability_period_open
    ON public.system_stability_period (activity) WHERE ended_at IS NULL;
CREATE INDEX IF NOT EXISTS system_stability_period_started
    ON public.system_stability_period (started_at);
COMMENT ON TABLE public.system_stability_period IS
    'stability-relay: busy periods per activity ('''' = the whole system), written by the leader.';

-- running: the activities active at p_at (and '' while any is); known: those whose state is
-- known (the rest keep their periods as they are). Import job slugs seen while a period is
-- open are added to it.
CREATE OR REPLACE FUNCTION public.system_stability_record(
    p_running text[], p_known text[], p_at timestamptz, p_retention interval
)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '2s'
AS $$
DECLARE
    v_slugs jsonb := public.system_stability_slugs();
BEGIN
    UPDATE public.system_stability_period AS p
       SET ended_at = greatest(p_at, p.started_at)
     WHERE p.ended_at IS NULL AND p.activity = ANY (p_known) AND p.activity <> ALL (p_running);
    INSERT INTO public.system_stability_period (activity, started_at)
    SELECT a, p_at FROM unnest(p_running) AS a
    ON CONFLICT (activity) WHERE ended_at IS NULL DO NOTHING;
    UPDATE public.system_stability_period AS p
       SET slugs = ARRAY(
           SELECT u.s FROM unnest(p.slugs || ARRAY(
               SELECT jsonb_array_elements_text(
                   CASE WHEN p.activity = '' THEN
                       (SELECT coalesce(jsonb_agg(e), '[]') FROM jsonb_each(v_slugs) AS j,
                               jsonb_array_elements(j.value) AS e)
                   ELSE coalesce(v_slugs -> p.activity, '[]') END)))
               WITH ORDINALITY AS u (s, n)
           GROUP BY u.s ORDER BY min(u.n) LIMIT 100)  -- the first seen are kept
     WHERE p.ended_at IS NULL;
    DELETE FROM public.system_stability_period
     WHERE ended_at < now() - p_retention;
END;
$$;

-- The periods since p_since (those still open too), newest first, at most p_limit.
CREATE OR REPLACE FUNCTION public.system_stability_history(
    p_since timestamptz, p_activity text, p_limit integer
)
RETURNS json
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(json_agg(json_build_object(
        'activity', nullif(p.activity, ''),
        'start', p.started_at,
        'end', p.ended_at,
        'duration_s', round(extract(epoch FROM coalesce(p.ended_at, now()) - p.started_at), 3),
        'open', p.ended_at IS NULL,
        'slugs', p.slugs
    ) ORDER BY p.started_at DESC), '[]'::json)
    FROM (
        SELECT * FROM public.system_stability_period AS q
        WHERE coalesce(q.ended_at, 'infinity') >= p_since
          AND q.activity = coalesce(p_activity, '')
        ORDER BY q.started_at DESC
        LIMIT p_limit
    ) AS p;
$$;

-- Count, median and 90th percentile of the periods that ended in the last 24 h and 7 d.
CREATE OR REPLACE FUNCTION public.system_stability_history_summary(p_activity text)
RETURNS json
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT json_object_agg(w.name, (
        SELECT json_build_object(
            'count', count(*),
            'median_s', round((percentile_cont(0.5) WITHIN GROUP (ORDER BY d))::numeric, 3),
            'p90_s', round((percentile_cont(0.9) WITHIN GROUP (ORDER BY d))::numeric, 3))
        FROM (SELECT extract(epoch FROM p.ended_at - p.started_at) AS d
              FROM public.system_stability_period AS p
              WHERE p.activity = coalesce(p_activity, '')
                AND p.ended_at >= now() - w.span) AS durations))
    FROM (VALUES ('last_24h', interval '24 hours'), ('last_7d', interval '7 days'))
        AS w (name, span);
$$;

REVOKE ALL ON public.system_stability_period FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION
    public.system_stability_record(text[], text[], timestamptz, interval),
    public.system_stability_history(timestamptz, text, integer),
    public.system_stability_history_summary(text)
FROM PUBLIC;

-- What an estimate of the time left can rest on, per activity ('' = the whole system): the
-- periods that ended in the last 7 days (count, median, 90th percentile) and when the open one
-- began. Activities without a closed period are left out (no data, no estimate).
CREATE OR REPLACE FUNCTION public.system_stability_typical()
RETURNS json
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(json_object_agg(t.activity, json_build_object(
        'count', t.n,
        'median_s', round(t.median_s::numeric, 3),
        'p90_s', round(t.p90_s::numeric, 3),
        'open_since', (SELECT o.started_at FROM public.system_stability_period AS o
                       WHERE o.activity = t.activity AND o.ended_at IS NULL))), '{}'::json)
    FROM (
        SELECT p.activity, count(*) AS n,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY d.s) AS median_s,
               percentile_cont(0.9) WITHIN GROUP (ORDER BY d.s) AS p90_s
        FROM public.system_stability_period AS p,
             LATERAL (SELECT extract(epoch FROM p.ended_at - p.started_at) AS s) AS d
        WHERE p.ended_at >= now() - interval '7 days'
        GROUP BY p.activity
    ) AS t;
$$;
REVOKE EXECUTE ON FUNCTION public.system_stability_typical() FROM PUBLIC;
