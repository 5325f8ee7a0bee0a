"""The scoring endpoint for the offer slot (FastAPI; ``create_app`` in ``src.serving.app``).

Request -> eligibility (consent, accident report, closed account, product held, targeting) ->
contact caps (atomic) -> champion scores -> bandit draw with its probability -> durable log ->
response. Entry points for the CLI are in ``src.serving.service``: ``serve``, ``export_log``,
``run_demo``. Nothing is imported or loaded here.
"""
