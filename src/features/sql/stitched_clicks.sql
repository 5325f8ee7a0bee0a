-- stitched_clicks: clickstream events before $as_of with the customer their session resolves to.
-- Needs the session_map view (session_map.sql) for the same $as_of.
-- An event that carries its own customer_id keeps it (so a multi-login session is never merged);
-- an anonymous event takes its session's customer_id, NULL when unresolved.
SELECT
    c.event_id,
    c.ts,
    COALESCE(c.customer_id, s.customer_id) AS customer_id,
    c.channel,
    c.device_id,
    c.cookie_id,
    c.session_id,
    c.page,
    c.action,
    c.dwell_seconds,
    c.referrer,
    s.resolution
FROM clickstream AS c
JOIN session_map AS s ON c.session_id = s.session_id
WHERE c.ts < $as_of
