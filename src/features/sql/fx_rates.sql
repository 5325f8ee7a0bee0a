-- fx_rates: fixed reference rates (KRW per one unit of the currency) used to express
-- transaction amounts in KRW. Approximate constants, not market data: the raw contract has no
-- rates table. They only need to put USD, JPY... amounts on one scale for features.
-- Keep in sync with KRW_REFERENCE_RATES in src/data/schemas.py (a test checks).
SELECT currency, CAST(krw_rate AS DOUBLE) AS krw_rate
FROM (
    VALUES
        ('KRW', 1.0),
        ('USD', 1400.0),
        ('JPY', 9.5),
        ('EUR', 1500.0),
        ('CNY', 195.0),
        ('VND', 0.055)
) AS rates(currency, krw_rate)
