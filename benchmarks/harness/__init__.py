"""Helpers the benchmarks and the tests share; none of it is production code (nothing in ``src``
imports it).

``loadgen`` (a lean HTTP/1.1 load generator), ``serving_fixtures`` (a tiny simulated bank with
registered models for the service), ``customer_view_pandas`` (the customer view in plain pandas:
the view benchmark's baseline and the tests' cross-check of the SQL), ``detection_reference``
(a literal per-customer loop over the detection semantics: the detection benchmark's baseline
and a third opinion in the property test) and ``detection_synthetic`` (random stitched event
streams that exercise the shipped rules).
"""
