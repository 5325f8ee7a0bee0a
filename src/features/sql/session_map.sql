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
--
-- How: one GROUP BY session over session_keys gives the smallest and largest login customer;
-- that settles n_login_customers as 0 or 1 for almost every session, and the exact
-- COUNT(DISTINCT) is only computed for the rare sessions with two or more. Only sessions with no
-- login at all look their device and cookie up in identity_map (two joins against the small
-- map). "How many distinct candidates" only matters as 0 / 1 / more, so it is read off the
-- smallest and largest candidate instead of a COUNT(DISTINCT) over a device+cookie union.
WITH session_logins AS (
    SELECT
        session_id,
        MIN(customer_id) AS login_min,
        MAX(customer_id) AS login_max
    FROM session_keys
    GROUP BY session_id
),
multi_login AS (
    SELECT
        session_id,
        COUNT(DISTINCT customer_id) AS n_login_customers
    FROM session_keys
    WHERE session_id IN (SELECT session_id FROM session_logins WHERE login_min < login_max)
    GROUP BY session_id
),
anonymous_links AS (
    SELECT
        k.session_id,
        d.customer_id AS device_customer_id,
        c.customer_id AS cookie_customer_id,
        CASE WHEN d.is_shared OR c.is_shared THEN 1 ELSE 0 END AS shared
    FROM session_keys AS k
    LEFT JOIN identity_map AS d
        ON d.identifier_type = 'device' AND k.device_id = d.identifier
    LEFT JOIN identity_map AS c
        ON c.identifier_type = 'cookie' AND k.cookie_id = c.identifier
    WHERE k.session_id IN (SELECT session_id FROM session_logins WHERE login_min IS NULL)
),
anonymous_sessions AS (
    SELECT
        session_id,
        MIN(device_customer_id) AS device_min,
        MAX(device_customer_id) AS device_max,
        MIN(cookie_customer_id) AS cookie_min,
        MAX(cookie_customer_id) AS cookie_max,
        MAX(shared) AS any_shared
    FROM anonymous_links
    GROUP BY session_id
),
sessions AS (
    -- per session: login count, and the smallest / largest customer any identifier of a
    -- login-less session resolves to (NULL: none)
    SELECT
        l.session_id,
        CASE
            WHEN l.login_min IS NULL THEN 0
            WHEN l.login_min = l.login_max THEN 1
            ELSE m.n_login_customers
        END AS n_login_customers,
        l.login_min AS login_customer_id,
        a.any_shared,
        a.device_min IS NOT NULL AS device_resolves,
        CASE
            WHEN a.device_min IS NULL THEN a.cookie_min
            WHEN a.cookie_min IS NULL OR a.device_min <= a.cookie_min THEN a.device_min
            ELSE a.cookie_min
        END AS candidate_min,
        CASE
            WHEN a.device_max IS NULL THEN a.cookie_max
            WHEN a.cookie_max IS NULL OR a.device_max >= a.cookie_max THEN a.device_max
            ELSE a.cookie_max
        END AS candidate_max
    FROM session_logins AS l
    LEFT JOIN multi_login AS m ON l.session_id = m.session_id
    LEFT JOIN anonymous_sessions AS a ON l.session_id = a.session_id
)
SELECT
    session_id,
    CASE
        WHEN n_login_customers = 1 THEN login_customer_id
        WHEN n_login_customers = 0 AND any_shared = 0 AND candidate_min = candidate_max
            THEN candidate_min
    END AS customer_id,
    CASE
        WHEN n_login_customers = 1 THEN 'login'
        WHEN n_login_customers > 1 THEN 'multi_login'
        WHEN any_shared = 1 THEN 'shared_identifier'
        WHEN candidate_min < candidate_max THEN 'ambiguous'
        WHEN candidate_min = candidate_max AND device_resolves THEN 'device'
        WHEN candidate_min = candidate_max THEN 'cookie'
        ELSE 'unknown'
    END AS resolution,
    n_login_customers
FROM sessions
