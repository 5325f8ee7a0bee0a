"""The day loop: needs -> sessions -> exposures and responses -> signups -> events -> Parquet.

Every day is generated for all customers at once with numpy and appended to the Parquet files as
one row group per table, so memory stays flat in the number of days.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from src.data.schemas import (
    CLICK_ACTIONS,
    CLICK_CHANNELS,
    CURRENCIES,
    KRW_REFERENCE_RATES,
    PAGES,
    PRODUCTS,
    REFERRERS,
    SLOTS,
    TXN_CHANNELS,
    TXN_CODES,
)
from src.data.synthetic import flows, needs, response
from src.data.synthetic.config import SimConfig
from src.data.synthetic.population import (
    NAT,
    P_IDX,
    US_PER_DAY,
    US_PER_SEC,
    Population,
    customers_frame,
    epoch_us,
    initial_holdings,
    make_population,
    traits_frame,
)

DAY_SEC = 86_400
CODE = {c: i for i, c in enumerate(TXN_CODES)}
TCH = {c: i for i, c in enumerate(TXN_CHANNELS)}
REF = {r: i for i, r in enumerate(REFERRERS)}
LOGIN_ACTION = CLICK_ACTIONS.index("login")
# Product a transaction code is about (PRODUCT_SIGNUP takes it from the flow instead).
CODE_PRODUCT = np.full(len(TXN_CODES), -1)
for _code, _product in {
    "LOAN_LIMIT_INQUIRY": "loan",
    "LOAN_APPLICATION": "loan",
    "LOAN_INTEREST": "loan",
    "FX_REMIT": "fx",
    "FUND_BUY": "fund",
    "CARD_PAYMENT": "card",
    "MATURITY_PAYOUT": "savings",
    "AUTO_TRANSFER": "savings",
}.items():
    CODE_PRODUCT[CODE[_code]] = PRODUCTS.index(_product)
FX_CURRENCIES = np.array([CURRENCIES.index(c) for c in ("USD", "JPY", "EUR", "CNY", "VND")])
FX_CURRENCY_SHARE = np.array([0.45, 0.15, 0.10, 0.15, 0.15])
HOLDING_OF_PRODUCT = {
    "loan": ("loan", "LOAN-CREDIT"),
    "savings": ("savings", "SAV-12M"),
    "fund": ("fund", "FUND-GLOBAL-EQ"),
    "card": ("card", "CARD-CHECK"),
    "fx": ("account", "FX-ACCT"),
    "pension": ("pension", "PEN-IRP"),
}
HABITS = (
    "habit_transfer",
    "habit_balance",
    "habit_card",
    "habit_events",
    "habit_support",
    "habit_home",
    "habit_transfer_err2",
    "habit_transfer_err3",
    "habit_transfer_err4",
    "habit_transfer_fail2",
    "habit_transfer_fail3",
    "habit_transfer_fail4",
)
HABIT_WEIGHTS = np.array(
    [0.42, 0.22, 0.08, 0.06, 0.03, 0.13, 0.01, 0.008, 0.004, 0.004, 0.003, 0.003]
)
# Part order inside a session.
ORD_PRE, ORD_LOGIN, ORD_LANDING, ORD_CONVERT, ORD_HABIT, ORD_BROWSE, ORD_SIGNUP, ORD_LOGOUT = range(
    8
)

ARROW_TS = pa.timestamp("us")
SCHEMAS = {
    "clickstream": pa.schema(
        [
            ("event_id", pa.int64()),
            ("ts", ARROW_TS),
            ("channel", pa.string()),
            ("device_id", pa.string()),
            ("cookie_id", pa.string()),
            ("customer_id", pa.string()),
            ("session_id", pa.int64()),
            ("page", pa.string()),
            ("action", pa.string()),
            ("dwell_seconds", pa.float64()),
            ("referrer", pa.string()),
        ]
    ),
    "transactions": pa.schema(
        [
            ("event_id", pa.int64()),
            ("ts", ARROW_TS),
            ("customer_id", pa.string()),
            ("code", pa.string()),
            ("channel", pa.string()),
            ("amount", pa.float64()),
            ("currency", pa.string()),
            ("product", pa.string()),
            ("session_id", pa.int64()),
        ]
    ),
    "exposures": pa.schema(
        [
            ("decision_id", pa.string()),
            ("ts", ARROW_TS),
            ("customer_id", pa.string()),
            ("slot", pa.string()),
            ("channel", pa.string()),
            ("offer_id", pa.string()),
            ("logged_prob", pa.float64()),
            ("click", pa.bool_()),
            ("convert", pa.bool_()),
        ]
    ),
    "exposure_truth": pa.schema(
        [
            ("decision_id", pa.string()),
            ("day", pa.int32()),
            ("p_click", pa.float64()),
            ("p_convert", pa.float64()),
            ("n_recent_all", pa.int32()),
            ("n_recent_same", pa.int32()),
            ("need", pa.float32()),
        ]
    ),
}


def _with_pandas_metadata(schema: pa.Schema, nullable_ints: tuple[str, ...]) -> pa.Schema:
    """Attach pandas metadata so ``pd.read_parquet`` gives Int64 (not float64) for nullable ints."""
    template = pd.DataFrame(
        {
            f.name: pd.Series(
                [], dtype="Int64" if f.name in nullable_ints else f.type.to_pandas_dtype()
            )
            for f in schema
        }
    )
    return schema.with_metadata(pa.Schema.from_pandas(template, preserve_index=False).metadata)


SCHEMAS["transactions"] = _with_pandas_metadata(SCHEMAS["transactions"], ("session_id",))


def _vocab(values: tuple[str, ...] | np.ndarray) -> pa.Array:
    return pa.array(list(values), pa.string())


def _take(vocab: pa.Array, idx: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """Strings from a vocabulary by index, null where ``null`` (fast: no Python strings)."""
    return vocab.take(pa.array(idx.astype(np.int64), mask=null))


def _ts(start_us: int, seconds: np.ndarray) -> pa.Array:
    return pa.array(start_us + np.round(seconds * US_PER_SEC).astype(np.int64), ARROW_TS)


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers.astype(np.int64)), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _pick(cum_weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Categorical draw per row from row-wise cumulative weights (last column = total)."""
    return (
        (u[:, None] * cum_weights[:, -1:] > cum_weights)
        .sum(axis=1)
        .clip(0, cum_weights.shape[1] - 1)
    )


