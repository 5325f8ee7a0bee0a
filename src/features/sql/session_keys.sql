-- session_keys: the one scan of the clickstream. Events before $as_of reduced to one row per
-- (session, device, cookie, customer, window_days) — the grain stitching needs, plus the
-- additive activity counts the customer view sums once sessions are attributed.
--
-- Why a stage of its own: identity_map, session_map and customer_view all read it, so the
-- (large) clickstream is scanned once; DuckDB materializes it, Spark can cache it. Sessions
-- are ~1/8 of events, so everything downstream works on sessions, never on single events.
--
-- Columns
--   session_id, device_id, cookie_id, customer_id   the stitching keys (customer_id is the
--                    event's own login customer, NULL for anonymous events)
--   window_days      smallest look-back window holding the events: 7, 30 or 90 (days before
--                    $as_of), NULL if older than 90 days. A session split by a window edge
--                    gives two rows; every consumer only uses duplicate-insensitive
--                    aggregates (MIN, MAX, COUNT DISTINCT) or sums additive counts.
--   first_ts, last_ts  first and last event
--   app_events, page_views, dwell_seconds, logins, pv_<group>  additive counts over the events
--                    (pv_<group>: page views on the page group, see PAGE_GROUPS). COUNT, not
--                    SUM(CASE ... 1 ELSE 0): BIGINT instead of DuckDB's 128-bit SUM result.
--   lv_<product>     long reads: views of the product's pages with dwell_seconds >= 180 (the
--                    share of long reads on a product's detail pages rises with the need for it)
SELECT
    session_id,
    device_id,
    cookie_id,
    customer_id,
    CASE
        WHEN ts >= $as_of - INTERVAL 7 DAY THEN 7
        WHEN ts >= $as_of - INTERVAL 30 DAY THEN 30
        WHEN ts >= $as_of - INTERVAL 90 DAY THEN 90
    END AS window_days,
    MIN(ts) AS first_ts,
    MAX(ts) AS last_ts,
    COUNT(CASE WHEN channel = 'app' THEN 1 END) AS app_events,
    COUNT(CASE WHEN action = 'view' THEN 1 END) AS page_views,
    SUM(dwell_seconds) AS dwell_seconds,
    COUNT(CASE WHEN action = 'login' THEN 1 END) AS logins,
    COUNT(CASE WHEN action = 'view' AND page LIKE 'loan%' THEN 1 END) AS pv_loan,
    COUNT(CASE WHEN action = 'view' AND page LIKE 'fx%' THEN 1 END) AS pv_fx,
    COUNT(CASE WHEN action = 'view' AND page LIKE 'fund%' THEN 1 END) AS pv_fund,
    COUNT(CASE WHEN action = 'view' AND page LIKE 'savings%' THEN 1 END) AS pv_savings,
    COUNT(CASE WHEN action = 'view' AND page LIKE 'card%' THEN 1 END) AS pv_card,
    COUNT(CASE WHEN action = 'view' AND page LIKE 'signup%' THEN 1 END) AS pv_signup,
    COUNT(CASE WHEN action = 'view' AND page LIKE 'pension%' THEN 1 END) AS pv_pension,
    COUNT(CASE WHEN action = 'view' AND page = 'error' THEN 1 END) AS pv_error,
    COUNT(CASE WHEN action = 'view' AND dwell_seconds >= 180 AND page LIKE 'loan%' THEN 1 END) AS lv_loan,
    COUNT(CASE WHEN action = 'view' AND dwell_seconds >= 180 AND page LIKE 'savings%' THEN 1 END) AS lv_savings,
    COUNT(CASE WHEN action = 'view' AND dwell_seconds >= 180 AND page LIKE 'fund%' THEN 1 END) AS lv_fund,
    COUNT(CASE WHEN action = 'view' AND dwell_seconds >= 180 AND page LIKE 'card%' THEN 1 END) AS lv_card,
    COUNT(CASE WHEN action = 'view' AND dwell_seconds >= 180 AND page LIKE 'fx%' THEN 1 END) AS lv_fx,
    COUNT(CASE WHEN action = 'view' AND dwell_seconds >= 180 AND page LIKE 'pension%' THEN 1 END) AS lv_pension
FROM clickstream
WHERE ts < $as_of
GROUP BY
    session_id,
    device_id,
    cookie_id,
    customer_id,
    CASE
        WHEN ts >= $as_of - INTERVAL 7 DAY THEN 7
        WHEN ts >= $as_of - INTERVAL 30 DAY THEN 30
        WHEN ts >= $as_of - INTERVAL 90 DAY THEN 90
    END
