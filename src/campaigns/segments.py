"""Who: segments by rule, by model score, by upload, and set operations over them.

A rule is a SQL condition over the customer view as of a date. It is parsed with sqlglot and
only a whitelist of expressions is accepted (columns of the view, literals, comparisons,
boolean logic, IN, BETWEEN, IS NULL, arithmetic and ``detected('rule', days)``), so a rule can
neither read other tables nor run statements; it is then compiled to DuckDB SQL over the view
and the detections of the catalog; :func:`rule_query` gives the same query in Spark SQL (through
the feature SQL's transpiler) for a bank whose view and detections live on Spark.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
import sqlglot
from sqlglot import exp

from src.campaigns.spec import ModelSegment, Segment
from src.contact.policy import Offer
from src.data.catalog import Catalog

_ALLOWED: tuple[type[exp.Expression], ...] = (
    exp.Column,
    exp.Identifier,
    exp.Literal,
    exp.Boolean,
    exp.Null,
    exp.And,
    exp.Or,
    exp.Not,
    exp.Paren,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.In,
    exp.Between,
    exp.Is,
    exp.Neg,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Tuple,
    exp.Anonymous,
)
ID_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


class SegmentError(ValueError):
    """A segment that cannot be built; the message names the rule, column or row."""


@dataclass(frozen=True)
class Built:
    """A segment's members and what was reported while building it (unknown upload ids)."""

    ids: pd.Index
    problems: tuple[str, ...] = ()


def compile_rule(
    rule: str, columns: Sequence[str], as_of: datetime | str, detections: bool = True
) -> str:
    """The rule as a DuckDB WHERE condition over the view ``cv`` (and ``detections``).

    Raises :class:`SegmentError` naming the offending column or expression.
    """
    try:
        tree = sqlglot.parse_one(rule, read="duckdb")
    except sqlglot.errors.ParseError as error:
        raise SegmentError(f"rule {rule!r}: not a SQL condition ({error})") from None
    known = set(columns)
    stamp = f"TIMESTAMP '{pd.Timestamp(as_of):%Y-%m-%d %H:%M:%S}'"
    for node in tree.walk():
        if not isinstance(node, _ALLOWED):
            raise SegmentError(f"rule {rule!r}: {type(node).__name__} is not allowed in a rule")
        if isinstance(node, exp.Column) and (node.table or node.name not in known):
            raise SegmentError(f"rule {rule!r}: unknown column {node.sql()!r}")
        if isinstance(node, exp.Anonymous):
            _check_detected(rule, node, detections)

    def to_sql(node: Any) -> Any:
        if isinstance(node, exp.Anonymous):
            name, days = (a.this for a in node.expressions)
            rule_name = name.replace("'", "''")
            return sqlglot.parse_one(
                "cv.customer_id IN (SELECT customer_id FROM detections "
                f"WHERE rule = '{rule_name}' AND fired_at < {stamp} "
                f"AND fired_at >= {stamp} - INTERVAL {int(days)} DAY)",
                read="duckdb",
            )
        if isinstance(node, exp.Column):
            return exp.column(node.name, table="cv", quoted=True)
        return node

    return tree.transform(to_sql).sql(dialect="duckdb")


def rule_query(
    rule: str,
    columns: Sequence[str],
    as_of: datetime | str,
    detections: bool = True,
    dialect: Literal["duckdb", "spark"] = "duckdb",
) -> str:
    """``SELECT cv.customer_id FROM cv WHERE <rule>`` over the view registered as ``cv`` and the
    detections as ``detections``: DuckDB's, or the same query in Spark SQL (the transpiler the
    feature SQL uses, which refuses anything it cannot carry over)."""
    sql = f"SELECT cv.customer_id FROM cv WHERE {compile_rule(rule, columns, as_of, detections)}"
    if dialect == "spark":
        from src.features.spark import to_spark_sql

        return to_spark_sql(sql)
    return sql


def _check_detected(rule: str, node: exp.Anonymous, detections: bool) -> None:
    args = node.expressions
    if str(node.this).lower() != "detected":
        raise SegmentError(f"rule {rule!r}: unknown function {node.this!r} (only detected())")
    if (
        len(args) != 2
        or not isinstance(args[0], exp.Literal)
        or not args[0].is_string
        or not isinstance(args[1], exp.Literal)
        or args[1].is_string
    ):
        raise SegmentError(f"rule {rule!r}: use detected('rule_name', days)")
    if not detections:
        raise SegmentError(
            f"rule {rule!r}: detected() needs the detections as of this date: run `nextoffer detect`"
        )