@dataclass
class _Writers:
    """One ParquetWriter per streamed table, opened on first write."""

    raw_dir: Path
    truth_dir: Path
    open: dict[str, pq.ParquetWriter] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def write(self, name: str, columns: dict[str, pa.Array]) -> None:
        schema = SCHEMAS[name]
        table = pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
        if name not in self.open:
            folder = self.truth_dir if name == "exposure_truth" else self.raw_dir
            self.open[name] = pq.ParquetWriter(
                folder / f"{name}.parquet", schema, compression="zstd", compression_level=1
            )
        self.open[name].write_table(table)
        self.rows[name] = self.rows.get(name, 0) + table.num_rows

    def close(self) -> None:
        for name, schema in SCHEMAS.items():
            if name not in self.open:  # an empty table still gets its file and schema
                folder = self.truth_dir if name == "exposure_truth" else self.raw_dir
                pq.write_table(schema.empty_table(), folder / f"{name}.parquet")
                self.rows[name] = 0
        for writer in self.open.values():
            writer.close()


@dataclass
class _History:
    """Recent exposures (customer, second, offer) for fatigue: the last ``window`` days."""

    window: int
    days: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    def keys(
        self, n_offers: int, today: tuple[np.ndarray, np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        cust = np.concatenate([d[0] for d in self.days] + [today[0]])
        sec = np.concatenate([d[1] for d in self.days] + [today[1]])
        offer = np.concatenate([d[2] for d in self.days] + [today[2]])
        return (
            np.sort(response.fatigue_keys(cust, sec)),
            np.sort(response.fatigue_keys(cust * n_offers + offer, sec)),
        )

    def push(self, today: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self.days = (self.days + [today])[-self.window :]


def _day_rng(seed: int, stream: int, day: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, day)))


def simulate(
    config: SimConfig, raw_dir: Path, truth_dir: Path, progress: bool = True
) -> dict[str, int]:
    """Simulate the bank; write raw tables to ``raw_dir`` and the truth to ``truth_dir``.

    Returns the row count of every raw table (and of the truth's exposure table).
    """
    raw_dir, truth_dir = Path(raw_dir), Path(truth_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    n, n_days, n_products = config.customers, config.days, len(PRODUCTS)
    start_us = epoch_us(config.start_date)

    pop = make_population(
        n,
        config.start_date,
        n_days,
        _day_rng(config.seed, 0, 0),
        config.shared_device_share,
        config.second_app_device_share,
        config.web_user_share,
        config.accident_share,
        config.closing_share,
    )
    offers = response.make_offers(_day_rng(config.seed, 1, 0), config.logging_uniform_mix)
    holdings0 = initial_holdings(pop, config.start_date, _day_rng(config.seed, 2, 0))
    templates = flows.build_templates()
    customers_frame(pop, config.seed).to_parquet(raw_dir / "customers.parquet", index=False)
    offers.public_frame().to_parquet(raw_dir / "offers.parquet", index=False)
    traits_frame(pop).to_parquet(truth_dir / "customer_traits.parquet", index=False)
    offers.truth_frame().to_parquet(truth_dir / "offers.parquet", index=False)

    need_mm = np.lib.format.open_memmap(
        truth_dir / "needs.npy", "w+", np.float32, (n_days, n, n_products)
    )
    signup_mm = np.lib.format.open_memmap(
        truth_dir / "signup_prob.npy", "w+", np.float32, (n_days, n, n_products)
    )
    organic_mm = np.lib.format.open_memmap(
        truth_dir / "signup_prob_organic.npy", "w+", np.float32, (n_days, n, n_products)
    )

    vocab = {
        "customer": _vocab(pop.customer_ids),
        "device": _vocab(pop.device_names),
        "page": _vocab(PAGES),
        "action": _vocab(CLICK_ACTIONS),
        "referrer": _vocab(REFERRERS),
        "click_channel": _vocab(CLICK_CHANNELS),
        "code": _vocab(TXN_CODES),
        "txn_channel": _vocab(TXN_CHANNELS),
        "currency": _vocab(CURRENCIES),
        "product": _vocab(PRODUCTS),
        "slot": _vocab(SLOTS),
        "offer": _vocab(offers.offer_id),
    }
    static = needs.static_logits(pop)
    state = needs.initial_state(n, _day_rng(config.seed, 3, 0))
    cookie_version = np.zeros(len(pop.device_names), dtype=np.int64)
    history = _History(config.fatigue_window_days)
    counters = {"event": 1, "session": 1, "decision": 1}
    writers = _Writers(raw_dir, truth_dir)
    signup_log: list[pd.DataFrame] = []
    try:
        for day in tqdm(range(n_days), desc="simulating days", unit="day", disable=not progress):
            rng = _day_rng(config.seed, 10, day)
            if day > 0:
                state = needs.advance(state, pop.stage, rng)
            need = needs.needs_today(static, state, needs.push_logits(pop, day))
            need_mm[day] = need
            cookie_version += rng.random(len(cookie_version)) < config.cookie_reset_prob
            out = _simulate_day(
                day,
                config,
                pop,
                offers,
                templates,
                need,
                cookie_version,
                history,
                counters,
                rng,
                start_us,
            )
            signup_mm[day] = out["signup_prob"]
            organic_mm[day] = out["organic_prob"]
            _write_day(out, writers, vocab, start_us, counters)
            signup_log.append(out["signups"])
    finally:
        writers.close()
        need_mm.flush()
        signup_mm.flush()
        organic_mm.flush()
        del need_mm, signup_mm, organic_mm

    signups = pd.concat(signup_log, ignore_index=True)
    holdings = _final_holdings(holdings0, signups, pop, config, _day_rng(config.seed, 4, 0))
    holdings.to_parquet(raw_dir / "holdings.parquet", index=False)
    signups_out = signups.assign(
        customer_id=pop.customer_ids[signups["customer"].to_numpy()].astype(str),
        product=np.array(PRODUCTS, dtype=object)[signups["product"].to_numpy()],
        ts=pd.to_datetime(start_us + signups["sec"].to_numpy() * US_PER_SEC, unit="us"),
    )
    signups_out = signups_out[["customer_id", "day", "product", "ts", "via_offer", "channel"]]
    signups_out.to_parquet(truth_dir / "signups.parquet", index=False)
    meta = {
        "config": config.model_dump(mode="json"),
        "products": list(PRODUCTS),
        "start_us": start_us,
        "days": n_days,
        "customers": n,
        "format": 1,
    }
    (truth_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    counts = {"customers": n, "holdings": len(holdings), "offers": len(offers.offer_id)}
    counts.update({k: v for k, v in writers.rows.items() if k != "exposure_truth"})
    return counts


def _simulate_day(
    day: int,
    config: SimConfig,
    pop: Population,
    offers: response.OfferTable,
    templates: flows.TemplateTable,
    need: np.ndarray,
    cookie_version: np.ndarray,
    history: _History,
    counters: dict[str, int],
    rng: np.random.Generator,
    start_us: int,
) -> dict:
    """All of one day's behaviour as arrays (seconds are relative to the simulation start)."""
    n, n_products = need.shape
    day_sec = day * DAY_SEC
    date = config.start_date + timedelta(days=day)
    dom, weekend = date.day, date.weekday() >= 5
    active = pop.closed_day > day

    # --- sessions -------------------------------------------------------------------------
    near_payment = (
        (pop.card_payment_day > 0)
        & (pop.card_payment_day - dom >= 0)
        & (pop.card_payment_day - dom <= 3)
    )
    rate = (
        config.sessions_per_day
        * pop.digital_affinity
        * (0.6 + 0.8 * need.max(axis=1))
        * (1 + 0.3 * near_payment)
        * (0.8 if weekend else 1.0)
        * active
    )
    n_login = rng.poisson(rate)
    anon_share = config.anonymous_session_share
    n_anon = rng.poisson(rate * anon_share / max(1e-9, 1 - anon_share))
    s_cust = np.concatenate([np.repeat(np.arange(n), n_login), np.repeat(np.arange(n), n_anon)])
    s_anon = np.concatenate([np.zeros(n_login.sum(), bool), np.ones(n_anon.sum(), bool)])
    n_sess = len(s_cust)
    peak = rng.random(n_sess) < 0.6
    hour = np.where(
        peak, rng.normal(pop.preferred_hour[s_cust], 2.0), rng.uniform(7.0, 23.5, n_sess)
    )
    s_start = np.clip(hour * 3600, 0, 23 * 3600 + 50 * 60).round() + day_sec
    order = np.lexsort((s_cust, s_start))  # sessions numbered in time order
    s_cust, s_anon, s_start = s_cust[order], s_anon[order], s_start[order]
    s_id = counters["session"] + np.arange(n_sess)
    counters["session"] += n_sess
    web_dev = np.where(pop.web_device >= 0, pop.web_device, pop.shared_web_device)
    use_shared = (pop.shared_web_device[s_cust] >= 0) & (
        (rng.random(n_sess) < 0.5) | (pop.web_device[s_cust] < 0)
    )
    s_web_dev = np.where(use_shared, pop.shared_web_device[s_cust], web_dev[s_cust])
    s_app = (rng.random(n_sess) < pop.app_share[s_cust]) | (s_web_dev < 0)
    app_dev = np.where(
        (pop.app_device2[s_cust] >= 0) & (rng.random(n_sess) < 0.2),
        pop.app_device2[s_cust],
        pop.app_device[s_cust],
    )
    s_device = np.where(s_app, app_dev, s_web_dev)
    s_cookie = np.where(s_app, -1, s_device * 1000 + cookie_version[s_device] % 1000)
    ref_p = np.array([0.72, 0.08, 0.04, 0.06, 0.02, 0.05, 0.03])  # REFERRERS order
    s_ref = _pick(np.tile(ref_p.cumsum(), (n_sess, 1)), rng.random(n_sess))
    consent_col = {REF["push"]: 0, REF["sms"]: 1, REF["messenger"]: 2, REF["email"]: 3}
    for ref, col in consent_col.items():
        s_ref = np.where((s_ref == ref) & ~pop.consent[s_cust, col], REF["direct"], s_ref)
    s_ref = np.where((s_ref == REF["search"]) & s_app, REF["direct"], s_ref)
    s_need = need[s_cust]  # (sessions, products)
    product_pick = _pick(np.cumsum(s_need**2 + 0.01, axis=1), rng.random(n_sess))

    # --- phase A: pre-login pages and login (or a whole anonymous session) -----------------
    ti = templates.index
    u = rng.random(n_sess)
    pre = np.where(
        s_app,
        np.where(u < 0.3, ti["pre_home"], -1),
        np.select([u < 0.55, u < 0.65, u < 0.85], [ti["pre_home"], ti["pre_events"], -2], -1),
    )
    anon_product_tmpl = np.array([ti[f"anon_{p}"] for p in PRODUCTS])
    pre = np.where(pre == -2, anon_product_tmpl[product_pick], pre)  # a product page before login
    u = rng.random(n_sess)
    anon_tmpl = np.select(
        [u < 0.35, u < 0.5, u < 0.7],
        [ti["anon_rates"], ti["anon_fx"], ti["anon_events"]],
        anon_product_tmpl[product_pick],
    )
    login_sess = np.flatnonzero(~s_anon)
    has_pre = login_sess[pre[login_sess] >= 0]
    anon_sess = np.flatnonzero(s_anon)
    a_sess = np.concatenate([has_pre, login_sess, anon_sess])
    a_tmpl = np.concatenate(
        [pre[has_pre], np.full(len(login_sess), ti["login"]), anon_tmpl[anon_sess]]
    )
    a_ord = np.concatenate(
        [
            np.full(len(has_pre), ORD_PRE),
            np.full(len(login_sess), ORD_LOGIN),
            np.zeros(len(anon_sess), int),
        ]
    )
    a = _events(
        templates,
        a_sess,
        a_tmpl,
        a_ord,
        np.zeros(len(a_sess), bool),
        s_start,
        s_need,
        rng,
        cap_dwell=~s_anon,
    )
    is_login = templates.action[a["flat"]] == LOGIN_ACTION
    login_ts = np.zeros(n_sess)
    login_ts[a["sess"][is_login]] = a["ts"][is_login]
    b_start = login_ts.copy()
    b_start[a["sess"][is_login]] += a["dwell"][is_login]
    a["logged_in"] = is_login  # pre-login and anonymous events stay anonymous

    # --- exposures and responses ----------------------------------------------------------
    n_offers = len(offers.offer_id)
    x_sess = login_sess[rng.random(len(login_sess)) < config.exposure_prob_per_session]
    x_cust = s_cust[x_sess]
    x_sec = np.floor(login_ts[x_sess]) + 1
    x_slot = _pick(np.tile(response.SLOT_SHARE.cumsum(), (len(x_sess), 1)), rng.random(len(x_sess)))
    slot_cum = np.array(
        [np.cumsum(np.where(offers.slot == s, offers.logging_prob, 0.0)) for s in range(len(SLOTS))]
    )
    x_offer = _pick(slot_cum[x_slot], rng.random(len(x_sess)))
    x_logged_prob = offers.logging_prob[x_offer]
    today = (x_cust, x_sec.astype(np.int64), x_offer)
    keys_all, keys_same = history.keys(n_offers, today)
    window_start = np.full(len(x_sess), day_sec - config.fatigue_window_days * DAY_SEC)
    x_n_all = response.count_before(keys_all, x_cust, x_sec, window_start)
    x_n_same = response.count_before(keys_same, x_cust * n_offers + x_offer, x_sec, window_start)
    history.push(today)
    x_product = offers.product[x_offer]
    x_need = need[x_cust, x_product]
    x_hour = np.floor((x_sec - day_sec) / 3600)
    x_pclick = response.click_prob(
        offers,
        x_offer,
        pop.stage[x_cust],
        pop.offer_affinity[x_cust],
        x_need,
        x_hour,
        pop.preferred_hour[x_cust],
        s_app[x_sess].astype(float),
        x_n_all,
        x_n_same,
    )
    x_pconv = response.convert_prob(
        offers, x_offer, x_need, pop.holds[x_cust, x_product].astype(float)
    )
    x_click = rng.random(len(x_sess)) < x_pclick
    x_convert = x_click & (rng.random(len(x_sess)) < x_pconv)

    # --- signups: organic hazard, raised by today's offers ----------------------------------
    organic = response.organic_signup_prob(need) * active[:, None]
    log_no_offer_signup = np.zeros((n, n_products))
    np.add.at(log_no_offer_signup, (x_cust, x_product), np.log1p(-x_pclick * x_pconv))
    signup_prob = 1.0 - (1.0 - organic) * np.exp(log_no_offer_signup)
    organic_draw = rng.random((n, n_products)) < organic
    conv_idx = np.flatnonzero(x_convert)
    # One signup per (customer, product, day): the first converting exposure, else organic.
    conv_key = x_cust[conv_idx] * n_products + x_product[conv_idx]
    _, first = np.unique(conv_key, return_index=True)
    conv_idx = conv_idx[first]
    converted = np.zeros((n, n_products), bool)
    converted[x_cust[conv_idx], x_product[conv_idx]] = True
    org_cust, org_product = np.nonzero(organic_draw & ~converted)
    # Organic signups happen in one of the day's logged-in sessions when there is one.
    login_by_cust = login_sess[np.argsort(s_cust[login_sess], kind="stable")]
    cust_sorted = s_cust[login_by_cust]
    first_pos = np.searchsorted(cust_sorted, org_cust, side="left")
    n_cust_login = np.searchsorted(cust_sorted, org_cust, side="right") - first_pos
    online = (n_cust_login > 0) & (
        rng.random(len(org_cust)) < np.where(org_product == P_IDX["loan"], 0.5, 0.8)
    )
    pick = first_pos + np.floor(rng.random(len(org_cust)) * np.maximum(n_cust_login, 1)).astype(int)
    org_sess = np.where(online, login_by_cust[np.minimum(pick, max(len(login_by_cust) - 1, 0))], -1)

    # --- phase B: everything after login --------------------------------------------------
    n_login_sess = len(login_sess)
    habit_ids = np.array([ti[h] for h in HABITS])
    hw = np.tile(HABIT_WEIGHTS, (n_login_sess, 1))
    hw[:, 2] += 0.2 * near_payment[s_cust[login_sess]]
    habit = habit_ids[_pick(np.cumsum(hw, axis=1), rng.random(n_login_sess))]
    browse_p = 0.015 + 0.5 * s_need[login_sess] ** 1.5
    bs, bp = np.nonzero(rng.random((n_login_sess, n_products)) < browse_p)
    b_sess = login_sess[bs]
    n_var = np.array([len(templates.browse_variants(p)) for p in PRODUCTS])
    depth = np.floor((s_need[b_sess, bp] + 0.25 * rng.standard_normal(len(bs))) * n_var[bp])
    depth = np.clip(depth, 0, n_var[bp] - 1).astype(int)
    browse_first = np.array([templates.browse_variants(p)[0] for p in PRODUCTS])
    signup_tmpl = np.array([ti[f"signup_{p}"] for p in PRODUCTS])
    landing_tmpl = np.array([ti[f"landing_{p}"] for p in PRODUCTS])
    click_idx = np.flatnonzero(x_click)
    conv_tmpl = signup_tmpl[x_product[conv_idx]]
    conv_tmpl = np.where(
        (conv_tmpl == ti["signup_loan"]) & (rng.random(len(conv_idx)) < 0.25),
        ti["signup_loan_err"],
        conv_tmpl,
    )
    org_online = np.flatnonzero(org_sess >= 0)
    org_tmpl = signup_tmpl[org_product[org_online]]
    org_tmpl = np.where(
        (org_tmpl == ti["signup_loan"]) & (rng.random(len(org_online)) < 0.25),
        ti["signup_loan_err"],
        org_tmpl,
    )
    logout = login_sess[rng.random(n_login_sess) < 0.25]
    parts = [  # (sessions, templates, order, banner referrer)
        (x_sess[click_idx], landing_tmpl[x_product[click_idx]], ORD_LANDING, True),
        (x_sess[conv_idx], conv_tmpl, ORD_CONVERT, True),
        (login_sess, habit, ORD_HABIT, False),
        (b_sess, browse_first[bp] + depth, ORD_BROWSE, False),
        (org_sess[org_online], org_tmpl, ORD_SIGNUP, False),
        (logout, np.full(len(logout), ti["logout"]), ORD_LOGOUT, False),
    ]
    b_sess_all = np.concatenate([p[0] for p in parts])
    b_tmpl = np.concatenate([p[1] for p in parts]).astype(int)
    b_ord = np.concatenate([np.full(len(p[0]), p[2], float) for p in parts])
    b_ord += np.where(b_ord == ORD_BROWSE, rng.random(len(b_ord)) * 0.5, 0.0)
    b_banner = np.concatenate([np.full(len(p[0]), p[3]) for p in parts])
    b = _events(
        templates, b_sess_all, b_tmpl, b_ord, b_banner, b_start, s_need, rng, cap_dwell=None
    )
    b["logged_in"] = np.ones(len(b["sess"]), bool)

    # --- clickstream ----------------------------------------------------------------------
    ev = {
        k: np.concatenate([a[k], b[k]])
        for k in ("sess", "flat", "ts", "dwell", "banner", "product", "logged_in")
    }
    ev_cust = s_cust[ev["sess"]]
    clicks = {
        "ts": ev["ts"],
        "channel": np.where(s_app[ev["sess"]], 1, 0),
        "device": s_device[ev["sess"]],
        "cookie": s_cookie[ev["sess"]],
        "customer": ev_cust,
        "anonymous": ~ev["logged_in"],
        "session_id": s_id[ev["sess"]],
        "page": templates.page[ev["flat"]],
        "action": templates.action[ev["flat"]],
        "dwell": ev["dwell"],
        "referrer": np.where(ev["banner"], REF["banner"], s_ref[ev["sess"]]),
    }

    # --- transactions ---------------------------------------------------------------------
    code = templates.code[ev["flat"]]
    fired = (code >= 0) & (rng.random(len(code)) < templates.code_prob[ev["flat"]])
    code2 = np.where(fired, templates.code2[ev["flat"]], -1)
    t_from_ev = np.concatenate([np.flatnonzero(fired), np.flatnonzero(code2 >= 0)])
    t_code = np.concatenate([code[fired], code2[code2 >= 0]])
    t_session_ev = {
        "ts": ev["ts"][t_from_ev] + 1.0,
        "customer": ev_cust[t_from_ev],
        "code": t_code,
        "channel": np.where(s_app[ev["sess"][t_from_ev]], TCH["app"], TCH["web"]),
        "session_id": s_id[ev["sess"][t_from_ev]],
        "product": np.where(
            t_code == CODE["PRODUCT_SIGNUP"], ev["product"][t_from_ev], CODE_PRODUCT[t_code]
        ),
        "preset_amount": np.full(len(t_code), np.nan),
    }
    txns = [t_session_ev, _offline_transactions(day, dom, pop, active, rng)]
    branch = np.flatnonzero(org_sess < 0)
    b_sec = day_sec + np.round(rng.uniform(9 * 3600, 16 * 3600, len(branch)))
    txns.append(
        {
            "ts": b_sec,
            "customer": org_cust[branch],
            "code": np.full(len(branch), CODE["PRODUCT_SIGNUP"]),
            "channel": np.full(len(branch), TCH["branch"]),
            "session_id": np.full(len(branch), -1),
            "product": org_product[branch],
            "preset_amount": np.full(len(branch), np.nan),
        }
    )
    t = {k: np.concatenate([x[k] for x in txns]) for k in txns[0]}
    t["amount"], t["currency"] = _amounts(t["code"], t["product"], rng)
    t["amount"] = np.where(np.isnan(t["preset_amount"]), t["amount"], t["preset_amount"])

    signup_rows = t["code"] == CODE["PRODUCT_SIGNUP"]
    signups = pd.DataFrame(
        {
            "customer": t["customer"][signup_rows],
            "day": day,
            "product": t["product"][signup_rows],
            "sec": np.floor(t["ts"][signup_rows]).astype(np.int64),
            "channel": t["channel"][signup_rows],
        }
    )
    via_offer = np.zeros((n, n_products), bool)
    via_offer[x_cust[conv_idx], x_product[conv_idx]] = True
    signups["via_offer"] = via_offer[signups["customer"], signups["product"]]
    exposures = {
        "sec": x_sec,
        "customer": x_cust,
        "slot": x_slot,
        "channel": np.where(s_app[x_sess], 1, 0),
        "offer": x_offer,
        "logged_prob": x_logged_prob,
        "click": x_click,
        "convert": x_convert,
        "p_click": x_pclick,
        "p_convert": x_pconv,
        "n_all": x_n_all,
        "n_same": x_n_same,
        "need": x_need,
        "day": day,
    }
    return {
        "clicks": clicks,
        "txns": t,
        "exposures": exposures,
        "signups": signups,
        "signup_prob": signup_prob.astype(np.float32),
        "organic_prob": organic.astype(np.float32),
    }


def _events(
    templates: flows.TemplateTable,
    part_sess: np.ndarray,
    part_tmpl: np.ndarray,
    part_order: np.ndarray,
    part_banner: np.ndarray,
    sess_start: np.ndarray,
    sess_need: np.ndarray,
    rng: np.random.Generator,
    cap_dwell: np.ndarray | None,
) -> dict:
    """Expand parts (sorted into session order) to timed events."""
    order = np.lexsort((part_order, part_sess))
    part_sess, part_tmpl, part_banner = part_sess[order], part_tmpl[order], part_banner[order]
    part_of_ev, flat = flows.expand(templates, part_tmpl)
    sess = part_sess[part_of_ev]
    product = templates.product[part_tmpl][part_of_ev]
    ev_need = np.where(product >= 0, sess_need[sess, np.maximum(product, 0)], 0.0)
    dwell = flows.draw_dwell(templates.dwell_kind[flat], ev_need, rng)
    if cap_dwell is not None:
        dwell = np.where(cap_dwell[sess], np.minimum(dwell, 100.0), dwell)
    first = np.ones(len(sess), bool)
    first[1:] = sess[1:] != sess[:-1]
    ts = sess_start[sess] + flows.group_exclusive_cumsum(dwell, first)
    return {
        "sess": sess,
        "flat": flat,
        "ts": ts,
        "dwell": dwell,
        "banner": part_banner[part_of_ev],
        "product": product,
    }


def _offline_transactions(
    day: int, dom: int, pop: Population, active: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Scheduled (channel auto) and branch/ATM transactions of the day."""
    day_sec = day * DAY_SEC
    n = pop.n
    rows: list[
        tuple[np.ndarray, int, int, float, float]
    ] = []  # customers, code, channel, from hour, to hour
    rows.append(
        (
            np.flatnonzero(active & (pop.card_payment_day == dom)),
            CODE["CARD_PAYMENT"],
            TCH["auto"],
            6,
            9,
        )
    )
    rows.append(
        (
            np.flatnonzero(active & (pop.loan_interest_day == dom)),
            CODE["LOAN_INTEREST"],
            TCH["auto"],
            6,
            9,
        )
    )
    rows.append(
        (
            np.flatnonzero(active & (pop.savings_maturity_day == day)),
            CODE["MATURITY_PAYOUT"],
            TCH["auto"],
            0,
            6,
        )
    )
    rows.append(
        (
            np.flatnonzero(
                active & (pop.auto_transfer_dom == dom) & (pop.auto_transfer_end_day > day)
            ),
            CODE["AUTO_TRANSFER"],
            TCH["auto"],
            6,
            9,
        )
    )
    workers = np.isin(pop.stage, [1, 2, 3])
    if dom == 25:
        rows.append((np.flatnonzero(active & workers), CODE["DEPOSIT"], TCH["auto"], 8, 10))
    retiree = pop.stage == 4
    u = rng.random(n)
    rows.append(
        (
            np.flatnonzero(active & (u < 0.05 + 0.06 * retiree)),
            CODE["WITHDRAWAL"],
            TCH["atm"],
            7,
            23,
        )
    )
    u = rng.random(n)
    rows.append(
        (
            np.flatnonzero(active & (u < 0.01 + 0.04 * retiree)),
            CODE["DEPOSIT"],
            TCH["branch"],
            9,
            16,
        )
    )
    u = rng.random(n)
    rows.append(
        (
            np.flatnonzero(active & (u < 0.01 + 0.04 * retiree)),
            CODE["TRANSFER"],
            TCH["branch"],
            9,
            16,
        )
    )
    cust = np.concatenate([r[0] for r in rows])
    lo = np.concatenate([np.full(len(r[0]), r[3], float) for r in rows])
    hi = np.concatenate([np.full(len(r[0]), r[4], float) for r in rows])
    codes = np.concatenate([np.full(len(r[0]), r[1]) for r in rows])
    preset = np.select(
        [
            codes == CODE["LOAN_INTEREST"],
            codes == CODE["MATURITY_PAYOUT"],
            codes == CODE["AUTO_TRANSFER"],
        ],
        [
            np.round(pop.loan_balance[cust] * 0.045 / 12, -1),
            np.round(pop.savings_balance[cust] * 1.035, -1),
            pop.auto_transfer_amount[cust],
        ],
        np.nan,
    )
    return {
        "ts": day_sec + np.round(rng.uniform(lo, hi) * 3600),
        "customer": cust,
        "code": codes,
        "channel": np.concatenate([np.full(len(r[0]), r[2]) for r in rows]),
        "session_id": np.full(len(cust), -1),
        "product": CODE_PRODUCT[codes],
        "preset_amount": preset,
    }


def _amounts(
    code: np.ndarray, product: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Amounts in the transaction's currency: KRW, except FX_REMIT (drawn in KRW-equivalent,
    median 1.5M, ~3 % at or above 10M KRW, then converted with KRW_REFERENCE_RATES)."""
    k = len(code)
    z = rng.standard_normal(k)

    def logn(median: float, sigma: float, digits: int) -> np.ndarray:
        return np.round(median * np.exp(sigma * z), digits)

    amount = np.select(
        [
            code == CODE["TRANSFER"],
            code == CODE["CARD_PAYMENT"],
            code == CODE["FX_REMIT"],
            code == CODE["LOAN_APPLICATION"],
            code == CODE["DEPOSIT"],
            code == CODE["WITHDRAWAL"],
            code == CODE["MATURITY_PAYOUT"],
            code == CODE["AUTO_TRANSFER"],
            code == CODE["LOAN_INTEREST"],
            code == CODE["FUND_BUY"],
            (code == CODE["PRODUCT_SIGNUP"])
            & np.isin(product, [P_IDX["savings"], P_IDX["fund"], P_IDX["pension"]]),
        ],
        [
            logn(2e5, 1.2, -3),
            logn(8e5, 0.8, -1),
            logn(1.5e6, 1.0, 0),
            logn(3e7, 0.8, -5),
            logn(2.5e6, 0.6, -3),
            logn(1.5e5, 0.7, -4),
            logn(8e6, 0.9, -3),
            logn(3e5, 0.6, -4),
            logn(1.5e5, 0.8, -1),
            logn(1e6, 1.0, -4),
            logn(1e6, 1.0, -4),
        ],
        0.0,
    )
    currency = np.full(k, CURRENCIES.index("KRW"))
    fx = code == CODE["FX_REMIT"]
    currency[fx] = FX_CURRENCIES[
        _pick(np.tile(FX_CURRENCY_SHARE.cumsum(), (int(fx.sum()), 1)), rng.random(int(fx.sum())))
    ]
    # Drawn as a KRW equivalent; stored in the remittance's own currency (the raw contract).
    rate = np.array([KRW_REFERENCE_RATES[c] for c in CURRENCIES])
    amount[fx] = np.round(amount[fx] / rate[currency[fx]], 2)
    return np.maximum(amount, 0.0), currency


def _write_day(
    out: dict,
    writers: _Writers,
    vocab: dict[str, pa.Array],
    start_us: int,
    counters: dict[str, int],
) -> None:
    """Assign event ids in time order across clicks and transactions, then append row groups."""
    c, t, x = out["clicks"], out["txns"], out["exposures"]
    n_c = len(c["ts"])
    all_ts = np.concatenate([c["ts"], t["ts"]])
    kind = np.concatenate([np.zeros(n_c, np.int8), np.ones(len(t["ts"]), np.int8)])
    order = np.lexsort((kind, all_ts))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    event_id = counters["event"] + rank
    counters["event"] += len(order)

    co = np.argsort(event_id[:n_c], kind="stable")
    cookie = c["cookie"][co]
    web = cookie >= 0
    cookie_ids = pc.if_else(
        pa.array(web),
        pc.binary_join_element_wise("K", pc.cast(pa.array(cookie), pa.string()), ""),
        pa.nulls(len(cookie), pa.string()),
    )
    writers.write(
        "clickstream",
        {
            "event_id": pa.array(event_id[:n_c][co]),
            "ts": _ts(start_us, c["ts"][co]),
            "channel": _take(vocab["click_channel"], c["channel"][co]),
            "device_id": _take(vocab["device"], c["device"][co]),
            "cookie_id": cookie_ids,
            "customer_id": _take(vocab["customer"], c["customer"][co], null=c["anonymous"][co]),
            "session_id": pa.array(c["session_id"][co].astype(np.int64)),
            "page": _take(vocab["page"], c["page"][co]),
            "action": _take(vocab["action"], c["action"][co]),
            "dwell_seconds": pa.array(c["dwell"][co].astype(float)),
            "referrer": _take(vocab["referrer"], c["referrer"][co]),
        },
    )
    to = np.argsort(event_id[n_c:], kind="stable")
    no_session = t["session_id"][to] < 0
    no_product = t["product"][to] < 0
    writers.write(
        "transactions",
        {
            "event_id": pa.array(event_id[n_c:][to]),
            "ts": _ts(start_us, t["ts"][to]),
            "customer_id": _take(vocab["customer"], t["customer"][to]),
            "code": _take(vocab["code"], t["code"][to]),
            "channel": _take(vocab["txn_channel"], t["channel"][to]),
            "amount": pa.array(t["amount"][to].astype(float)),
            "currency": _take(vocab["currency"], t["currency"][to]),
            "product": _take(vocab["product"], np.maximum(t["product"][to], 0), null=no_product),
            "session_id": pa.array(t["session_id"][to].astype(np.int64), mask=no_session),
        },
    )
    xo = np.lexsort((x["customer"], x["sec"]))
    decision_id = _ids("D", counters["decision"] + np.arange(len(xo)), 10)
    counters["decision"] += len(xo)
    writers.write(
        "exposures",
        {
            "decision_id": decision_id,
            "ts": _ts(start_us, x["sec"][xo].astype(float)),
            "customer_id": _take(vocab["customer"], x["customer"][xo]),
            "slot": _take(vocab["slot"], x["slot"][xo]),
            "channel": _take(vocab["click_channel"], x["channel"][xo]),
            "offer_id": _take(vocab["offer"], x["offer"][xo]),
            "logged_prob": pa.array(x["logged_prob"][xo].astype(float)),
            "click": pa.array(x["click"][xo]),
            "convert": pa.array(x["convert"][xo]),
        },
    )
    writers.write(
        "exposure_truth",
        {
            "decision_id": decision_id,
            "day": pa.array(np.full(len(xo), x["day"], np.int32)),
            "p_click": pa.array(x["p_click"][xo].astype(float)),
            "p_convert": pa.array(x["p_convert"][xo].astype(float)),
            "n_recent_all": pa.array(x["n_all"][xo].astype(np.int32)),
            "n_recent_same": pa.array(x["n_same"][xo].astype(np.int32)),
            "need": pa.array(x["need"][xo].astype(np.float32)),
        },
    )


def _final_holdings(
    initial: pd.DataFrame,
    signups: pd.DataFrame,
    pop: Population,
    config: SimConfig,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Initial holdings plus the period's signups, with closings, in the Holdings schema."""
    start_us = epoch_us(config.start_date)
    end_us = start_us + config.days * US_PER_DAY
    k = len(signups)
    cust = signups["customer"].to_numpy()
    product = signups["product"].to_numpy()
    opened = start_us + signups["sec"].to_numpy() * US_PER_SEC
    names = np.array(PRODUCTS, dtype=object)[product]
    new = pd.DataFrame(
        {
            "customer_id": pop.customer_ids[cust],
            "holding_type": [HOLDING_OF_PRODUCT[p][0] for p in names],
            "product_code": [HOLDING_OF_PRODUCT[p][1] for p in names],
            "opened_us": opened,
            "balance": np.round(rng.lognormal(np.log(3e6), 1.0, k), -3),
        }
    )
    is_ = {p: product == P_IDX[p] for p in PRODUCTS}
    from src.data.synthetic.population import CARD_PAYMENT_DAYS

    new["card_payment_day"] = np.where(is_["card"], rng.choice(CARD_PAYMENT_DAYS, k), np.nan)
    new["loan_interest_day"] = np.where(is_["loan"], rng.integers(1, 29, k), np.nan)
    new["maturity_us"] = np.where(is_["savings"], opened + 365 * US_PER_DAY, NAT)
    new["fund_return_pct"] = np.where(is_["fund"], np.round(rng.normal(0.3, 2.0, k), 2), np.nan)
    frame = pd.concat([initial, new], ignore_index=True)
    for col in ("maturity_us", "auto_end_us"):
        frame[col] = frame[col].fillna(NAT).astype(np.int64) if col in frame else NAT
    closed = np.full(len(frame), NAT, dtype=np.int64)
    matured = (
        (frame["holding_type"].to_numpy() == "savings")
        & (frame["maturity_us"].to_numpy() != NAT)
        & (frame["maturity_us"].to_numpy() < end_us)
    )
    closed[matured] = frame["maturity_us"].to_numpy()[matured]
    cust_idx = pd.Index(pop.customer_ids).get_indexer(frame["customer_id"])
    cust_closed = pop.closed_us[cust_idx]
    close_all = (cust_closed != NAT) & ((closed == NAT) | (cust_closed < closed))
    closed[close_all] = cust_closed[close_all]
    # Accounts opened after the customer closed cannot exist; none are (closed customers are inactive).

    def ts(us: np.ndarray) -> pd.Series:
        return pd.Series(
            np.where(us == NAT, np.datetime64("NaT"), us.astype("datetime64[us]")),
            dtype="datetime64[us]",
        )

    return pd.DataFrame(
        {
            "holding_id": pd.array([f"H{i:08d}" for i in range(1, len(frame) + 1)], dtype="str"),
            "customer_id": pd.array(frame["customer_id"].astype(str), dtype="str"),
            "holding_type": pd.array(frame["holding_type"].astype(str), dtype="str"),
            "product_code": pd.array(frame["product_code"].astype(str), dtype="str"),
            "opened_at": ts(frame["opened_us"].to_numpy(np.int64)),
            "closed_at": ts(closed),
            "balance": frame["balance"].astype(float),
            "card_payment_day": pd.array(
                frame["card_payment_day"].where(frame["card_payment_day"] > 0), dtype="Int64"
            ),
            "maturity_date": ts(frame["maturity_us"].to_numpy(np.int64)),
            "loan_interest_day": pd.array(
                frame["loan_interest_day"].where(frame["loan_interest_day"] > 0), dtype="Int64"
            ),
            "auto_transfer_end_date": ts(frame["auto_end_us"].to_numpy(np.int64)),
            "fund_return_pct": frame["fund_return_pct"].astype(float),
        }
    )
