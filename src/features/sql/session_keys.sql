-- session_keys: clickstream before $as_of reduced to one row per
-- (session, device, cookie, customer) — the only grain stitching needs.
-- Why a stage of its own: identity_map and session_map both read it, so the (large)
-- clickstream is scanned once for stitching; DuckDB materializes it, Spark can cache it.
SELECT
    session_id,
    device_id,
    cookie_id,
    customer_id,
    MIN(ts) AS first_ts,
    MAX(ts) AS last_ts
FROM clickstream
WHERE ts < $as_of
GROUP BY session_id, device_id, cookie_id, customer_id
