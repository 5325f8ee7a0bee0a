"""The synthetic bank's customer time zones: a few customers abroad, drawn from a generator of
their own, so adding the column changed no other simulated value."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.schemas import TIMEZONES
from src.data.synthetic.config import SimConfig
from src.data.synthetic.population import FOREIGN_ZONES
from src.data.synthetic.simulator import simulate

#: content digests of every simulated table (customers without ``timezone``) for
#: SimConfig(customers=120, days=5, seed=9), computed with the code before the column existed
BEFORE_TIMEZONES = {
    "raw/clickstream.parquet": "0e501e161c5af993",
    "raw/customers.parquet": "59774374d6ad9a17",
    "raw/exposures.parquet": "d6b86e42ddc44885",
    "raw/holdings.parquet": "ec4db98bc319479b",
    "raw/offers.parquet": "bde26217c941caa7",
    "raw/transactions.parquet": "35a3f59dc8fa6722",
    "truth/customer_traits.parquet": "5d3bf4b8d7a91e9c",
    "truth/exposure_truth.parquet": "2b983862373f8c6f",
    "truth/needs.npy": "b78e9809464c7bf0",
    "truth/offers.parquet": "e996c3f0d3cdeec3",
    "truth/signup_prob.npy": "26fcfc9f6b597ba5",
    "truth/signup_prob_organic.npy": "5301b63593943945",
    "truth/signups.parquet": "a6b3c3e57cf3e65a",
}


def _content_digest(path: Path) -> str:
    if path.suffix == ".npy":
        return hashlib.sha256(np.load(path).tobytes()).hexdigest()[:16]
    frame = pd.read_parquet(path).drop(columns=["timezone"], errors="ignore")
    h = hashlib.sha256(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    h.update(",".join(frame.columns).encode())
    return h.hexdigest()[:16]


def test_time_zones_change_no_other_simulated_value(tmp_path: Path) -> None:
    simulate(SimConfig(customers=120, days=5, seed=9), tmp_path / "raw", tmp_path / "truth",
             progress=False)  # fmt: skip
    got = {
        f"{folder}/{p.name}": _content_digest(p)
        for folder in ("raw", "truth")
        for p in sorted((tmp_path / folder).iterdir())
        if p.suffix in (".parquet", ".npy")
    }
    assert got == BEFORE_TIMEZONES
    zones = pd.read_parquet(tmp_path / "raw" / "customers.parquet")["timezone"]
    assert zones.dropna().isin(FOREIGN_ZONES).all() and set(FOREIGN_ZONES) <= TIMEZONES
    assert 0 < zones.notna().sum() < 0.1 * len(zones)  # a small share abroad, the rest null


def test_a_mapping_written_before_the_column_still_ingests() -> None:
    """An optional contract column the bank's mapping does not name stays absent (validation
    allows it; the gate then uses the bank's zone); named, it is mapped as any column."""
    from src.data.ingest import apply_mapping, load_mapping, read_source
    from src.data.loaders import validate_frame
    from src.settings import Settings

    mapping = load_mapping(Settings().root / "examples" / "bank_export" / "mapping.yaml")
    customers = mapping.tables["customers"]
    export = read_source(customers.source, customers.format, "customers")
    old = customers.model_copy(
        update={"constants": {}}  # neither consent_night nor timezone, as before either existed
    )
    out, report = apply_mapping(export, old)
    assert report.empty and not {"consent_night", "timezone"} & set(out.columns)
    assert validate_frame(out, "customers").n_rejected == 0
    named, _ = apply_mapping(export, customers)
    assert "timezone" in named.columns and named["timezone"].isna().all()
