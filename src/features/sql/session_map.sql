-- session_map: the customer each web/app session is attributed to, as of $as_of.
-- Needs the session_keys and identity_map views (session_keys.sql, identity_map.sql) for the
-- same $as_of.
--
-- Rules, in order:
--   login              exactly one customer logged in during the session: the whole session is
--                      theirs, including the anonymous events before the login.
--   multi_login        two or more customers logged in: never merged; the session-level
--                      customer_id is NULL (each logged-in event keeps its own customer_id).
--   shared_identifier  no login, and the session's device or cookie is shared: NULL.
--   ambiguous          no login, device and cookie resolve to different customers: NULL.
--   device | cookie    no login, every resolvable identifier points to one single customer.
--   unknown            no login and no identifier ever logged in (before $as_of): NULL.
--
-- Columns: session_id, customer_id, resolution, n_login_customers
WITH session_logins AS (
    SELECT
        session_id,
        COUNT(DISTINCT customer_id) AS n_login_customers,
        MIN(customer_id) AS login_customer_id
    FROM session_keys
    GROUP BY session_id
),
session_identifiers AS (
    SELECT DISTINCT session_id, 'device' AS identifier_type, device_id AS identifier
    FROM session_keys
    UNION
    SELECT DISTINCT session_id, 'cookie' AS identifier_type, cookie_id AS identifier
    FROM session_keys
    WHERE cookie_id IS NOT NULL
),
session_links AS (
    SELECT
        si.session_id,
        COUNT(DISTINCT im.customer_id) AS n_candidates,
        MIN(im.customer_id) AS candidate_customer_id,
        MAX(CASE WHEN im.is_shared THEN 1 ELSE 0 END) AS any_shared,
        MAX(CASE WHEN si.identifier_type = 'device' AND im.customer_id IS NOT NULL
            THEN 1 ELSE 0 END) AS device_resolves
    FROM session_identifiers AS si
    LEFT JOIN identity_map AS im
        ON si.identifier_type = im.identifier_type AND si.identifier = im.identifier
    GROUP BY si.session_id
)
SELECT
    sl.session_id,
    CASE
        WHEN sl.n_login_customers = 1 THEN sl.login_customer_id
        WHEN sl.n_login_customers = 0 AND lk.any_shared = 0 AND lk.n_candidates = 1
            THEN lk.candidate_customer_id
    END AS customer_id,
    CASE
        WHEN sl.n_login_customers = 1 THEN 'login'
        WHEN sl.n_login_customers > 1 THEN 'multi_login'
        WHEN lk.any_shared = 1 THEN 'shared_identifier'
        WHEN lk.n_candidates > 1 THEN 'ambiguous'
        WHEN lk.n_candidates = 1 AND lk.device_resolves = 1 THEN 'device'
        WHEN lk.n_candidates = 1 THEN 'cookie'
        ELSE 'unknown'
    END AS resolution,
    sl.n_login_customers
FROM session_logins AS sl
JOIN session_links AS lk ON sl.session_id = lk.session_id
