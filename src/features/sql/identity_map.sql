-- identity_map: which customer each device and cookie belongs to, as of $as_of.
--
-- Why: anonymous web/app events can only be attributed through identifiers that a login has
-- tied to a customer. A "login" is any clickstream event that carries a customer_id; only events
-- strictly before $as_of count, so the map as of T never uses what happened at or after T.
-- An identifier logged into by two or more customers (a family tablet, a branch kiosk) is
-- shared: customer_id stays NULL so that nothing downstream merges those customers.
--
-- Columns
--   identifier_type  'device' | 'cookie'
--   identifier       the device_id or cookie_id
--   customer_id      the one customer it resolves to; NULL when shared
--   n_customers      distinct customers that logged in with it
--   n_logins         distinct logged-in sessions seen on it
--   first_login_ts   first customer-identified event on it
--   last_login_ts    last customer-identified event on it (before $as_of)
--   is_shared        n_customers > 1
WITH logged_events AS (
    -- needs the session_keys view (session_keys.sql) for the same $as_of
    SELECT 'device' AS identifier_type, device_id AS identifier, customer_id, session_id,
        first_ts, last_ts
    FROM session_keys
    WHERE customer_id IS NOT NULL
    UNION ALL
    SELECT 'cookie' AS identifier_type, cookie_id AS identifier, customer_id, session_id,
        first_ts, last_ts
    FROM session_keys
    WHERE customer_id IS NOT NULL AND cookie_id IS NOT NULL
)
SELECT
    identifier_type,
    identifier,
    CASE WHEN COUNT(DISTINCT customer_id) = 1 THEN MIN(customer_id) END AS customer_id,
    COUNT(DISTINCT customer_id) AS n_customers,
    COUNT(DISTINCT session_id) AS n_logins,
    MIN(first_ts) AS first_login_ts,
    MAX(last_ts) AS last_login_ts,
    COUNT(DISTINCT customer_id) > 1 AS is_shared
FROM logged_events
GROUP BY identifier_type, identifier
