{#- Jinja template (src/features/sql_templates.py): windows, page_groups, products and
    long_read_seconds come from the Python constants that also name the view's columns. -#}
{% macro window_days(ts) %}
    CASE
{% for w in windows %}
        WHEN {{ ts }} >= $as_of - INTERVAL {{ w }} DAY THEN {{ w }}
{% endfor %}
    END
{%- endmacro %}
{% macro page_in(prefixes) -%}
{% if prefixes | length == 1 %}page LIKE '{{ prefixes[0] }}%'{% else %}({% for p in prefixes %}{{ ' OR ' if not loop.first }}page LIKE '{{ p }}%'{% endfor %}){% endif %}
{%- endmacro %}
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
--   window_days      smallest look-back window holding the events: {{ windows[:-1] | join(', ') }} or {{ windows | last }} (days before
--                    $as_of), NULL if older than {{ windows | last }} days. A session split by a window edge
--                    gives two rows; every consumer only uses duplicate-insensitive
--                    aggregates (MIN, MAX, COUNT DISTINCT) or sums additive counts.
--   first_ts, last_ts  first and last event
--   app_events, page_views, dwell_seconds, logins, pv_<group>  additive counts over the events
--                    (pv_<group>: page views on the page group, see PAGE_GROUPS). COUNT, not
--                    SUM(CASE ... 1 ELSE 0): BIGINT instead of DuckDB's 128-bit SUM result.
--   lv_<product>     long reads: views of the product's pages with dwell_seconds >= {{ long_read_seconds }} (the
--                    share of long reads on a product's detail pages rises with the need for it)
SELECT
    session_id,
    device_id,
    cookie_id,
    customer_id,
{{ window_days('ts') }} AS window_days,
    MIN(ts) AS first_ts,
    MAX(ts) AS last_ts,
    COUNT(CASE WHEN channel = 'app' THEN 1 END) AS app_events,
    COUNT(CASE WHEN action = 'view' THEN 1 END) AS page_views,
    SUM(dwell_seconds) AS dwell_seconds,
    COUNT(CASE WHEN action = 'login' THEN 1 END) AS logins,
{% for group, prefixes in page_groups.items() %}
    COUNT(CASE WHEN action = 'view' AND {{ page_in(prefixes) }} THEN 1 END) AS pv_{{ group }},
{% endfor %}
{% for product in products %}
    COUNT(CASE WHEN action = 'view' AND dwell_seconds >= {{ long_read_seconds }} AND page LIKE '{{ product }}%' THEN 1 END) AS lv_{{ product }}{{ ',' if not loop.last }}
{% endfor %}
FROM clickstream
WHERE ts < $as_of
GROUP BY
    session_id,
    device_id,
    cookie_id,
    customer_id,
{{ window_days('ts') }}