class SegmentBuilder:
    """Builds segments as of one date from the catalog's view, detections and scores."""

    def __init__(
        self,
        catalog: Catalog,
        as_of: datetime | str,
        view: pd.DataFrame,
        offers: Iterable[Offer] | None = None,
    ) -> None:
        self.catalog = catalog
        self.as_of = pd.Timestamp(as_of)
        self.view = view
        #: offer -> (product, value_krw); the policy's offers when given (expected value)
        self.offers: dict[str, tuple[str, float]] | None = (
            None if offers is None else {o.offer_id: (o.product, o.value_krw) for o in offers}
        )
        # object-dtype ids: hash lookups (arrow-backed strings' isin loops in Python)
        self.known = pd.Index(np.asarray(view["customer_id"].astype(str), dtype=object))

    def build(self, segment: Segment) -> Built:
        if segment.rule is not None:
            return Built(self.rule_ids(segment.rule))
        if segment.model is not None:
            return Built(self.model_ids(segment.model))
        if segment.upload is not None:
            return self.upload_ids(segment.upload, segment.allow_unknown_ids)
        parts = [self.build(s) for s in (segment.union or segment.intersect or segment.minus or ())]
        problems = tuple(p for b in parts for p in b.problems)
        ids = parts[0].ids
        for part in parts[1:]:
            if segment.union is not None:
                ids = ids.union(part.ids)
            elif segment.intersect is not None:
                ids = ids.intersection(part.ids)
            else:
                ids = ids.difference(part.ids)
        return Built(ids.sort_values(), problems)

    def rule_ids(self, rule: str) -> pd.Index:
        """Customers of the view matching the rule (DuckDB)."""
        import duckdb

        det_path = self.catalog.path("detections", self.as_of)
        sql = rule_query(rule, list(self.view.columns), self.as_of, detections=det_path.exists())
        con = duckdb.connect()
        try:
            con.register("cv", self.view)
            if det_path.exists():
                detections = self.catalog.read(
                    "detections", self.as_of, columns=["customer_id", "rule", "fired_at"]
                )
                con.register("detections", detections)
            ids = con.execute(sql).fetchdf()["customer_id"].astype(str)
        finally:
            con.close()
        return pd.Index(ids).sort_values()

    def model_ids(self, model: ModelSegment) -> pd.Index:
        """Top-k / threshold on a model score of the view's customers (ties: by id)."""
        scores = self.model_scores(model)
        ids = pd.Index(np.asarray(scores["customer_id"].astype(str), dtype=object))
        scores = scores[self.known.get_indexer(ids) >= 0]
        if model.top_k is not None:
            scores = scores.sort_values(["score", "customer_id"], ascending=[False, True]).head(
                model.top_k
            )
        else:
            scores = scores[scores["score"] >= model.threshold]
        return pd.Index(scores["customer_id"].astype(str)).sort_values()

    def model_scores(self, model: ModelSegment) -> pd.DataFrame:
        """``customer_id, score`` of the segment's score: propensity of the product
        (``scores_{as_of}``), CVR of the offer (``cvr_scores_{as_of}``), or expected value
        (KRW) = that probability x the offer's value - the contact's cost."""
        if model.score == "propensity":
            product = model.product or self._offer(model.offer_id or "", "model.offer_id")[0]
            return self._propensity(product)
        offer_id = model.offer_id or ""
        product, offer_value = self._offer(offer_id, "model.offer_id")
        if model.score == "cvr" or model.rate == "cvr":
            rates = self._cvr(offer_id)
        else:
            rates = self._propensity(product)
        if model.score == "cvr":
            return rates
        value = offer_value if model.value_krw is None else model.value_krw
        return rates.assign(score=rates["score"] * value - model.net_cost)

    def _offer(self, offer_id: str, field: str) -> tuple[str, float]:
        """(product, value_krw) of an offer: the policy's offers, else the catalog's."""
        if self.offers is None:
            table = self.catalog.read("offers", columns=["offer_id", "product", "value_krw"])
            self.offers = {
                str(r.offer_id): (str(r.product), float(r.value_krw))
                for r in table.itertuples(index=False)
            }
        if offer_id not in self.offers:
            raise SegmentError(
                f"{field}: unknown offer {offer_id!r} (offers: {', '.join(sorted(self.offers))})"
            )
        return self.offers[offer_id]

    def _propensity(self, product: str) -> pd.DataFrame:
        return self._scores("scores", "product", product, "model.product", "`nextoffer score`")

    def _cvr(self, offer_id: str) -> pd.DataFrame:
        return self._scores(
            "cvr_scores", "offer_id", offer_id, "model.offer_id", "`nextoffer score --cvr`"
        )

    def _scores(self, dataset: str, key: str, value: str, field: str, command: str) -> pd.DataFrame:
        """(customer_id, score) of one product or offer from a scores table of the segment's
        date; a missing table or key is an error naming the command that makes it."""
        path = self.catalog.path(dataset, self.as_of)
        what = "CVR scores" if dataset == "cvr_scores" else "scores"
        if not path.exists():
            raise SegmentError(
                f"model segment: no {what} for {self.as_of:%Y-%m-%d} at {path} "
                f"(score the {'CVR ' if dataset == 'cvr_scores' else ''}champion first: {command})"
            )
        scores = self.catalog.read(dataset, self.as_of, columns=["customer_id", key, "score"])
        scores = scores[scores[key] == value]
        if scores.empty:
            kind = "offer" if key == "offer_id" else "product"
            raise SegmentError(f"{field}: no {what} for {kind} {value!r} at {path}")
        return scores[["customer_id", "score"]]

    def upload_ids(self, path: Any, allow_unknown: bool) -> Built:
        """A CSV with a ``customer_id`` column; malformed and unknown ids are reported with
        their row numbers (an error unless ``allow_unknown_ids``)."""
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise SegmentError(f"upload {path}: {error}") from None
        if "customer_id" not in frame.columns:
            raise SegmentError(f"upload {path}: no customer_id column (got {list(frame.columns)})")
        ids = frame["customer_id"].str.strip()
        rows = ids.index + 2  # header is line 1
        malformed = ~ids.str.match(ID_PATTERN)
        unknown = ~malformed & (self.known.get_indexer(np.asarray(ids, dtype=object)) < 0)
        problems = tuple(
            [
                f"upload {path} line {r}: malformed id {v!r}"
                for r, v in zip(rows[malformed], ids[malformed], strict=True)
            ]
            + [
                f"upload {path} line {r}: unknown id {v!r}"
                for r, v in zip(rows[unknown], ids[unknown], strict=True)
            ]
        )
        if problems and not allow_unknown:
            shown = "; ".join(problems[:5]) + (
                f"; ... {len(problems)} in all" if len(problems) > 5 else ""
            )
            raise SegmentError(shown)
        good = ids[~malformed & ~unknown]
        return Built(pd.Index(good.unique()).sort_values(), problems)
