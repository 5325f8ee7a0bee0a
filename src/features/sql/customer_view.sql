{#- Jinja template (src/features/sql_templates.py): every repeated block is a loop over the
    Python constants (windows, page_groups, products, holding_types, txn_codes) that also name
    the columns in data_dictionary(), in the same order. -#}
{% macro window_days(ts) %}
        CASE
{% for w in windows %}
            WHEN {{ ts }} >= $as_of - INTERVAL {{ w }} DAY THEN {{ w }}
{% endfor %}
        END
{%- endmacro %}
-- customer_view: one row per customer who joined before $as_of, every feature as of $as_of.
--
-- Point in time: only events strictly before $as_of (ts < $as_of); holdings opened before $as_of
-- and not closed before it; identity stitching (session_map) is itself as of $as_of.
-- Windows are [$as_of - N days, $as_of). "Days to" a due date count from the calendar date of
-- $as_of (0 = due that day); day-of-month dues clamp to the month's last day.
-- Needs the views customers, holdings, transactions (raw tables), session_keys
-- (session_keys.sql), session_map (session_map.sql) and fx_rates (fx_rates.sql). Column
-- meanings: data_dictionary() in src/features/customer_view.py; the block structure is
-- window x page group / txn code.
--
-- Performance: events are never stitched one by one. session_keys already holds per-session
-- counts split by window (window_days = {{ windows | join(' | ') }}, the smallest window an event falls in, so
-- "in the last N days" is window_days <= N); they are attributed through session_map and
-- summed. Transactions are first reduced to (customer, code, currency, product, window) cells, then
-- pivoted. Only conditional SUM/COUNT/MIN/MAX, so the text transpiles to Spark as is.
WITH view_customers AS (
    SELECT *
    FROM customers
    WHERE joined_at < $as_of
),
open_holdings AS (
    SELECT
        h.*,
        CAST($as_of AS DATE) AS as_of_date,
        CAST(CAST($as_of AS DATE) + INTERVAL 1 MONTH AS DATE) AS next_month_date
    FROM holdings AS h
    WHERE h.opened_at < $as_of AND (h.closed_at IS NULL OR h.closed_at >= $as_of)
),
holding_dues AS (
    -- a day-of-month due falls this month if not yet past, else next month (clamped to month end)
    SELECT
        *,
        MAKE_DATE(YEAR(as_of_date), MONTH(as_of_date), LEAST(card_payment_day, DAY(LAST_DAY(as_of_date))))
            AS card_due_this_month,
        MAKE_DATE(YEAR(next_month_date), MONTH(next_month_date), LEAST(card_payment_day, DAY(LAST_DAY(next_month_date))))
            AS card_due_next_month,
        MAKE_DATE(YEAR(as_of_date), MONTH(as_of_date), LEAST(loan_interest_day, DAY(LAST_DAY(as_of_date))))
            AS loan_interest_due_this_month,
        MAKE_DATE(YEAR(next_month_date), MONTH(next_month_date), LEAST(loan_interest_day, DAY(LAST_DAY(next_month_date))))
            AS loan_interest_due_next_month
    FROM open_holdings
),
holding_features AS (
    SELECT
        customer_id,
{% for t in holding_types %}
        COUNT(CASE WHEN holding_type = '{{ t }}' THEN 1 END) AS n_{{ t }},
{% endfor %}
{% for t in holding_types %}
        SUM(CASE WHEN holding_type = '{{ t }}' THEN balance END) AS balance_{{ t }},
{% endfor %}
        MIN(CASE WHEN holding_type = 'card' THEN DATE_DIFF('day', as_of_date,
            CASE WHEN card_due_this_month >= as_of_date THEN card_due_this_month
                ELSE card_due_next_month END)
        END) AS days_to_card_payment,
        MIN(CASE WHEN holding_type = 'savings' AND CAST(maturity_date AS DATE) >= as_of_date
            THEN DATE_DIFF('day', as_of_date, CAST(maturity_date AS DATE))
        END) AS days_to_savings_maturity,
        MIN(CASE WHEN holding_type = 'loan' THEN DATE_DIFF('day', as_of_date,
            CASE WHEN loan_interest_due_this_month >= as_of_date THEN loan_interest_due_this_month
                ELSE loan_interest_due_next_month END)
        END) AS days_to_loan_interest,
        MIN(CASE WHEN holding_type = 'auto_transfer'
            AND CAST(auto_transfer_end_date AS DATE) >= as_of_date
            THEN DATE_DIFF('day', as_of_date, CAST(auto_transfer_end_date AS DATE))
        END) AS days_to_auto_transfer_end,
        AVG(CASE WHEN holding_type = 'fund' THEN fund_return_pct END) AS fund_return_pct_avg
    FROM holding_dues
    GROUP BY customer_id
),
stitched_sessions AS (
    -- session_keys rows attributed: an event with its own login keeps that customer, an
    -- anonymous one takes its session's (session_map); a multi-login session counts for each
    -- of its customers, unresolved events for nobody. Read twice below (DuckDB materializes it).
    SELECT
        COALESCE(k.customer_id, s.customer_id) AS customer_id,
        k.session_id,
        k.window_days,
        k.last_ts,
        k.app_events,
        k.page_views,
        k.dwell_seconds,
{% for group in page_groups %}
        k.pv_{{ group }},
{% endfor %}
        k.logins,
{% for product in products %}
        k.lv_{{ product }}{{ ',' if not loop.last }}
{% endfor %}
    FROM session_keys AS k
    JOIN session_map AS s ON k.session_id = s.session_id
    WHERE COALESCE(k.customer_id, s.customer_id) IS NOT NULL
),
customer_windows AS (
    -- additive counts need no session grain: sum them per (customer, window) right away
    SELECT
        customer_id,
        window_days,
        MAX(last_ts) AS last_ts,
        SUM(page_views) AS page_views,
        SUM(dwell_seconds) AS dwell_seconds,
{% for group in page_groups %}
        SUM(pv_{{ group }}) AS pv_{{ group }},
{% endfor %}
        SUM(logins) AS logins,
{% for product in products %}
        SUM(lv_{{ product }}) AS lv_{{ product }}{{ ',' if not loop.last }}
{% endfor %}
    FROM stitched_sessions
    GROUP BY customer_id, window_days
),
click_sessions AS (
    -- one row per (customer, session): the smallest window it has an event in, and an app event in
    SELECT
        customer_id,
        session_id,
        MIN(window_days) AS window_days,
        MIN(CASE WHEN app_events > 0 THEN window_days END) AS app_window_days
    FROM stitched_sessions
    GROUP BY customer_id, session_id
),
session_counts AS (
    SELECT
        customer_id,
{% for w in windows %}
        COUNT(CASE WHEN window_days <= {{ w }} THEN 1 END) AS sessions_{{ w }}d,
        COUNT(CASE WHEN app_window_days <= {{ w }} THEN 1 END) AS app_sessions_{{ w }}d{{ ',' if not loop.last }}
{% endfor %}
    FROM click_sessions
    GROUP BY customer_id
),
activity AS (
    SELECT
        w.customer_id,
{% for w in windows %}
        MAX(n.sessions_{{ w }}d) AS sessions_{{ w }}d,
        MAX(n.app_sessions_{{ w }}d) AS app_sessions_{{ w }}d,
        SUM(CASE WHEN w.window_days <= {{ w }} THEN w.page_views END) AS page_views_{{ w }}d,
        SUM(CASE WHEN w.window_days <= {{ w }} THEN w.dwell_seconds END) AS dwell_seconds_{{ w }}d,
{% for group in page_groups %}
        SUM(CASE WHEN w.window_days <= {{ w }} THEN w.pv_{{ group }} END) AS pv_{{ group }}_{{ w }}d,
{% endfor %}
        SUM(CASE WHEN w.window_days <= {{ w }} THEN w.logins END) AS logins_{{ w }}d,
{% endfor %}
{% for product in products %}
{% for w in windows %}
        SUM(CASE WHEN w.window_days <= {{ w }} THEN w.lv_{{ product }} END) AS long_views_{{ product }}_{{ w }}d,
{% endfor %}
{% endfor %}
        MAX(w.last_ts) AS last_session_ts
    FROM customer_windows AS w
    LEFT JOIN session_counts AS n ON w.customer_id = n.customer_id
    GROUP BY w.customer_id
),
txn_cells AS (
    -- transactions before $as_of reduced to (customer, code, currency, product, window) cells
    SELECT
        t.customer_id,
        t.code,
        t.currency,
        t.product,
{{ window_days('t.ts') }} AS window_days,
        COUNT(*) AS n,
        SUM(t.amount * r.krw_rate) AS amount_krw,
        MAX(t.ts) AS last_ts
    FROM transactions AS t
    LEFT JOIN fx_rates AS r ON t.currency = r.currency
    WHERE t.ts < $as_of
    GROUP BY
        t.customer_id,
        t.code,
        t.currency,
        t.product,
{{ window_days('t.ts') }}
),
txn_features AS (
    SELECT
        customer_id,
{% for w in windows %}
{% for code in txn_codes %}
        SUM(CASE WHEN window_days <= {{ w }} AND code = '{{ code }}' THEN n END) AS txn_{{ code | lower }}_cnt_{{ w }}d,
        SUM(CASE WHEN window_days <= {{ w }} AND code = '{{ code }}' THEN amount_krw END) AS txn_{{ code | lower }}_amt_krw_{{ w }}d,
{% endfor %}
        COUNT(DISTINCT CASE WHEN window_days <= {{ w }} THEN currency END) AS n_currencies_{{ w }}d,
{% endfor %}
{% for product in products %}
{% for w in windows %}
        SUM(CASE WHEN window_days <= {{ w }} AND code = 'PRODUCT_SIGNUP' AND product = '{{ product }}' THEN n END) AS signups_{{ product }}_{{ w }}d,
{% endfor %}
{% endfor %}
        MAX(last_ts) AS last_txn_ts
    FROM txn_cells
    GROUP BY customer_id
)
SELECT
    c.customer_id,
    CAST(YEAR($as_of) - c.birth_year AS BIGINT) AS age,
    c.gender,
    c.life_stage,
    c.income_band,
    c.region,
    CAST(DATE_DIFF('day', CAST(c.joined_at AS DATE), CAST($as_of AS DATE)) AS BIGINT) AS tenure_days,
    c.consent_push,
    c.consent_sms,
    c.consent_messenger,
    c.consent_email,
    COALESCE(c.accident_reported_at < $as_of, FALSE) AS is_accident_reported,
    COALESCE(c.closed_at < $as_of, FALSE) AS is_closed,
{% for t in holding_types %}
    CAST(COALESCE(h.n_{{ t }}, 0) AS BIGINT) AS n_{{ t }},
{% endfor %}
{% for t in holding_types %}
    CAST(COALESCE(h.balance_{{ t }}, 0) AS DOUBLE) AS balance_{{ t }},
{% endfor %}
    CAST(h.days_to_card_payment AS BIGINT) AS days_to_card_payment,
    CAST(h.days_to_savings_maturity AS BIGINT) AS days_to_savings_maturity,
    CAST(h.days_to_loan_interest AS BIGINT) AS days_to_loan_interest,
    CAST(h.days_to_auto_transfer_end AS BIGINT) AS days_to_auto_transfer_end,
    CAST(h.fund_return_pct_avg AS DOUBLE) AS fund_return_pct_avg,
{# activity: the order of data_dictionary(), each feature over all windows #}
{% for w in windows %}
    CAST(COALESCE(a.sessions_{{ w }}d, 0) AS BIGINT) AS sessions_{{ w }}d,
{% endfor %}
{% for w in windows %}
    CAST(a.app_sessions_{{ w }}d AS DOUBLE) / NULLIF(a.sessions_{{ w }}d, 0) AS app_share_{{ w }}d,
{% endfor %}
{% for w in windows %}
    CAST(COALESCE(a.page_views_{{ w }}d, 0) AS BIGINT) AS page_views_{{ w }}d,
{% endfor %}
{% for w in windows %}
    CAST(COALESCE(a.dwell_seconds_{{ w }}d, 0) AS DOUBLE) AS dwell_seconds_{{ w }}d,
{% endfor %}
{% for group in page_groups %}
{% for w in windows %}
    CAST(COALESCE(a.pv_{{ group }}_{{ w }}d, 0) AS BIGINT) AS pv_{{ group }}_{{ w }}d,
{% endfor %}
{% endfor %}
{% for w in windows %}
    CAST(COALESCE(a.logins_{{ w }}d, 0) AS BIGINT) AS logins_{{ w }}d,
{% endfor %}
    CAST(DATE_DIFF('day', CAST(a.last_session_ts AS DATE), CAST($as_of AS DATE)) AS BIGINT) AS days_since_last_session,
{% for code in txn_codes %}
{% for w in windows %}
    CAST(COALESCE(x.txn_{{ code | lower }}_cnt_{{ w }}d, 0) AS BIGINT) AS txn_{{ code | lower }}_cnt_{{ w }}d,
{% endfor %}
{% for w in windows %}
    CAST(COALESCE(x.txn_{{ code | lower }}_amt_krw_{{ w }}d, 0) AS DOUBLE) AS txn_{{ code | lower }}_amt_krw_{{ w }}d,
{% endfor %}
{% endfor %}
{% for w in windows %}
    CAST(COALESCE(x.n_currencies_{{ w }}d, 0) AS BIGINT) AS n_currencies_{{ w }}d,
{% endfor %}
    CAST(DATE_DIFF('day', CAST(x.last_txn_ts AS DATE), CAST($as_of AS DATE)) AS BIGINT) AS days_since_last_txn,
{% for product in products %}
{% for w in windows %}
    CAST(COALESCE(a.long_views_{{ product }}_{{ w }}d, 0) AS BIGINT) AS long_views_{{ product }}_{{ w }}d,
{% endfor %}
{% endfor %}
{% for product in products %}
{% set last_product = loop.last %}
{% for w in windows %}
    CAST(COALESCE(x.signups_{{ product }}_{{ w }}d, 0) AS BIGINT) AS signups_{{ product }}_{{ w }}d{{ ',' if not (last_product and loop.last) }}
{% endfor %}
{% endfor %}
FROM view_customers AS c
LEFT JOIN holding_features AS h ON c.customer_id = h.customer_id
LEFT JOIN activity AS a ON c.customer_id = a.customer_id
LEFT JOIN txn_features AS x ON c.customer_id = x.customer_id
ORDER BY c.customer_id
