"""Any team's decision log, checked and made explicit before anything is estimated from it.

A log is one row per decision (or per (decision, position) for slates): ``action`` shown,
``prob`` the logging policy chose it with, ``reward``; optionally ``decision_id``,
``customer_id`` (clusters the intervals), ``slot``, ``position``, ``ts`` and context columns.

Nothing is guessed silently:

- **candidates** (what the policy could have chosen) come from a ``candidates`` column, or from a
  catalog file of the offers eligible per slot (``slot``, ``offer_id``); deriving them from the
  actions the logger happened to show is allowed, with a warning that says how many actions
  each slot then has (an offer never shown cannot be evaluated, and looks as if it did not exist);
- **context** for the reward model is the list of columns the user names; a column with too many
  distinct values (an id, a timestamp) is refused by name instead of being one-hot encoded.

Candidate sets are stored once per distinct set (``sets``: codes into ``offers``) with each
row's set index, so a million rows over 80 offers do not hold 80 million strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from src.models.ope import LogError, read_log, validate_log

MAX_CATEGORIES = 100
POSITION_MODES = ("per-position", "independent")


@dataclass
class DecisionLog:
    """A validated log with explicit candidates (see the module docstring)."""

    frame: pd.DataFrame
    offers: np.ndarray  # every offer id that is a candidate somewhere (str)
    sets: np.ndarray  # (S, K) int codes into ``offers``, -1 padding
    set_size: np.ndarray  # (S,) candidates per set
    set_id: np.ndarray  # (n,) the row's candidate set
    action: np.ndarray  # (n,) index of the logged action within its row's set
    prob: np.ndarray
    reward: np.ndarray
    candidate_source: str  # "column" | "file" | "derived"
    name: str = "log"
    warnings: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.action)

    @property
    def width(self) -> int:
        return int(self.sets.shape[1])

    @property
    def n_candidates(self) -> np.ndarray:
        return self.set_size[self.set_id]

    def candidates(self) -> list[list[str]]:
        """Each row's candidate offer ids (lists shared between rows with the same set)."""
        lists = [
            [str(self.offers[c]) for c in row[:k]]
            for row, k in zip(self.sets, self.set_size, strict=True)
        ]
        return [lists[s] for s in self.set_id]

    def codes(self) -> np.ndarray:
        """(n, K) offer codes of every row's candidates (-1 padding)."""
        return self.sets[self.set_id]

    def row_label(self, i: int) -> str:
        """How an error names row ``i``: its decision id when the log has one."""
        if "decision_id" in self.frame.columns:
            return f"decision {self.frame['decision_id'].iloc[i]!r} (row {i})"
        return f"row {i}"

    def groups(self) -> np.ndarray | None:
        return self.frame["customer_id"].to_numpy() if "customer_id" in self.frame else None

    def subset(self, rows: np.ndarray) -> DecisionLog:
        """The same log restricted to ``rows`` (e.g. one position, a held-out time slice)."""
        return DecisionLog(
            frame=self.frame.iloc[rows].reset_index(drop=True),
            offers=self.offers,
            sets=self.sets,
            set_size=self.set_size,
            set_id=self.set_id[rows],
            action=self.action[rows],
            prob=self.prob[rows],
            reward=self.reward[rows],
            candidate_source=self.candidate_source,
            name=self.name,
            warnings=list(self.warnings),
        )

    def logged_mask(self) -> np.ndarray:
        """(n, K) True where the candidate was logged at least once in the row's slot (or in the
        whole log without slots): the target's mass elsewhere is invisible to IPS."""
        chosen = pd.Index(self.offers).get_indexer(self.frame["action"].to_numpy(object))
        slot = (
            pd.factorize(self.frame["slot"].astype(str))[0]
            if "slot" in self.frame
            else np.zeros(self.n, dtype=np.int64)
        )
        n_slots = int(slot.max()) + 1
        logged = np.zeros((n_slots, len(self.offers)), dtype=bool)
        logged[slot, chosen] = True
        pair, first = np.unique(slot * len(self.sets) + self.set_id, return_inverse=True)
        out = np.zeros((len(pair), self.width), dtype=bool)
        for p, key in enumerate(pair):
            s, k = divmod(int(key), len(self.sets))
            size = self.set_size[k]
            out[p, :size] = logged[s, self.sets[k, :size]]
        return out[first]


