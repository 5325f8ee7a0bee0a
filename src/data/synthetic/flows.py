"""Page flows as templates, expanded to events for many sessions at once.

A session is a sorted list of parts (pre-login pages, login, a habit, need-driven browsing,
a banner landing, a signup completion, logout); each part is a fixed template of
(page, action, transaction marker, dwell kind). Expanding parts with ``np.repeat`` keeps the
whole day vectorized, while variety comes from the many templates (abandoned flows, steps that
error 2-4 times in a row, deep or shallow browsing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.data.schemas import CLICK_ACTIONS, PAGES, PRODUCTS, TXN_CODES

V, C, S, L, O, E = "view", "click", "submit", "login", "logout", "error"  # noqa: E741
QUICK, NORMAL, DETAIL, DONE = 0, 1, 2, 3
# One event: (page, action, dwell kind, txn code or None, P(code), second code or None).
Ev = tuple[str, str, int, str | None, float, str | None]


def ev(
    page: str,
    action: str = V,
    kind: int = NORMAL,
    code: str | None = None,
    p: float = 1.0,
    code2: str | None = None,
) -> Ev:
    return (page, action, kind, code, p, code2)


def _errors(page: str, k: int) -> list[Ev]:
    return [ev(page, S, QUICK)] + [ev(page, E, QUICK) for _ in range(k)]


_LOAN_INQUIRY = [
    ev("loan_main"),
    ev("loan_limit_inquiry"),
    ev("loan_limit_inquiry", S, QUICK),
    ev("loan_limit_result", V, DETAIL, "LOAN_LIMIT_INQUIRY"),
]
_SIGNUP_STEPS = [
    ev("signup_step1"),
    ev("signup_step1", S, QUICK),
    ev("signup_step2"),
    ev("signup_step2", S, QUICK),
    ev("signup_step3"),
    ev("signup_step3", S, QUICK),
]
_SIGNUP_DONE = [ev("signup_done", V, DONE, "PRODUCT_SIGNUP")]
_LANDING = {
    "loan": "loan_main",
    "savings": "savings_detail",
    "fund": "fund_detail",
    "card": "card_benefits",
    "fx": "fx_main",
    "pension": "pension_main",
}
_ENTRY = {
    "loan": "loan_main",
    "savings": "savings_list",
    "fund": "fund_list",
    "card": "card_benefits",
    "fx": "fx_rates",
    "pension": "pension_main",
}


def _templates() -> dict[str, tuple[str | None, list[Ev]]]:
    """name -> (product or None, events)."""
    t: dict[str, tuple[str | None, list[Ev]]] = {
        "pre_home": (None, [ev("home", V, QUICK)]),
        "pre_events": (None, [ev("home", V, QUICK), ev("events", V, QUICK)]),
        "login": (None, [ev("login", V, QUICK), ev("login", L, QUICK)]),
        "logout": (None, [ev("home", O, QUICK)]),
        "anon_fx": ("fx", [ev("fx_main", V, QUICK), ev("fx_rates", V, DETAIL)]),
        "anon_rates": ("fx", [ev("fx_rates", V, DETAIL)]),
        "anon_events": (None, [ev("home"), ev("events")]),
        "habit_transfer": (
            None,
            [
                ev("home"),
                ev("account_summary", V, NORMAL, "BALANCE_INQUIRY", 0.3),
                ev("transfer_input"),
                ev("transfer_input", S, QUICK),
                ev("transfer_done", V, DONE, "TRANSFER"),
            ],
        ),
        "habit_balance": (
            None,
            [ev("home"), ev("account_summary", V, NORMAL, "BALANCE_INQUIRY", 0.6)],
        ),
        "habit_card": (
            None,
            [
                ev("home"),
                ev("card_statement"),
                ev("account_summary", V, NORMAL, "BALANCE_INQUIRY", 0.6),
            ],
        ),
        "habit_events": (None, [ev("home"), ev("events")]),
        "habit_support": (None, [ev("home"), ev("support")]),
        "habit_home": (None, [ev("home")]),
    }
    for k in (2, 3, 4):
        t[f"habit_transfer_err{k}"] = (
            None,
            [ev("home"), ev("account_summary"), ev("transfer_input")]
            + _errors("transfer_input", k)
            + [ev("transfer_input", S, QUICK), ev("transfer_done", V, DONE, "TRANSFER")],
        )
        t[f"habit_transfer_fail{k}"] = (
            None,
            [ev("home"), ev("transfer_input")]
            + _errors("transfer_input", k)
            + [ev("error"), ev("support")],
        )
    for product in PRODUCTS:
        t[f"anon_{product}"] = (product, [ev(_ENTRY[product], V, DETAIL)])
        t[f"landing_{product}"] = (
            product,
            [ev("home", C, QUICK), ev(_LANDING[product], V, DETAIL)],
        )
    browse: dict[str, list[list[Ev]]] = {
        "loan": [
            [ev("loan_main", V, DETAIL)],
            _LOAN_INQUIRY,
            _LOAN_INQUIRY
            + [ev("loan_apply_step1"), ev("loan_apply_step1", S, QUICK), ev("loan_apply_step2")],
            _LOAN_INQUIRY
            + [ev("loan_apply_step1"), ev("loan_apply_step1", S, QUICK), ev("loan_apply_step2")]
            + _errors("loan_apply_step2", 3)
            + [ev("error")],
        ],
        "savings": [
            [ev("savings_list")],
            [ev("savings_list"), ev("savings_detail", V, DETAIL)],
            [ev("savings_list"), ev("savings_detail", V, DETAIL), ev("savings_detail", V, DETAIL)],
            [
                ev("savings_list"),
                ev("savings_detail", V, DETAIL),
                ev("signup_step1"),
                ev("signup_step1", S, QUICK),
                ev("signup_step2"),
            ],
        ],
        "fund": [
            [ev("fund_list")],
            [ev("fund_list"), ev("fund_detail", V, DETAIL)],
            [
                ev("fund_list"),
                ev("fund_detail", V, DETAIL),
                ev("fund_detail", C, QUICK),
                ev("fund_detail", V, DETAIL),
            ],
        ],
        "card": [
            [ev("card_benefits", V, DETAIL)],
            [ev("card_benefits", V, DETAIL), ev("signup_step1")],
            [ev("card_benefits", V, DETAIL), ev("signup_step1")]
            + _errors("signup_step1", 2)
            + [ev("error")],
        ],
        "fx": [
            [ev("fx_main"), ev("fx_rates", V, DETAIL)],
            [
                ev("fx_main"),
                ev("fx_remit_input"),
                ev("fx_remit_input", S, QUICK),
                ev("fx_remit_done", V, DONE, "FX_REMIT"),
            ],
            [ev("fx_main"), ev("fx_remit_input")]
            + _errors("fx_remit_input", 2)
            + [ev("fx_remit_input", S, QUICK), ev("fx_remit_done", V, DONE, "FX_REMIT")],
        ],
        "pension": [
            [ev("pension_main", V, DETAIL)],
            [ev("pension_main", V, DETAIL), ev("signup_step1")],
            [
                ev("pension_main", V, DETAIL),
                ev("pension_main", V, DETAIL),
                ev("signup_step1"),
                ev("signup_step1", S, QUICK),
                ev("signup_step2"),
            ],
        ],
    }
    for product, variants in browse.items():
        for i, events in enumerate(variants):
            t[f"browse_{product}_{i}"] = (product, events)
    apply_steps = [
        ev("loan_apply_step1"),
        ev("loan_apply_step1", S, QUICK),
        ev("loan_apply_step2"),
        ev("loan_apply_step2", S, QUICK),
        ev("loan_apply_step3"),
        ev("loan_apply_step3", S, QUICK),
    ]
    loan_done = [ev("loan_apply_done", V, DONE, "LOAN_APPLICATION", 1.0, "PRODUCT_SIGNUP")]
    t["signup_loan"] = ("loan", _LOAN_INQUIRY + apply_steps + loan_done)
    t["signup_loan_err"] = (
        "loan",
        _LOAN_INQUIRY
        + apply_steps[:3]
        + _errors("loan_apply_step2", 2)
        + apply_steps[3:]
        + loan_done,
    )
    t["signup_savings"] = (
        "savings",
        [ev("savings_list"), ev("savings_detail", V, DETAIL)] + _SIGNUP_STEPS + _SIGNUP_DONE,
    )
    t["signup_fund"] = (
        "fund",
        [
            ev("fund_list"),
            ev("fund_detail", V, DETAIL),
            ev("fund_detail", S, QUICK),
            ev("fund_buy_done", V, DONE, "FUND_BUY", 1.0, "PRODUCT_SIGNUP"),
        ],
    )
    t["signup_card"] = ("card", [ev("card_benefits", V, DETAIL)] + _SIGNUP_STEPS + _SIGNUP_DONE)
    t["signup_fx"] = ("fx", [ev("fx_main")] + _SIGNUP_STEPS + _SIGNUP_DONE)
    t["signup_pension"] = (
        "pension",
        [ev("pension_main", V, DETAIL)] + _SIGNUP_STEPS + _SIGNUP_DONE,
    )
    return t


@dataclass(frozen=True)
class TemplateTable:
    """All templates flattened into arrays for vectorized expansion."""

    names: tuple[str, ...]
    index: dict[str, int]
    product: np.ndarray  # per template, -1 when none
    offset: np.ndarray
    length: np.ndarray
    page: np.ndarray  # per flat event: index into PAGES
    action: np.ndarray  # index into CLICK_ACTIONS
    dwell_kind: np.ndarray
    code: np.ndarray  # index into TXN_CODES, -1 none
    code_prob: np.ndarray
    code2: np.ndarray

    def browse_variants(self, product: str) -> np.ndarray:
        """Template ids of the browsing variants of a product, shallow to deep."""
        return np.array([self.index[n] for n in self.names if n.startswith(f"browse_{product}_")])


def build_templates() -> TemplateTable:
    spec = _templates()
    names = tuple(spec)
    flat = [e for name in names for e in spec[name][1]]
    lengths = np.array([len(spec[name][1]) for name in names])
    code_idx = {c: i for i, c in enumerate(TXN_CODES)}
    return TemplateTable(
        names=names,
        index={n: i for i, n in enumerate(names)},
        product=np.array([PRODUCTS.index(spec[n][0]) if spec[n][0] else -1 for n in names]),
        offset=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
        length=lengths,
        page=np.array([PAGES.index(e[0]) for e in flat]),
        action=np.array([CLICK_ACTIONS.index(e[1]) for e in flat]),
        dwell_kind=np.array([e[2] for e in flat]),
        code=np.array([code_idx[e[3]] if e[3] else -1 for e in flat]),
        code_prob=np.array([e[4] for e in flat]),
        code2=np.array([code_idx[e[5]] if e[5] else -1 for e in flat]),
    )


def expand(templates: TemplateTable, part_template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Events of the parts, in part order: (part index per event, flat template position)."""
    lengths = templates.length[part_template]
    part_of_event = np.repeat(np.arange(len(part_template)), lengths)
    starts = np.cumsum(lengths) - lengths
    within = np.arange(lengths.sum()) - np.repeat(starts, lengths)
    return part_of_event, templates.offset[part_template][part_of_event] + within


def group_exclusive_cumsum(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Running sum of earlier values within consecutive groups (``group_start`` marks firsts)."""
    total = np.cumsum(values) - values
    first_idx = np.maximum.accumulate(np.where(group_start, np.arange(len(values)), 0))
    return total - total[first_idx]


def draw_dwell(kind: np.ndarray, need: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seconds on a page; detail pages get long reads (>= 180 s) when the need is high."""
    n = len(kind)
    medians = np.array([3.0, 18.0, 35.0, 8.0])[kind]
    sigma = np.array([0.6, 0.7, 0.6, 0.5])[kind]
    dwell = 2.0 + np.minimum(medians * np.exp(sigma * rng.standard_normal(n)), 170.0)
    long_read = (kind == DETAIL) & (rng.random(n) < 0.04 + 0.7 * need**2)
    dwell = np.where(long_read, 180.0 + rng.exponential(150.0, n), dwell)
    return np.round(dwell, 1)
