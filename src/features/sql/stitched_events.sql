-- stitched_events: the StitchedEvents stream (src/data/schemas.py) as of $as_of:
-- stitched clicks UNION ALL transactions, ordered by customer (unresolved last), ts, event_id.
-- Needs the stitched_clicks view (stitched_clicks.sql) for the same $as_of.
-- Transaction-only fields are NULL on clicks and click-only fields NULL on transactions.
-- amount_krw puts every currency on one scale (fx_rates.sql), so rules can say "10M KRW".
SELECT
    event_id,
    ts,
    customer_id,
    'click' AS source,
    channel,
    CAST(session_id AS BIGINT) AS session_id,
    page,
    action,
    CAST(dwell_seconds AS DOUBLE) AS dwell_seconds,
    referrer,
    CAST(NULL AS VARCHAR) AS code,
    CAST(NULL AS DOUBLE) AS amount,
    CAST(NULL AS VARCHAR) AS currency,
    CAST(NULL AS VARCHAR) AS product,
    CAST(NULL AS DOUBLE) AS amount_krw
FROM stitched_clicks
UNION ALL
SELECT
    event_id,
    ts,
    customer_id,
    'txn' AS source,
    channel,
    CAST(session_id AS BIGINT) AS session_id,
    CAST(NULL AS VARCHAR) AS page,
    CAST(NULL AS VARCHAR) AS action,
    CAST(NULL AS DOUBLE) AS dwell_seconds,
    CAST(NULL AS VARCHAR) AS referrer,
    code,
    CAST(amount AS DOUBLE) AS amount,
    t.currency,
    product,
    CAST(amount AS DOUBLE) * r.krw_rate AS amount_krw
FROM transactions AS t
LEFT JOIN fx_rates AS r ON r.currency = t.currency
WHERE ts < $as_of
ORDER BY customer_id NULLS LAST, ts, event_id
