"""A catalog with just what a campaign reads, at any size in seconds: a customer view (the
columns the gate and segments use), customers (consent_night), detections, scores and offers.

The full simulator at 1M customers takes far longer than the dry run it would feed; the dry
run's cost depends on the number of rows and the columns it touches, not on how they were drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.data.catalog import Catalog
from src.data.synthetic.response import CATALOG

AS_OF = "2026-02-05"


def write_campaign_bank(data_dir: Path, n: int, seed: int = 0) -> Catalog:
    """Write (or reuse) the tables for ``n`` customers under ``data_dir``."""
    catalog = Catalog(Path(data_dir))
    view_path = catalog.path("customer_view", AS_OF)
    if view_path.exists() and len(pd.read_parquet(view_path, columns=["customer_id"])) == n:
        return catalog
    rng = np.random.default_rng(seed)
    ids = pd.array([f"C{i:07d}" for i in range(n)], dtype="str")
    view = pd.DataFrame(
        {
            "customer_id": ids,
            "age": rng.integers(19, 80, n),
            "region": rng.choice(["seoul", "busan", "gyeonggi", "other"], n),
            "consent_push": rng.random(n) < 0.65,
            "consent_sms": rng.random(n) < 0.45,
            "consent_messenger": rng.random(n) < 0.55,
            "consent_email": rng.random(n) < 0.35,
            "is_closed": rng.random(n) < 0.015,
            "is_accident_reported": rng.random(n) < 0.01,
            **{
                f"n_{p}": (rng.random(n) < 0.3).astype(np.int64)
                for p in ("loan", "savings", "fund", "card", "pension")
            },
            "sessions_7d": rng.poisson(3, n),
        }
    )
    catalog.features_dir.mkdir(parents=True, exist_ok=True)
    catalog.validated_dir.mkdir(parents=True, exist_ok=True)
    view.to_parquet(view_path, index=False)
    customers = pd.DataFrame({"customer_id": ids, "consent_night": rng.random(n) < 0.25})
    customers.to_parquet(catalog.path("customers"), index=False)
    k = n // 20
    fired = pd.Timestamp(AS_OF) - pd.to_timedelta(rng.uniform(0, 14, k), unit="D")
    pd.DataFrame(
        {
            "customer_id": ids[rng.choice(n, k, replace=False)],
            "rule": "loan_inquiry_no_application",
            "fired_at": fired.astype("datetime64[us]"),
        }
    ).to_parquet(catalog.path("detections", AS_OF), index=False)
    pd.DataFrame(
        {"customer_id": ids, "product": "savings", "score": rng.beta(1, 20, n)}
    ).to_parquet(catalog.path("scores", AS_OF), index=False)
    offers = pd.DataFrame(
        [
            {
                "offer_id": o,
                "slot": slot,
                "product": prod,
                "creative": text,
                "value_krw": v,
                "cost_krw": c,
            }
            for o, slot, prod, text, v, c, _ in CATALOG
        ]
    )
    offers.to_parquet(catalog.path("offers"), index=False)
    return catalog
