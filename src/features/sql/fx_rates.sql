-- fx_rates: fixed reference rates (KRW per one unit of the currency) used to express
-- transaction amounts in KRW. Approximate constants, not market data: the raw contract has no
-- rates table. They only need to put USD, JPY... amounts on one scale for features.
-- Rendered from KRW_REFERENCE_RATES in src/data/schemas.py (Jinja, src/features/sql_templates.py).
SELECT currency, CAST(krw_rate AS DOUBLE) AS krw_rate
FROM (
    VALUES
{% for currency, rate in krw_rates.items() %}
        ('{{ currency }}', {{ rate }}){{ ',' if not loop.last }}
{% endfor %}
) AS rates(currency, krw_rate)