def _split_ids(value: object) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [s.strip() for s in str(value).split(",") if s.strip()]


def _read_table(path: Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise LogError(f"no {what} at {path}")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    raise LogError(f"{path.name}: the {what} must be .parquet or .csv")


def read_candidates_file(path: Path | str) -> dict[str, list[str]]:
    """Offers eligible per slot from a catalog file (``slot`` and ``offer_id`` or ``action``).

    An offer eligible in several slots is listed once per slot; listed twice in the same slot it
    counts once (a doubled candidate would halve every probability).
    """
    table = _read_table(Path(path), "candidates file")
    name = Path(path).name
    offer_col = "action" if "action" in table.columns else "offer_id"
    offer_col = "offer_id" if "offer_id" in table.columns else offer_col
    missing = [c for c in ("slot", offer_col) if c not in table.columns]
    if missing:
        raise LogError(
            f"{name}: missing column(s) {missing}; the candidates file needs 'slot' and "
            "'offer_id' (one row per offer eligible in a slot)"
        )
    for col in ("slot", offer_col):
        bad = table[col].isna()
        if bad.any():
            raise LogError(
                f"{name}: column '{col}' has empty values, first at row {int(np.flatnonzero(bad)[0])}"
            )
    out: dict[str, list[str]] = {}
    for slot, offer in zip(table["slot"].astype(str), table[offer_col].astype(str), strict=True):
        ids = out.setdefault(slot, [])
        if offer not in ids:
            ids.append(offer)
    return out


def _slot_summary(per_slot: dict[str, list[str]]) -> str:
    items = sorted(per_slot.items())
    shown = ", ".join(f"{s}: {len(ids)}" for s, ids in items[:10])
    return shown + (f" (and {len(items) - 10} more slots)" if len(items) > 10 else "")


def build_log(
    frame: pd.DataFrame,
    *,
    candidates: dict[str, list[str]] | Path | str | None = None,
    name: str = "log",
) -> DecisionLog:
    """Explicit candidates for a validated frame (:func:`src.models.ope.read_log`).

    ``candidates``: offers eligible per slot (a mapping, or the path of a catalog file); else the
    frame's ``candidates`` column; else derived from the logged actions per slot, with a warning.
    """
    frame = frame.reset_index(drop=True)
    warnings: list[str] = []
    if candidates is not None:
        per_slot = (
            dict(candidates)
            if isinstance(candidates, dict)
            else read_candidates_file(Path(candidates))
        )
        if "slot" not in frame.columns:
            raise LogError(
                f"{name}: a candidates file lists offers per slot, but the log has no 'slot' column"
            )
        slots = frame["slot"].astype(str)
        unknown = sorted(set(slots.unique()) - set(per_slot))
        if unknown:
            first = int(np.flatnonzero(slots.isin(unknown).to_numpy())[0])
            raise LogError(
                f"{name}: slot(s) {unknown[:5]} have no offers in the candidates file "
                f"(first at row {first})"
            )
        keys = list(per_slot)
        raw_sets = [per_slot[k] for k in keys]
        set_id = pd.Index(keys).get_indexer(slots.to_numpy(object))
        source = "file"
    elif "candidates" in frame.columns:
        bad = frame["candidates"].isna()
        if bad.any():
            raise LogError(
                f"{name}: column 'candidates' has empty values in {int(bad.sum())} row(s), "
                f"first at row {int(np.flatnonzero(bad)[0])}"
            )
        keys_series = frame["candidates"].map(
            lambda v: ",".join(_split_ids(v)) if not isinstance(v, str) else v
        )
        set_id, uniques = pd.factorize(keys_series)
        raw_sets = [list(dict.fromkeys(_split_ids(u))) for u in uniques]
        empty = [i for i, s in enumerate(raw_sets) if not s]
        if empty:
            row = int(np.flatnonzero(set_id == empty[0])[0])
            raise LogError(f"{name}: row {row} has an empty 'candidates' list")
        source = "column"
    else:
        slots = (
            frame["slot"].astype(str)
            if "slot" in frame.columns
            else pd.Series("(all)", index=frame.index)
        )
        per_slot = {
            str(s): sorted(a.unique().tolist()) for s, a in frame["action"].groupby(slots.values)
        }
        warnings.append(
            "candidates derived from the logged actions (no 'candidates' column, no "
            f"--candidates file): actions per slot {_slot_summary(per_slot)}; offers the "
            "logger never showed are not evaluated"
        )
        keys = list(per_slot)
        raw_sets = [per_slot[k] for k in keys]
        set_id = pd.Index(keys).get_indexer(slots.to_numpy(object))
        source = "derived"
    offers = np.array(sorted({o for s in raw_sets for o in s}), dtype=object)
    code = {o: j for j, o in enumerate(offers)}
    width = max(len(s) for s in raw_sets)
    sets = np.full((len(raw_sets), width), -1, dtype=np.int64)
    for i, s in enumerate(raw_sets):
        sets[i, : len(s)] = [code[o] for o in s]
    set_size = np.array([len(s) for s in raw_sets], dtype=np.int64)
    # position of every offer within every set, then of every row's logged action
    where = np.full((len(raw_sets), len(offers) + 1), -1, dtype=np.int64)
    for i, s in enumerate(raw_sets):
        where[i, [code[o] for o in s]] = np.arange(len(s))
    act_code = pd.Index(offers).get_indexer(frame["action"].to_numpy(object))
    act_code[act_code < 0] = len(offers)
    action = where[set_id, act_code]
    bad = np.flatnonzero(action < 0)
    if len(bad):
        i = int(bad[0])
        shown = raw_sets[set_id[i]]
        label = (
            f"decision {frame['decision_id'].iloc[i]!r} (row {i})"
            if "decision_id" in frame
            else f"row {i}"
        )
        raise LogError(
            f"{name}: {label}: action {frame['action'].iloc[i]!r} is not among its candidates "
            f"{shown[:10]}{' ...' if len(shown) > 10 else ''} ({len(bad)} row(s) like this)"
        )
    return DecisionLog(
        frame=frame,
        offers=offers,
        sets=sets,
        set_size=set_size,
        set_id=np.asarray(set_id, dtype=np.int64),
        action=action,
        prob=frame["prob"].to_numpy(float),
        reward=frame["reward"].to_numpy(float),
        candidate_source=source,
        name=name,
        warnings=warnings,
    )


def load_log(
    log: pd.DataFrame | Path | str,
    *,
    candidates: dict[str, list[str]] | Path | str | None = None,
) -> DecisionLog:
    """A log from a file (Parquet/CSV) or a frame, validated, with explicit candidates."""
    if isinstance(log, pd.DataFrame):
        frame, name = validate_log(log), "log"
    else:
        frame, name = read_log(log), Path(log).name
    return build_log(frame, candidates=candidates, name=name)


# --- context --------------------------------------------------------------------------------


def context_columns(
    frame: pd.DataFrame, columns: Sequence[str], max_categories: int = MAX_CATEGORIES
) -> pd.DataFrame:
    """The named context columns as model input: numbers as float, categories as integer codes
    (``-1`` missing). Refuses, by name, unknown columns, timestamps and categories with more than
    ``max_categories`` distinct values (an id or a time would be one huge one-hot)."""
    columns = [c for col in columns for c in str(col).split(",") if c.strip()]
    columns = [c.strip() for c in columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise LogError(
            f"context column(s) {missing} are not in the log; its columns: {list(frame.columns)}"
        )
    out: dict[str, np.ndarray] = {}
    refused: list[str] = []
    for c in columns:
        s = frame[c]
        if pd.api.types.is_datetime64_any_dtype(s) or pd.api.types.is_timedelta64_dtype(s):
            refused.append(f"{c} (a timestamp)")
        elif pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            out[c] = s.astype(float).to_numpy()
        else:
            codes, uniques = pd.factorize(s.astype("object"))
            if len(uniques) > max_categories:
                refused.append(f"{c} ({len(uniques):,} distinct values)")
            else:
                out[c] = codes.astype(float)
                out[c][codes < 0] = np.nan
    if refused:
        raise LogError(
            f"context column(s) with too many distinct values for a reward model: "
            f"{', '.join(refused)}; at most {max_categories} categories (bucket them, or leave "
            "them out of --context)"
        )
    return pd.DataFrame(out, index=frame.index)


def categorical_context(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Which of the context columns are categories (coded by :func:`context_columns`)."""
    return [
        c
        for c in columns
        if not pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    ]
