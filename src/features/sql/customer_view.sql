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
-- counts split by window (window_days = 7 | 30 | 90, the smallest window an event falls in, so
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
        COUNT(CASE WHEN holding_type = 'account' THEN 1 END) AS n_account,
        COUNT(CASE WHEN holding_type = 'card' THEN 1 END) AS n_card,
        COUNT(CASE WHEN holding_type = 'loan' THEN 1 END) AS n_loan,
        COUNT(CASE WHEN holding_type = 'savings' THEN 1 END) AS n_savings,
        COUNT(CASE WHEN holding_type = 'fund' THEN 1 END) AS n_fund,
        COUNT(CASE WHEN holding_type = 'auto_transfer' THEN 1 END) AS n_auto_transfer,
        COUNT(CASE WHEN holding_type = 'pension' THEN 1 END) AS n_pension,
        SUM(CASE WHEN holding_type = 'account' THEN balance END) AS balance_account,
        SUM(CASE WHEN holding_type = 'card' THEN balance END) AS balance_card,
        SUM(CASE WHEN holding_type = 'loan' THEN balance END) AS balance_loan,
        SUM(CASE WHEN holding_type = 'savings' THEN balance END) AS balance_savings,
        SUM(CASE WHEN holding_type = 'fund' THEN balance END) AS balance_fund,
        SUM(CASE WHEN holding_type = 'auto_transfer' THEN balance END) AS balance_auto_transfer,
        SUM(CASE WHEN holding_type = 'pension' THEN balance END) AS balance_pension,
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
        k.pv_loan,
        k.pv_fx,
        k.pv_fund,
        k.pv_savings,
        k.pv_card,
        k.pv_signup,
        k.pv_pension,
        k.pv_error,
        k.logins,
        k.lv_loan,
        k.lv_savings,
        k.lv_fund,
        k.lv_card,
        k.lv_fx,
        k.lv_pension
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
        SUM(pv_loan) AS pv_loan,
        SUM(pv_fx) AS pv_fx,
        SUM(pv_fund) AS pv_fund,
        SUM(pv_savings) AS pv_savings,
        SUM(pv_card) AS pv_card,
        SUM(pv_signup) AS pv_signup,
        SUM(pv_pension) AS pv_pension,
        SUM(pv_error) AS pv_error,
        SUM(logins) AS logins,
        SUM(lv_loan) AS lv_loan,
        SUM(lv_savings) AS lv_savings,
        SUM(lv_fund) AS lv_fund,
        SUM(lv_card) AS lv_card,
        SUM(lv_fx) AS lv_fx,
        SUM(lv_pension) AS lv_pension
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
        COUNT(CASE WHEN window_days <= 7 THEN 1 END) AS sessions_7d,
        COUNT(CASE WHEN app_window_days <= 7 THEN 1 END) AS app_sessions_7d,
        COUNT(CASE WHEN window_days <= 30 THEN 1 END) AS sessions_30d,
        COUNT(CASE WHEN app_window_days <= 30 THEN 1 END) AS app_sessions_30d,
        COUNT(CASE WHEN window_days <= 90 THEN 1 END) AS sessions_90d,
        COUNT(CASE WHEN app_window_days <= 90 THEN 1 END) AS app_sessions_90d
    FROM click_sessions
    GROUP BY customer_id
),
activity AS (
    SELECT
        w.customer_id,
        MAX(n.sessions_7d) AS sessions_7d,
        MAX(n.app_sessions_7d) AS app_sessions_7d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.page_views END) AS page_views_7d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.dwell_seconds END) AS dwell_seconds_7d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.pv_loan END) AS pv_loan_7d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.pv_fx END) AS pv_fx_7d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.pv_fund END) AS pv_fund_7d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.pv_savings END) AS pv_savings_7d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.pv_card END) AS pv_card_7d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.pv_signup END) AS pv_signup_7d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.pv_pension END) AS pv_pension_7d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.pv_error END) AS pv_error_7d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.logins END) AS logins_7d,
        MAX(n.sessions_30d) AS sessions_30d,
        MAX(n.app_sessions_30d) AS app_sessions_30d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.page_views END) AS page_views_30d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.dwell_seconds END) AS dwell_seconds_30d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.pv_loan END) AS pv_loan_30d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.pv_fx END) AS pv_fx_30d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.pv_fund END) AS pv_fund_30d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.pv_savings END) AS pv_savings_30d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.pv_card END) AS pv_card_30d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.pv_signup END) AS pv_signup_30d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.pv_pension END) AS pv_pension_30d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.pv_error END) AS pv_error_30d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.logins END) AS logins_30d,
        MAX(n.sessions_90d) AS sessions_90d,
        MAX(n.app_sessions_90d) AS app_sessions_90d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.page_views END) AS page_views_90d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.dwell_seconds END) AS dwell_seconds_90d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.pv_loan END) AS pv_loan_90d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.pv_fx END) AS pv_fx_90d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.pv_fund END) AS pv_fund_90d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.pv_savings END) AS pv_savings_90d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.pv_card END) AS pv_card_90d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.pv_signup END) AS pv_signup_90d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.pv_pension END) AS pv_pension_90d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.pv_error END) AS pv_error_90d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.logins END) AS logins_90d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.lv_loan END) AS long_views_loan_7d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.lv_loan END) AS long_views_loan_30d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.lv_loan END) AS long_views_loan_90d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.lv_savings END) AS long_views_savings_7d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.lv_savings END) AS long_views_savings_30d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.lv_savings END) AS long_views_savings_90d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.lv_fund END) AS long_views_fund_7d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.lv_fund END) AS long_views_fund_30d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.lv_fund END) AS long_views_fund_90d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.lv_card END) AS long_views_card_7d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.lv_card END) AS long_views_card_30d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.lv_card END) AS long_views_card_90d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.lv_fx END) AS long_views_fx_7d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.lv_fx END) AS long_views_fx_30d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.lv_fx END) AS long_views_fx_90d,
        SUM(CASE WHEN w.window_days <= 7 THEN w.lv_pension END) AS long_views_pension_7d,
        SUM(CASE WHEN w.window_days <= 30 THEN w.lv_pension END) AS long_views_pension_30d,
        SUM(CASE WHEN w.window_days <= 90 THEN w.lv_pension END) AS long_views_pension_90d,
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
        CASE
            WHEN t.ts >= $as_of - INTERVAL 7 DAY THEN 7
            WHEN t.ts >= $as_of - INTERVAL 30 DAY THEN 30
            WHEN t.ts >= $as_of - INTERVAL 90 DAY THEN 90
        END AS window_days,
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
        CASE
            WHEN t.ts >= $as_of - INTERVAL 7 DAY THEN 7
            WHEN t.ts >= $as_of - INTERVAL 30 DAY THEN 30
            WHEN t.ts >= $as_of - INTERVAL 90 DAY THEN 90
        END
),
txn_features AS (
    SELECT
        customer_id,
        SUM(CASE WHEN window_days <= 7 AND code = 'TRANSFER' THEN n END) AS txn_transfer_cnt_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'TRANSFER' THEN amount_krw END) AS txn_transfer_amt_krw_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'CARD_PAYMENT' THEN n END) AS txn_card_payment_cnt_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'CARD_PAYMENT' THEN amount_krw END) AS txn_card_payment_amt_krw_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'FX_REMIT' THEN n END) AS txn_fx_remit_cnt_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'FX_REMIT' THEN amount_krw END) AS txn_fx_remit_amt_krw_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'LOAN_LIMIT_INQUIRY' THEN n END) AS txn_loan_limit_inquiry_cnt_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'LOAN_LIMIT_INQUIRY' THEN amount_krw END) AS txn_loan_limit_inquiry_amt_krw_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'LOAN_APPLICATION' THEN n END) AS txn_loan_application_cnt_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'LOAN_APPLICATION' THEN amount_krw END) AS txn_loan_application_amt_krw_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'PRODUCT_SIGNUP' THEN n END) AS txn_product_signup_cnt_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'PRODUCT_SIGNUP' THEN amount_krw END) AS txn_product_signup_amt_krw_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'DEPOSIT' THEN n END) AS txn_deposit_cnt_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'DEPOSIT' THEN amount_krw END) AS txn_deposit_amt_krw_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'WITHDRAWAL' THEN n END) AS txn_withdrawal_cnt_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'WITHDRAWAL' THEN amount_krw END) AS txn_withdrawal_amt_krw_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'BALANCE_INQUIRY' THEN n END) AS txn_balance_inquiry_cnt_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'BALANCE_INQUIRY' THEN amount_krw END) AS txn_balance_inquiry_amt_krw_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'MATURITY_PAYOUT' THEN n END) AS txn_maturity_payout_cnt_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'MATURITY_PAYOUT' THEN amount_krw END) AS txn_maturity_payout_amt_krw_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'AUTO_TRANSFER' THEN n END) AS txn_auto_transfer_cnt_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'AUTO_TRANSFER' THEN amount_krw END) AS txn_auto_transfer_amt_krw_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'LOAN_INTEREST' THEN n END) AS txn_loan_interest_cnt_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'LOAN_INTEREST' THEN amount_krw END) AS txn_loan_interest_amt_krw_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'FUND_BUY' THEN n END) AS txn_fund_buy_cnt_7d,
        SUM(CASE WHEN window_days <= 7 AND code = 'FUND_BUY' THEN amount_krw END) AS txn_fund_buy_amt_krw_7d,
        COUNT(DISTINCT CASE WHEN window_days <= 7 THEN currency END) AS n_currencies_7d,
        SUM(CASE WHEN window_days <= 30 AND code = 'TRANSFER' THEN n END) AS txn_transfer_cnt_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'TRANSFER' THEN amount_krw END) AS txn_transfer_amt_krw_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'CARD_PAYMENT' THEN n END) AS txn_card_payment_cnt_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'CARD_PAYMENT' THEN amount_krw END) AS txn_card_payment_amt_krw_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'FX_REMIT' THEN n END) AS txn_fx_remit_cnt_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'FX_REMIT' THEN amount_krw END) AS txn_fx_remit_amt_krw_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'LOAN_LIMIT_INQUIRY' THEN n END) AS txn_loan_limit_inquiry_cnt_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'LOAN_LIMIT_INQUIRY' THEN amount_krw END) AS txn_loan_limit_inquiry_amt_krw_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'LOAN_APPLICATION' THEN n END) AS txn_loan_application_cnt_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'LOAN_APPLICATION' THEN amount_krw END) AS txn_loan_application_amt_krw_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'PRODUCT_SIGNUP' THEN n END) AS txn_product_signup_cnt_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'PRODUCT_SIGNUP' THEN amount_krw END) AS txn_product_signup_amt_krw_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'DEPOSIT' THEN n END) AS txn_deposit_cnt_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'DEPOSIT' THEN amount_krw END) AS txn_deposit_amt_krw_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'WITHDRAWAL' THEN n END) AS txn_withdrawal_cnt_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'WITHDRAWAL' THEN amount_krw END) AS txn_withdrawal_amt_krw_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'BALANCE_INQUIRY' THEN n END) AS txn_balance_inquiry_cnt_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'BALANCE_INQUIRY' THEN amount_krw END) AS txn_balance_inquiry_amt_krw_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'MATURITY_PAYOUT' THEN n END) AS txn_maturity_payout_cnt_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'MATURITY_PAYOUT' THEN amount_krw END) AS txn_maturity_payout_amt_krw_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'AUTO_TRANSFER' THEN n END) AS txn_auto_transfer_cnt_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'AUTO_TRANSFER' THEN amount_krw END) AS txn_auto_transfer_amt_krw_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'LOAN_INTEREST' THEN n END) AS txn_loan_interest_cnt_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'LOAN_INTEREST' THEN amount_krw END) AS txn_loan_interest_amt_krw_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'FUND_BUY' THEN n END) AS txn_fund_buy_cnt_30d,
        SUM(CASE WHEN window_days <= 30 AND code = 'FUND_BUY' THEN amount_krw END) AS txn_fund_buy_amt_krw_30d,
        COUNT(DISTINCT CASE WHEN window_days <= 30 THEN currency END) AS n_currencies_30d,
        SUM(CASE WHEN window_days <= 90 AND code = 'TRANSFER' THEN n END) AS txn_transfer_cnt_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'TRANSFER' THEN amount_krw END) AS txn_transfer_amt_krw_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'CARD_PAYMENT' THEN n END) AS txn_card_payment_cnt_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'CARD_PAYMENT' THEN amount_krw END) AS txn_card_payment_amt_krw_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'FX_REMIT' THEN n END) AS txn_fx_remit_cnt_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'FX_REMIT' THEN amount_krw END) AS txn_fx_remit_amt_krw_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'LOAN_LIMIT_INQUIRY' THEN n END) AS txn_loan_limit_inquiry_cnt_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'LOAN_LIMIT_INQUIRY' THEN amount_krw END) AS txn_loan_limit_inquiry_amt_krw_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'LOAN_APPLICATION' THEN n END) AS txn_loan_application_cnt_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'LOAN_APPLICATION' THEN amount_krw END) AS txn_loan_application_amt_krw_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'PRODUCT_SIGNUP' THEN n END) AS txn_product_signup_cnt_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'PRODUCT_SIGNUP' THEN amount_krw END) AS txn_product_signup_amt_krw_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'DEPOSIT' THEN n END) AS txn_deposit_cnt_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'DEPOSIT' THEN amount_krw END) AS txn_deposit_amt_krw_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'WITHDRAWAL' THEN n END) AS txn_withdrawal_cnt_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'WITHDRAWAL' THEN amount_krw END) AS txn_withdrawal_amt_krw_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'BALANCE_INQUIRY' THEN n END) AS txn_balance_inquiry_cnt_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'BALANCE_INQUIRY' THEN amount_krw END) AS txn_balance_inquiry_amt_krw_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'MATURITY_PAYOUT' THEN n END) AS txn_maturity_payout_cnt_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'MATURITY_PAYOUT' THEN amount_krw END) AS txn_maturity_payout_amt_krw_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'AUTO_TRANSFER' THEN n END) AS txn_auto_transfer_cnt_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'AUTO_TRANSFER' THEN amount_krw END) AS txn_auto_transfer_amt_krw_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'LOAN_INTEREST' THEN n END) AS txn_loan_interest_cnt_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'LOAN_INTEREST' THEN amount_krw END) AS txn_loan_interest_amt_krw_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'FUND_BUY' THEN n END) AS txn_fund_buy_cnt_90d,
        SUM(CASE WHEN window_days <= 90 AND code = 'FUND_BUY' THEN amount_krw END) AS txn_fund_buy_amt_krw_90d,
        COUNT(DISTINCT CASE WHEN window_days <= 90 THEN currency END) AS n_currencies_90d,
        SUM(CASE WHEN window_days <= 7 AND code = 'PRODUCT_SIGNUP' AND product = 'loan' THEN n END) AS signups_loan_7d,
        SUM(CASE WHEN window_days <= 30 AND code = 'PRODUCT_SIGNUP' AND product = 'loan' THEN n END) AS signups_loan_30d,
        SUM(CASE WHEN window_days <= 90 AND code = 'PRODUCT_SIGNUP' AND product = 'loan' THEN n END) AS signups_loan_90d,
        SUM(CASE WHEN window_days <= 7 AND code = 'PRODUCT_SIGNUP' AND product = 'savings' THEN n END) AS signups_savings_7d,
        SUM(CASE WHEN window_days <= 30 AND code = 'PRODUCT_SIGNUP' AND product = 'savings' THEN n END) AS signups_savings_30d,
        SUM(CASE WHEN window_days <= 90 AND code = 'PRODUCT_SIGNUP' AND product = 'savings' THEN n END) AS signups_savings_90d,
        SUM(CASE WHEN window_days <= 7 AND code = 'PRODUCT_SIGNUP' AND product = 'fund' THEN n END) AS signups_fund_7d,
        SUM(CASE WHEN window_days <= 30 AND code = 'PRODUCT_SIGNUP' AND product = 'fund' THEN n END) AS signups_fund_30d,
        SUM(CASE WHEN window_days <= 90 AND code = 'PRODUCT_SIGNUP' AND product = 'fund' THEN n END) AS signups_fund_90d,
        SUM(CASE WHEN window_days <= 7 AND code = 'PRODUCT_SIGNUP' AND product = 'card' THEN n END) AS signups_card_7d,
        SUM(CASE WHEN window_days <= 30 AND code = 'PRODUCT_SIGNUP' AND product = 'card' THEN n END) AS signups_card_30d,
        SUM(CASE WHEN window_days <= 90 AND code = 'PRODUCT_SIGNUP' AND product = 'card' THEN n END) AS signups_card_90d,
        SUM(CASE WHEN window_days <= 7 AND code = 'PRODUCT_SIGNUP' AND product = 'fx' THEN n END) AS signups_fx_7d,
        SUM(CASE WHEN window_days <= 30 AND code = 'PRODUCT_SIGNUP' AND product = 'fx' THEN n END) AS signups_fx_30d,
        SUM(CASE WHEN window_days <= 90 AND code = 'PRODUCT_SIGNUP' AND product = 'fx' THEN n END) AS signups_fx_90d,
        SUM(CASE WHEN window_days <= 7 AND code = 'PRODUCT_SIGNUP' AND product = 'pension' THEN n END) AS signups_pension_7d,
        SUM(CASE WHEN window_days <= 30 AND code = 'PRODUCT_SIGNUP' AND product = 'pension' THEN n END) AS signups_pension_30d,
        SUM(CASE WHEN window_days <= 90 AND code = 'PRODUCT_SIGNUP' AND product = 'pension' THEN n END) AS signups_pension_90d,
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
    CAST(COALESCE(h.n_account, 0) AS BIGINT) AS n_account,
    CAST(COALESCE(h.n_card, 0) AS BIGINT) AS n_card,
    CAST(COALESCE(h.n_loan, 0) AS BIGINT) AS n_loan,
    CAST(COALESCE(h.n_savings, 0) AS BIGINT) AS n_savings,
    CAST(COALESCE(h.n_fund, 0) AS BIGINT) AS n_fund,
    CAST(COALESCE(h.n_auto_transfer, 0) AS BIGINT) AS n_auto_transfer,
    CAST(COALESCE(h.n_pension, 0) AS BIGINT) AS n_pension,
    CAST(COALESCE(h.balance_account, 0) AS DOUBLE) AS balance_account,
    CAST(COALESCE(h.balance_card, 0) AS DOUBLE) AS balance_card,
    CAST(COALESCE(h.balance_loan, 0) AS DOUBLE) AS balance_loan,
    CAST(COALESCE(h.balance_savings, 0) AS DOUBLE) AS balance_savings,
    CAST(COALESCE(h.balance_fund, 0) AS DOUBLE) AS balance_fund,
    CAST(COALESCE(h.balance_auto_transfer, 0) AS DOUBLE) AS balance_auto_transfer,
    CAST(COALESCE(h.balance_pension, 0) AS DOUBLE) AS balance_pension,
    CAST(h.days_to_card_payment AS BIGINT) AS days_to_card_payment,
    CAST(h.days_to_savings_maturity AS BIGINT) AS days_to_savings_maturity,
    CAST(h.days_to_loan_interest AS BIGINT) AS days_to_loan_interest,
    CAST(h.days_to_auto_transfer_end AS BIGINT) AS days_to_auto_transfer_end,
    CAST(h.fund_return_pct_avg AS DOUBLE) AS fund_return_pct_avg,
    CAST(COALESCE(a.sessions_7d, 0) AS BIGINT) AS sessions_7d,
    CAST(COALESCE(a.sessions_30d, 0) AS BIGINT) AS sessions_30d,
    CAST(COALESCE(a.sessions_90d, 0) AS BIGINT) AS sessions_90d,
    CAST(a.app_sessions_7d AS DOUBLE) / NULLIF(a.sessions_7d, 0) AS app_share_7d,
    CAST(a.app_sessions_30d AS DOUBLE) / NULLIF(a.sessions_30d, 0) AS app_share_30d,
    CAST(a.app_sessions_90d AS DOUBLE) / NULLIF(a.sessions_90d, 0) AS app_share_90d,
    CAST(COALESCE(a.page_views_7d, 0) AS BIGINT) AS page_views_7d,
    CAST(COALESCE(a.page_views_30d, 0) AS BIGINT) AS page_views_30d,
    CAST(COALESCE(a.page_views_90d, 0) AS BIGINT) AS page_views_90d,
    CAST(COALESCE(a.dwell_seconds_7d, 0) AS DOUBLE) AS dwell_seconds_7d,
    CAST(COALESCE(a.dwell_seconds_30d, 0) AS DOUBLE) AS dwell_seconds_30d,
    CAST(COALESCE(a.dwell_seconds_90d, 0) AS DOUBLE) AS dwell_seconds_90d,
    CAST(COALESCE(a.pv_loan_7d, 0) AS BIGINT) AS pv_loan_7d,
    CAST(COALESCE(a.pv_loan_30d, 0) AS BIGINT) AS pv_loan_30d,
    CAST(COALESCE(a.pv_loan_90d, 0) AS BIGINT) AS pv_loan_90d,
    CAST(COALESCE(a.pv_fx_7d, 0) AS BIGINT) AS pv_fx_7d,
    CAST(COALESCE(a.pv_fx_30d, 0) AS BIGINT) AS pv_fx_30d,
    CAST(COALESCE(a.pv_fx_90d, 0) AS BIGINT) AS pv_fx_90d,
    CAST(COALESCE(a.pv_fund_7d, 0) AS BIGINT) AS pv_fund_7d,
    CAST(COALESCE(a.pv_fund_30d, 0) AS BIGINT) AS pv_fund_30d,
    CAST(COALESCE(a.pv_fund_90d, 0) AS BIGINT) AS pv_fund_90d,
    CAST(COALESCE(a.pv_savings_7d, 0) AS BIGINT) AS pv_savings_7d,
    CAST(COALESCE(a.pv_savings_30d, 0) AS BIGINT) AS pv_savings_30d,
    CAST(COALESCE(a.pv_savings_90d, 0) AS BIGINT) AS pv_savings_90d,
    CAST(COALESCE(a.pv_card_7d, 0) AS BIGINT) AS pv_card_7d,
    CAST(COALESCE(a.pv_card_30d, 0) AS BIGINT) AS pv_card_30d,
    CAST(COALESCE(a.pv_card_90d, 0) AS BIGINT) AS pv_card_90d,
    CAST(COALESCE(a.pv_signup_7d, 0) AS BIGINT) AS pv_signup_7d,
    CAST(COALESCE(a.pv_signup_30d, 0) AS BIGINT) AS pv_signup_30d,
    CAST(COALESCE(a.pv_signup_90d, 0) AS BIGINT) AS pv_signup_90d,
    CAST(COALESCE(a.pv_pension_7d, 0) AS BIGINT) AS pv_pension_7d,
    CAST(COALESCE(a.pv_pension_30d, 0) AS BIGINT) AS pv_pension_30d,
    CAST(COALESCE(a.pv_pension_90d, 0) AS BIGINT) AS pv_pension_90d,
    CAST(COALESCE(a.pv_error_7d, 0) AS BIGINT) AS pv_error_7d,
    CAST(COALESCE(a.pv_error_30d, 0) AS BIGINT) AS pv_error_30d,
    CAST(COALESCE(a.pv_error_90d, 0) AS BIGINT) AS pv_error_90d,
    CAST(COALESCE(a.logins_7d, 0) AS BIGINT) AS logins_7d,
    CAST(COALESCE(a.logins_30d, 0) AS BIGINT) AS logins_30d,
    CAST(COALESCE(a.logins_90d, 0) AS BIGINT) AS logins_90d,
    CAST(DATE_DIFF('day', CAST(a.last_session_ts AS DATE), CAST($as_of AS DATE)) AS BIGINT) AS days_since_last_session,
    CAST(COALESCE(x.txn_transfer_cnt_7d, 0) AS BIGINT) AS txn_transfer_cnt_7d,
    CAST(COALESCE(x.txn_transfer_cnt_30d, 0) AS BIGINT) AS txn_transfer_cnt_30d,
    CAST(COALESCE(x.txn_transfer_cnt_90d, 0) AS BIGINT) AS txn_transfer_cnt_90d,
    CAST(COALESCE(x.txn_transfer_amt_krw_7d, 0) AS DOUBLE) AS txn_transfer_amt_krw_7d,
    CAST(COALESCE(x.txn_transfer_amt_krw_30d, 0) AS DOUBLE) AS txn_transfer_amt_krw_30d,
    CAST(COALESCE(x.txn_transfer_amt_krw_90d, 0) AS DOUBLE) AS txn_transfer_amt_krw_90d,
    CAST(COALESCE(x.txn_card_payment_cnt_7d, 0) AS BIGINT) AS txn_card_payment_cnt_7d,
    CAST(COALESCE(x.txn_card_payment_cnt_30d, 0) AS BIGINT) AS txn_card_payment_cnt_30d,
    CAST(COALESCE(x.txn_card_payment_cnt_90d, 0) AS BIGINT) AS txn_card_payment_cnt_90d,
    CAST(COALESCE(x.txn_card_payment_amt_krw_7d, 0) AS DOUBLE) AS txn_card_payment_amt_krw_7d,
    CAST(COALESCE(x.txn_card_payment_amt_krw_30d, 0) AS DOUBLE) AS txn_card_payment_amt_krw_30d,
    CAST(COALESCE(x.txn_card_payment_amt_krw_90d, 0) AS DOUBLE) AS txn_card_payment_amt_krw_90d,
    CAST(COALESCE(x.txn_fx_remit_cnt_7d, 0) AS BIGINT) AS txn_fx_remit_cnt_7d,
    CAST(COALESCE(x.txn_fx_remit_cnt_30d, 0) AS BIGINT) AS txn_fx_remit_cnt_30d,
    CAST(COALESCE(x.txn_fx_remit_cnt_90d, 0) AS BIGINT) AS txn_fx_remit_cnt_90d,
    CAST(COALESCE(x.txn_fx_remit_amt_krw_7d, 0) AS DOUBLE) AS txn_fx_remit_amt_krw_7d,
    CAST(COALESCE(x.txn_fx_remit_amt_krw_30d, 0) AS DOUBLE) AS txn_fx_remit_amt_krw_30d,
    CAST(COALESCE(x.txn_fx_remit_amt_krw_90d, 0) AS DOUBLE) AS txn_fx_remit_amt_krw_90d,
    CAST(COALESCE(x.txn_loan_limit_inquiry_cnt_7d, 0) AS BIGINT) AS txn_loan_limit_inquiry_cnt_7d,
    CAST(COALESCE(x.txn_loan_limit_inquiry_cnt_30d, 0) AS BIGINT) AS txn_loan_limit_inquiry_cnt_30d,
    CAST(COALESCE(x.txn_loan_limit_inquiry_cnt_90d, 0) AS BIGINT) AS txn_loan_limit_inquiry_cnt_90d,
    CAST(COALESCE(x.txn_loan_limit_inquiry_amt_krw_7d, 0) AS DOUBLE) AS txn_loan_limit_inquiry_amt_krw_7d,
    CAST(COALESCE(x.txn_loan_limit_inquiry_amt_krw_30d, 0) AS DOUBLE) AS txn_loan_limit_inquiry_amt_krw_30d,
    CAST(COALESCE(x.txn_loan_limit_inquiry_amt_krw_90d, 0) AS DOUBLE) AS txn_loan_limit_inquiry_amt_krw_90d,
    CAST(COALESCE(x.txn_loan_application_cnt_7d, 0) AS BIGINT) AS txn_loan_application_cnt_7d,
    CAST(COALESCE(x.txn_loan_application_cnt_30d, 0) AS BIGINT) AS txn_loan_application_cnt_30d,
    CAST(COALESCE(x.txn_loan_application_cnt_90d, 0) AS BIGINT) AS txn_loan_application_cnt_90d,
    CAST(COALESCE(x.txn_loan_application_amt_krw_7d, 0) AS DOUBLE) AS txn_loan_application_amt_krw_7d,
    CAST(COALESCE(x.txn_loan_application_amt_krw_30d, 0) AS DOUBLE) AS txn_loan_application_amt_krw_30d,
    CAST(COALESCE(x.txn_loan_application_amt_krw_90d, 0) AS DOUBLE) AS txn_loan_application_amt_krw_90d,
    CAST(COALESCE(x.txn_product_signup_cnt_7d, 0) AS BIGINT) AS txn_product_signup_cnt_7d,
    CAST(COALESCE(x.txn_product_signup_cnt_30d, 0) AS BIGINT) AS txn_product_signup_cnt_30d,
    CAST(COALESCE(x.txn_product_signup_cnt_90d, 0) AS BIGINT) AS txn_product_signup_cnt_90d,
    CAST(COALESCE(x.txn_product_signup_amt_krw_7d, 0) AS DOUBLE) AS txn_product_signup_amt_krw_7d,
    CAST(COALESCE(x.txn_product_signup_amt_krw_30d, 0) AS DOUBLE) AS txn_product_signup_amt_krw_30d,
    CAST(COALESCE(x.txn_product_signup_amt_krw_90d, 0) AS DOUBLE) AS txn_product_signup_amt_krw_90d,
    CAST(COALESCE(x.txn_deposit_cnt_7d, 0) AS BIGINT) AS txn_deposit_cnt_7d,
    CAST(COALESCE(x.txn_deposit_cnt_30d, 0) AS BIGINT) AS txn_deposit_cnt_30d,
    CAST(COALESCE(x.txn_deposit_cnt_90d, 0) AS BIGINT) AS txn_deposit_cnt_90d,
    CAST(COALESCE(x.txn_deposit_amt_krw_7d, 0) AS DOUBLE) AS txn_deposit_amt_krw_7d,
    CAST(COALESCE(x.txn_deposit_amt_krw_30d, 0) AS DOUBLE) AS txn_deposit_amt_krw_30d,
    CAST(COALESCE(x.txn_deposit_amt_krw_90d, 0) AS DOUBLE) AS txn_deposit_amt_krw_90d,
    CAST(COALESCE(x.txn_withdrawal_cnt_7d, 0) AS BIGINT) AS txn_withdrawal_cnt_7d,
    CAST(COALESCE(x.txn_withdrawal_cnt_30d, 0) AS BIGINT) AS txn_withdrawal_cnt_30d,
    CAST(COALESCE(x.txn_withdrawal_cnt_90d, 0) AS BIGINT) AS txn_withdrawal_cnt_90d,
    CAST(COALESCE(x.txn_withdrawal_amt_krw_7d, 0) AS DOUBLE) AS txn_withdrawal_amt_krw_7d,
    CAST(COALESCE(x.txn_withdrawal_amt_krw_30d, 0) AS DOUBLE) AS txn_withdrawal_amt_krw_30d,
    CAST(COALESCE(x.txn_withdrawal_amt_krw_90d, 0) AS DOUBLE) AS txn_withdrawal_amt_krw_90d,
    CAST(COALESCE(x.txn_balance_inquiry_cnt_7d, 0) AS BIGINT) AS txn_balance_inquiry_cnt_7d,
    CAST(COALESCE(x.txn_balance_inquiry_cnt_30d, 0) AS BIGINT) AS txn_balance_inquiry_cnt_30d,
    CAST(COALESCE(x.txn_balance_inquiry_cnt_90d, 0) AS BIGINT) AS txn_balance_inquiry_cnt_90d,
    CAST(COALESCE(x.txn_balance_inquiry_amt_krw_7d, 0) AS DOUBLE) AS txn_balance_inquiry_amt_krw_7d,
    CAST(COALESCE(x.txn_balance_inquiry_amt_krw_30d, 0) AS DOUBLE) AS txn_balance_inquiry_amt_krw_30d,
    CAST(COALESCE(x.txn_balance_inquiry_amt_krw_90d, 0) AS DOUBLE) AS txn_balance_inquiry_amt_krw_90d,
    CAST(COALESCE(x.txn_maturity_payout_cnt_7d, 0) AS BIGINT) AS txn_maturity_payout_cnt_7d,
    CAST(COALESCE(x.txn_maturity_payout_cnt_30d, 0) AS BIGINT) AS txn_maturity_payout_cnt_30d,
    CAST(COALESCE(x.txn_maturity_payout_cnt_90d, 0) AS BIGINT) AS txn_maturity_payout_cnt_90d,
    CAST(COALESCE(x.txn_maturity_payout_amt_krw_7d, 0) AS DOUBLE) AS txn_maturity_payout_amt_krw_7d,
    CAST(COALESCE(x.txn_maturity_payout_amt_krw_30d, 0) AS DOUBLE) AS txn_maturity_payout_amt_krw_30d,
    CAST(COALESCE(x.txn_maturity_payout_amt_krw_90d, 0) AS DOUBLE) AS txn_maturity_payout_amt_krw_90d,
    CAST(COALESCE(x.txn_auto_transfer_cnt_7d, 0) AS BIGINT) AS txn_auto_transfer_cnt_7d,
    CAST(COALESCE(x.txn_auto_transfer_cnt_30d, 0) AS BIGINT) AS txn_auto_transfer_cnt_30d,
    CAST(COALESCE(x.txn_auto_transfer_cnt_90d, 0) AS BIGINT) AS txn_auto_transfer_cnt_90d,
    CAST(COALESCE(x.txn_auto_transfer_amt_krw_7d, 0) AS DOUBLE) AS txn_auto_transfer_amt_krw_7d,
    CAST(COALESCE(x.txn_auto_transfer_amt_krw_30d, 0) AS DOUBLE) AS txn_auto_transfer_amt_krw_30d,
    CAST(COALESCE(x.txn_auto_transfer_amt_krw_90d, 0) AS DOUBLE) AS txn_auto_transfer_amt_krw_90d,
    CAST(COALESCE(x.txn_loan_interest_cnt_7d, 0) AS BIGINT) AS txn_loan_interest_cnt_7d,
    CAST(COALESCE(x.txn_loan_interest_cnt_30d, 0) AS BIGINT) AS txn_loan_interest_cnt_30d,
    CAST(COALESCE(x.txn_loan_interest_cnt_90d, 0) AS BIGINT) AS txn_loan_interest_cnt_90d,
    CAST(COALESCE(x.txn_loan_interest_amt_krw_7d, 0) AS DOUBLE) AS txn_loan_interest_amt_krw_7d,
    CAST(COALESCE(x.txn_loan_interest_amt_krw_30d, 0) AS DOUBLE) AS txn_loan_interest_amt_krw_30d,
    CAST(COALESCE(x.txn_loan_interest_amt_krw_90d, 0) AS DOUBLE) AS txn_loan_interest_amt_krw_90d,
    CAST(COALESCE(x.txn_fund_buy_cnt_7d, 0) AS BIGINT) AS txn_fund_buy_cnt_7d,
    CAST(COALESCE(x.txn_fund_buy_cnt_30d, 0) AS BIGINT) AS txn_fund_buy_cnt_30d,
    CAST(COALESCE(x.txn_fund_buy_cnt_90d, 0) AS BIGINT) AS txn_fund_buy_cnt_90d,
    CAST(COALESCE(x.txn_fund_buy_amt_krw_7d, 0) AS DOUBLE) AS txn_fund_buy_amt_krw_7d,
    CAST(COALESCE(x.txn_fund_buy_amt_krw_30d, 0) AS DOUBLE) AS txn_fund_buy_amt_krw_30d,
    CAST(COALESCE(x.txn_fund_buy_amt_krw_90d, 0) AS DOUBLE) AS txn_fund_buy_amt_krw_90d,
    CAST(COALESCE(x.n_currencies_7d, 0) AS BIGINT) AS n_currencies_7d,
    CAST(COALESCE(x.n_currencies_30d, 0) AS BIGINT) AS n_currencies_30d,
    CAST(COALESCE(x.n_currencies_90d, 0) AS BIGINT) AS n_currencies_90d,
    CAST(DATE_DIFF('day', CAST(x.last_txn_ts AS DATE), CAST($as_of AS DATE)) AS BIGINT) AS days_since_last_txn,
    CAST(COALESCE(a.long_views_loan_7d, 0) AS BIGINT) AS long_views_loan_7d,
    CAST(COALESCE(a.long_views_loan_30d, 0) AS BIGINT) AS long_views_loan_30d,
    CAST(COALESCE(a.long_views_loan_90d, 0) AS BIGINT) AS long_views_loan_90d,
    CAST(COALESCE(a.long_views_savings_7d, 0) AS BIGINT) AS long_views_savings_7d,
    CAST(COALESCE(a.long_views_savings_30d, 0) AS BIGINT) AS long_views_savings_30d,
    CAST(COALESCE(a.long_views_savings_90d, 0) AS BIGINT) AS long_views_savings_90d,
    CAST(COALESCE(a.long_views_fund_7d, 0) AS BIGINT) AS long_views_fund_7d,
    CAST(COALESCE(a.long_views_fund_30d, 0) AS BIGINT) AS long_views_fund_30d,
    CAST(COALESCE(a.long_views_fund_90d, 0) AS BIGINT) AS long_views_fund_90d,
    CAST(COALESCE(a.long_views_card_7d, 0) AS BIGINT) AS long_views_card_7d,
    CAST(COALESCE(a.long_views_card_30d, 0) AS BIGINT) AS long_views_card_30d,
    CAST(COALESCE(a.long_views_card_90d, 0) AS BIGINT) AS long_views_card_90d,
    CAST(COALESCE(a.long_views_fx_7d, 0) AS BIGINT) AS long_views_fx_7d,
    CAST(COALESCE(a.long_views_fx_30d, 0) AS BIGINT) AS long_views_fx_30d,
    CAST(COALESCE(a.long_views_fx_90d, 0) AS BIGINT) AS long_views_fx_90d,
    CAST(COALESCE(a.long_views_pension_7d, 0) AS BIGINT) AS long_views_pension_7d,
    CAST(COALESCE(a.long_views_pension_30d, 0) AS BIGINT) AS long_views_pension_30d,
    CAST(COALESCE(a.long_views_pension_90d, 0) AS BIGINT) AS long_views_pension_90d,
    CAST(COALESCE(x.signups_loan_7d, 0) AS BIGINT) AS signups_loan_7d,
    CAST(COALESCE(x.signups_loan_30d, 0) AS BIGINT) AS signups_loan_30d,
    CAST(COALESCE(x.signups_loan_90d, 0) AS BIGINT) AS signups_loan_90d,
    CAST(COALESCE(x.signups_savings_7d, 0) AS BIGINT) AS signups_savings_7d,
    CAST(COALESCE(x.signups_savings_30d, 0) AS BIGINT) AS signups_savings_30d,
    CAST(COALESCE(x.signups_savings_90d, 0) AS BIGINT) AS signups_savings_90d,
    CAST(COALESCE(x.signups_fund_7d, 0) AS BIGINT) AS signups_fund_7d,
    CAST(COALESCE(x.signups_fund_30d, 0) AS BIGINT) AS signups_fund_30d,
    CAST(COALESCE(x.signups_fund_90d, 0) AS BIGINT) AS signups_fund_90d,
    CAST(COALESCE(x.signups_card_7d, 0) AS BIGINT) AS signups_card_7d,
    CAST(COALESCE(x.signups_card_30d, 0) AS BIGINT) AS signups_card_30d,
    CAST(COALESCE(x.signups_card_90d, 0) AS BIGINT) AS signups_card_90d,
    CAST(COALESCE(x.signups_fx_7d, 0) AS BIGINT) AS signups_fx_7d,
    CAST(COALESCE(x.signups_fx_30d, 0) AS BIGINT) AS signups_fx_30d,
    CAST(COALESCE(x.signups_fx_90d, 0) AS BIGINT) AS signups_fx_90d,
    CAST(COALESCE(x.signups_pension_7d, 0) AS BIGINT) AS signups_pension_7d,
    CAST(COALESCE(x.signups_pension_30d, 0) AS BIGINT) AS signups_pension_30d,
    CAST(COALESCE(x.signups_pension_90d, 0) AS BIGINT) AS signups_pension_90d
FROM view_customers AS c
LEFT JOIN holding_features AS h ON c.customer_id = h.customer_id
LEFT JOIN activity AS a ON c.customer_id = a.customer_id
LEFT JOIN txn_features AS x ON c.customer_id = x.customer_id
ORDER BY c.customer_id
