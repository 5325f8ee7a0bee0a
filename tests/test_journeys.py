"""Journey analysis on hand-made event streams with hand-computed expectations."""

from __future__ import annotations

from datetime import timedelta

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from src.data.schemas import StitchedEvents
from src.features.detection.events import EVENT_FIELDS
from src.features.journeys import (
    SESSION_START,
    attribution_summary,
    customer_journey,
    funnel,
    page_visits,
    paths_around,
    paths_to,
    plot_funnel,
    plot_top_paths,
    sankey_figure,
    sankey_links,
    sankey_static,
    session_table,
    sessionize,
    shorten_paths,
    start_to_end_paths,
    top_paths,
)

T0 = pd.Timestamp("2026-01-05 09:00")
COLUMNS = list(EVENT_FIELDS)  # the stitched stream the journeys read


class Stream:
    """Builds a stitched event stream row by row; times are minutes after ``T0``."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def _id(self) -> int:
        return len(self.rows) + 1

    def click(
        self,
        cust: str | None,
        minute: float,
        page: str,
        channel: str = "app",
        sid: int = 1,
        action: str = "view",
    ) -> Stream:
        self.rows.append(
            {
                "event_id": self._id(),
                "ts": T0 + pd.Timedelta(minutes=minute),
                "customer_id": cust,
                "source": "click",
                "channel": channel,
                "session_id": sid,
                "page": page,
                "action": action,
                "dwell_seconds": 5.0,
                "referrer": "direct",
                "code": None,
                "amount": None,
                "currency": None,
                "product": None,
                "amount_krw": None,
            }
        )
        return self

    def pages(
        self, cust: str | None, start: float, pages: str, channel: str = "app", sid: int = 1
    ) -> Stream:
        """One click a minute on each page of ``'a > b > c'``."""
        for i, p in enumerate(pages.split(" > ")):
            self.click(cust, start + i, p, channel=channel, sid=sid)
        return self

    def txn(
        self,
        cust: str | None,
        minute: float,
        code: str,
        channel: str = "app",
        amount: float = 1000.0,
        sid: int | None = None,
    ) -> Stream:
        self.rows.append(
            {
                "event_id": self._id(),
                "ts": T0 + pd.Timedelta(minutes=minute),
                "customer_id": cust,
                "source": "txn",
                "channel": channel,
                "session_id": sid,
                "page": None,
                "action": None,
                "dwell_seconds": None,
                "referrer": None,
                "code": code,
                "amount": amount,
                "currency": "KRW",
                "product": None,
                "amount_krw": amount,
            }
        )
        return self

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=COLUMNS)
        df["ts"] = df["ts"].astype("datetime64[us]")
        df["session_id"] = df["session_id"].astype("Int64")
        for c in [
            "customer_id",
            "source",
            "channel",
            "page",
            "action",
            "referrer",
            "code",
            "currency",
            "product",
        ]:
            df[c] = df[c].astype("str")
        return df


def _sessions_by_event(s: pd.DataFrame) -> dict[int, object]:
    return dict(zip(s["event_id"], s["journey_session"].astype("object"), strict=True))


# --- sessionize -------------------------------------------------------------------------


def test_fixture_matches_the_stitched_events_contract() -> None:
    df = Stream().click("c1", 0, "home").txn("c1", 1, "TRANSFER").click(None, 2, "login").frame()
    StitchedEvents.validate(df)


def test_inactivity_gap_splits_and_exact_gap_does_not() -> None:
    ev = (
        Stream()
        .click("c1", 0, "home")
        .click("c1", 10, "account_summary")
        .click("c1", 40, "transfer_input")  # exactly 30 min later: same session
        .click("c1", 70.5, "home")  # 30.5 min later: new session
        .click("c1", 71, "events")
        .frame()
    )
    s = sessionize(ev, gap=timedelta(minutes=30))
    assert _sessions_by_event(s) == {1: 1, 2: 1, 3: 1, 4: 2, 5: 2}
    s10 = sessionize(ev, gap=timedelta(minutes=10))
    assert _sessions_by_event(s10) == {1: 1, 2: 1, 3: 2, 4: 3, 5: 3}


def test_channel_switch_splits_only_when_asked() -> None:
    ev = (
        Stream()
        .click("c1", 0, "home", "app")
        .click("c1", 1, "home", "web", sid=2)
        .click("c1", 2, "fx_main", "web", sid=2)
        .click("c1", 3, "fx_rates", "app")
        .frame()
    )
    assert _sessions_by_event(sessionize(ev)) == {1: 1, 2: 2, 3: 2, 4: 3}
    assert _sessions_by_event(sessionize(ev, split_on_channel_switch=False)) == {
        1: 1,
        2: 1,
        3: 1,
        4: 1,
    }


def test_sessions_ignore_raw_session_id_and_are_numbered_per_customer() -> None:
    ev = (
        Stream()
        .click("c2", 0, "home", sid=7)
        .click("c1", 1, "home", sid=1)
        .click("c1", 45, "home", sid=1)  # same raw session, 44 min later: new journey
        .click("c2", 3, "fx_main", sid=8)  # new raw session, 3 min later: same journey
        .click("c2", 200, "home", sid=9)
        .frame()
    )
    s = sessionize(ev)
    assert _sessions_by_event(s) == {1: 1, 2: 1, 3: 2, 4: 1, 5: 2}
    # one global key per (customer, journey_session), ordered by customer then start
    pairs = s[["customer_id", "journey_session", "session_key"]].drop_duplicates()
    assert pairs["session_key"].tolist() == [0, 1, 2, 3]
    assert pairs["customer_id"].tolist() == ["c1", "c1", "c2", "c2"]
    # rows keep their index, and are ordered by session then time
    assert sorted(s.index) == list(range(5))
    assert s["event_id"].tolist() == [2, 3, 1, 4, 5]


def test_transactions_join_the_session_they_fall_in() -> None:
    ev = (
        Stream()
        .click("c1", 0, "transfer_input")
        .click("c1", 2, "transfer_done")
        .txn("c1", 5, "TRANSFER", "app")  # 3 min after the last click: joins session 1
        .txn("c1", 1, "DEPOSIT", "branch")  # branch during the app visit: standalone
        .txn("c1", 4, "FX_REMIT", "web")  # web txn, app session: other channel
        .txn("c1", 40, "CARD_PAYMENT", "app")  # 38 min after the last click: standalone
        .txn("c1", 45, "WITHDRAWAL", "app")  # 5 min after that: same standalone session
        .frame()
    )
    s = sessionize(ev)
    by_code = dict(zip(s["code"].fillna("-"), s["journey_session"].astype("object"), strict=True))
    assert by_code["TRANSFER"] == by_code["-"] == 1
    assert by_code["DEPOSIT"] == 2  # numbered by start: the branch visit began at minute 1
    assert by_code["FX_REMIT"] == 3
    assert by_code["CARD_PAYMENT"] == by_code["WITHDRAWAL"] == 4

    merged = sessionize(ev, split_on_channel_switch=False)
    by_code = dict(
        zip(merged["code"].fillna("-"), merged["journey_session"].astype("object"), strict=True)
    )
    assert by_code["FX_REMIT"] == by_code["TRANSFER"] == by_code["-"]

    none = sessionize(ev, standalone_txn="none")
    lone = none.loc[none["code"].isin(["DEPOSIT", "FX_REMIT", "CARD_PAYMENT", "WITHDRAWAL"])]
    assert lone["journey_session"].isna().all() and lone["session_key"].isna().all()
    assert none.loc[none["code"] == "TRANSFER", "journey_session"].tolist() == [1]


def test_unattributed_events_get_no_journey_session_but_a_device_session_key() -> None:
    ev = (
        Stream()
        .pages("c1", 0, "home > login")
        .pages(None, 0, "login > error", sid=9)
        .pages(None, 100, "home", sid=9)
        .pages(None, 1, "home", sid=5)
        .frame()
    )
    s = sessionize(ev)
    anon = s.loc[s["customer_id"].isna()]
    assert anon["journey_session"].isna().all()
    # device session 9 splits on the gap; device session 5 is its own; none merges with c1
    assert anon["session_key"].nunique() == 3
    assert set(anon["session_key"]).isdisjoint(set(s.loc[s["customer_id"].notna(), "session_key"]))
    assert page_visits(s)["customer_id"].eq("c1").all()
    assert len(page_visits(s, include_unattributed=True)) == 2 + 2 + 1 + 1


def test_sessionize_handles_empty_input() -> None:
    s = sessionize(Stream().frame())
    assert len(s) == 0 and {"journey_session", "session_key"} <= set(s.columns)
    assert len(session_table(s)) == 0 and len(paths_around(s, "error")) == 0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", None]), st.integers(0, 240), st.sampled_from(["app", "web"])
        ),
        min_size=1,
        max_size=40,
    )
)
def test_sessionize_invariants(rows: list[tuple[str | None, int, str]]) -> None:
    stream = Stream()
    for cust, minute, channel in rows:
        stream.click(cust, minute, "home", channel)
    s = sessionize(stream.frame(), gap=timedelta(minutes=30))
    known = s.loc[s["customer_id"].notna()]
    assert s["journey_session"].notna().sum() == len(known)
    for _, g in known.groupby("customer_id"):
        g = g.sort_values(["ts", "event_id"])
        js = g["journey_session"].to_numpy(dtype=int)
        assert js[0] == 1 and set(np.diff(js)) <= {0, 1}
        dt = g["ts"].diff().dt.total_seconds().to_numpy()[1:] / 60
        switch = g["channel"].to_numpy()[1:] != g["channel"].to_numpy()[:-1]
        assert ((np.diff(js) == 1) == ((dt > 30) | switch)).all()


# --- sessions and one customer's journey -------------------------------------------------


def test_customer_journey_one_row_per_session_with_collapsed_path_and_transactions() -> None:
    ev = (
        Stream()
        .click("c1", 0, "home")
        .click("c1", 1, "transfer_input")
        .click("c1", 2, "transfer_input", action="submit")
        .click("c1", 3, "transfer_done")
        .txn("c1", 3, "TRANSFER", amount=50_000)
        .click("c1", 4, "home")
        .txn("c1", 6, "BALANCE_INQUIRY", amount=0)
        .txn("c1", 300, "DEPOSIT", "branch", amount=10_000)
        .pages("c2", 0, "fx_main > fx_rates")
        .frame()
    )
    j = customer_journey(ev, "c1")
    assert j["journey_session"].tolist() == [1, 2]
    first, branch = j.iloc[0], j.iloc[1]
    assert first["path"] == "home > transfer_input > transfer_done > home"
    assert (first["entry_page"], first["exit_page"], first["n_pages"]) == ("home", "home", 4)
    assert first["txn_codes"] == ("TRANSFER", "BALANCE_INQUIRY")
    assert first["txn_amounts"] == (50_000.0, 0.0)
    assert first["duration"] == pd.Timedelta(minutes=6)
    assert (first["channels"], first["n_events"], first["n_clicks"]) == ("app", 7, 5)
    assert branch["path"] == "" and branch["channels"] == "branch"
    assert branch["txn_codes"] == ("DEPOSIT",) and branch["n_txn"] == 1
    # the same rows as summarising the whole stream
    whole = session_table(ev)
    pd.testing.assert_frame_equal(
        whole.loc[whole["customer_id"] == "c1"].drop(columns="session_key").reset_index(drop=True),
        j.drop(columns="session_key"),
    )


def test_session_table_lists_every_channel_of_a_merged_session() -> None:
    ev = Stream().click("c1", 0, "home", "web").click("c1", 1, "home", "app").frame()
    t = session_table(sessionize(ev, split_on_channel_switch=False))
    assert t["channels"].tolist() == ["app+web"] and t["path"].tolist() == ["home"]


def test_attribution_summary_counts_unattributed_events() -> None:
    ev = (
        Stream()
        .pages("c1", 0, "home > login")
        .pages(None, 0, "login > error", sid=9)
        .txn("c1", 3, "TRANSFER")
        .frame()
    )
    a = attribution_summary(ev).set_index("source")
    assert a.loc["click", ["events", "attributed", "unattributed"]].tolist() == [4, 2, 2]
    assert a.loc["all", "unattributed_share"] == pytest.approx(2 / 5)
    assert a.loc["all", "anonymous_raw_sessions"] == 1  # raw session 1 has known events


# --- paths ----------------------------------------------------------------------------------


def _path_stream() -> pd.DataFrame:
    return (
        Stream()
        .pages("c1", 0, "home > account_summary > transfer_input > error > transfer_input")
        .pages("c1", 100, "transfer_input > transfer_done")  # a new session
        .pages("c2", 0, "login > home > transfer_input > transfer_done > home")
        .pages(None, 0, "fx_main > transfer_input", sid=99)  # unattributed
        .frame()
    )


def test_paths_around_truncates_at_session_boundaries() -> None:
    p = paths_around(_path_stream(), "transfer_input", before=2, after=2)
    got = p[["customer_id", "journey_session", "step", "before_path", "after_path"]]
    assert got.values.tolist() == [
        ["c1", 1, 3, "home > account_summary", "error > transfer_input"],
        ["c1", 1, 5, "transfer_input > error", ""],
        ["c1", 2, 1, "", "transfer_done"],
        ["c2", 1, 3, "login > home", "transfer_done > home"],
    ]
    row = p.iloc[1]
    assert row["before_2"] == "transfer_input" and row["before_1"] == "error"
    assert pd.isna(row["after_1"]) and pd.isna(row["after_2"])
    assert row["path"] == "transfer_input > error > transfer_input"
    assert p.iloc[2]["path"] == "transfer_input > transfer_done"
    with_anon = paths_around(_path_stream(), "transfer_input", 2, 2, include_unattributed=True)
    assert len(with_anon) == 5 and with_anon["customer_id"].isna().sum() == 1


def test_top_paths_orders_by_count_then_path_and_shares_over_all_rows() -> None:
    paths = pd.DataFrame({"path": ["b", "a", "c", "b", "c", "d", "b", None]})
    t = top_paths(paths, k=3)
    assert t["path"].tolist() == ["b", "c", "a"]  # a and d tie at 1: alphabetical
    assert t["count"].tolist() == [3, 2, 1]
    assert t["share"].tolist() == pytest.approx([3 / 7, 2 / 7, 1 / 7])
    assert t["rank"].tolist() == [1, 2, 3]
    assert t["cum_share"].iloc[-1] == pytest.approx(6 / 7)


def test_start_to_end_paths_counts_whole_sessions_without_page_less_ones() -> None:
    ev = (
        Stream()
        .pages("c1", 0, "home > account_summary")
        .pages("c1", 100, "home > account_summary")
        .pages("c2", 0, "home > fx_main > account_summary")
        .pages("c3", 0, "login")
        .txn("c3", 500, "DEPOSIT", "branch")
        .frame()
    )
    t = start_to_end_paths(session_table(ev), k=None)
    assert t["path"].tolist() == [
        "home > account_summary",
        "home > fx_main > account_summary",
        "login",
    ]
    assert t["count"].tolist() == [2, 1, 1]
    assert t["share"].sum() == pytest.approx(1.0)
    assert t.iloc[1][["entry_page", "exit_page", "n_steps"]].tolist() == [
        "home",
        "account_summary",
        3,
    ]
    pairs = start_to_end_paths(ev, by="entry_exit")
    assert pairs.iloc[0][["entry_page", "exit_page", "count"]].tolist() == [
        "home",
        "account_summary",
        3,
    ]


def test_paths_to_error_counts_rates_and_session_starts() -> None:
    ev = (
        Stream()
        .pages("c1", 0, "home > transfer_input > error")
        .pages("c2", 0, "home > transfer_input > transfer_done")
        .pages("c3", 0, "login > error")
        .pages("c4", 0, "error > home")
        .pages(None, 0, "home > transfer_input > error", sid=50)
        .frame()
    )
    p = paths_to(ev, "error", before=2)
    assert p["path"].tolist() == [SESSION_START, "home > transfer_input", "login"]
    assert p["count"].tolist() == [1, 1, 1]
    assert p["occurrences"].tolist() == [4, 2, 1]  # 4 sessions start; the pair occurs twice
    assert p["rate"].tolist() == pytest.approx([0.25, 0.5, 1.0])
    assert p["customers"].tolist() == [1, 1, 1]
    with_anon = paths_to(ev, "error", before=2, include_unattributed=True)
    assert with_anon.iloc[0][["path", "count", "occurrences"]].tolist() == [
        "home > transfer_input",
        2,
        3,
    ]
    assert paths_to(ev, "no_such_page").empty


def test_paths_to_agrees_with_paths_around() -> None:
    ev = _path_stream()
    to = paths_to(ev, "transfer_input", before=2)
    around = paths_around(ev, "transfer_input", before=2, after=0)
    expected = top_paths(around["before_path"].replace("", SESSION_START), k=None)
    merged = to.merge(expected, on="path", suffixes=("", "_around"))
    assert len(merged) == len(to) == len(expected)
    assert (merged["count"] == merged["count_around"]).all()


# --- funnel ----------------------------------------------------------------------------------

STEPS = ["loan_main", "loan_limit_inquiry", "loan_apply_step1"]


def _funnel_stream() -> tuple[pd.DataFrame, pd.DataFrame]:
    ev = (
        Stream()
        .pages("A", 0, "loan_main > home > loan_limit_inquiry > loan_apply_step1")  # 3
        .pages("B", 0, "loan_main > loan_apply_step1 > loan_limit_inquiry")  # 2: skips
        .pages("C", 0, "loan_limit_inquiry > loan_main")  # 1
        .pages("D", 0, "loan_main")
        .pages("D", 100, "loan_limit_inquiry")  # 1: 2 sessions
        .pages("F", 0, "loan_main > loan_limit_inquiry")  # 2, unknown
        .pages(None, 0, "loan_main > loan_limit_inquiry > loan_apply_step1", sid=9)  # excluded
        .frame()
    )
    customers = pd.DataFrame(
        {
            "customer_id": ["A", "B", "C", "D", "E"],
            "life_stage": ["family", "family", "student", "student", "retiree"],
        }
    )
    return ev, customers


def test_funnel_by_segment_counts_in_order_within_a_session() -> None:
    ev, customers = _funnel_stream()
    f = funnel(ev, STEPS, by="life_stage", customers=customers).set_index(["segment", "step_no"])
    assert f.loc["family", "count"].tolist() == [2, 2, 1]
    assert f.loc["family", "conv_from_prev"].tolist() == pytest.approx([1.0, 1.0, 0.5])
    assert f.loc["family", "drop_off"].tolist() == [0, 0, 1]
    assert f.loc["student", "count"].tolist() == [2, 0, 0]
    assert f.loc["student", "drop_off"].tolist() == [0, 2, 0]
    assert f.loc["student", "conv_from_first"].tolist()[:2] == [1.0, 0.0]
    assert np.isnan(f.loc[("student", 3), "conv_from_prev"])
    assert f.loc["(unknown)", "count"].tolist() == [1, 1, 0]
    assert f.loc["retiree", "count"].tolist() == [0, 0, 0] and f.loc[("retiree", 1), "base"] == 0
    assert f.loc[("family", 1), "base"] == 2
    assert list(dict.fromkeys(f.index.get_level_values(0))) == [
        "family",
        "retiree",
        "student",
        "(unknown)",
    ]
    assert f.loc[("family", 2), "step"] == "loan_limit_inquiry"


def test_funnel_overall_by_session_and_with_categorical_segments() -> None:
    ev, customers = _funnel_stream()
    overall = funnel(ev, STEPS)
    assert overall["segment"].unique().tolist() == ["all"]
    assert overall["count"].tolist() == [5, 3, 1]  # A B C D F
    sessions = funnel(ev, STEPS, unit="session")
    assert sessions["count"].tolist() == [5, 3, 1]  # D's 2nd session never starts
    assert sessions["base"].iloc[0] == 6
    customers["life_stage"] = pd.Categorical(
        customers["life_stage"], ["student", "family", "retiree"]
    )
    seg = funnel(ev, STEPS, by="life_stage", customers=customers)
    assert list(dict.fromkeys(seg["segment"])) == ["student", "family", "retiree", "(unknown)"]
    with pytest.raises(ValueError):
        funnel(ev, STEPS, by="life_stage")


def test_funnel_within_tries_every_start() -> None:
    ev = (
        Stream()
        .click("A", 0, "loan_main")
        .click("A", 2, "loan_limit_inquiry")
        .click("A", 12, "loan_apply_step1")  # 12 min after step 1
        .click("G", 0, "loan_main")
        .click("G", 20, "loan_main", action="click")
        .click("G", 21, "home")
        .click("G", 22, "loan_main")
        .click("G", 24, "loan_limit_inquiry")
        .frame()
    )
    f = funnel(ev, STEPS, within=timedelta(minutes=5))
    assert f["count"].tolist() == [2, 2, 0]
    assert funnel(ev, STEPS)["count"].tolist() == [2, 2, 1]


def test_funnel_steps_can_be_transaction_codes() -> None:
    ev = (
        Stream()
        .pages("A", 0, "loan_main > loan_limit_inquiry")
        .txn("A", 3, "LOAN_LIMIT_INQUIRY")
        .pages("B", 0, "loan_main > loan_limit_inquiry")
        .txn("B", 500, "LOAN_LIMIT_INQUIRY")  # hours later: not in the session
        .frame()
    )
    f = funnel(ev, ["loan_main", "loan_limit_inquiry", "LOAN_LIMIT_INQUIRY"])
    assert f["count"].tolist() == [2, 2, 1]


# --- plots ----------------------------------------------------------------------------------


def test_sankey_links_and_figure_from_paths_around() -> None:
    p = paths_around(_path_stream(), "transfer_input", before=1, after=1)
    links = sankey_links(p)
    assert links.values.tolist() == [
        ["step -1: account_summary", "step 0: transfer_input", 1.0],
        ["step -1: error", "step 0: transfer_input", 1.0],
        ["step -1: home", "step 0: transfer_input", 1.0],
        ["step 0: transfer_input", "step +1: error", 1.0],
        ["step 0: transfer_input", "step +1: transfer_done", 2.0],
    ]
    fig = sankey_figure(p, title="around transfer_input")
    trace = fig.data[0]
    assert trace.type == "sankey"
    assert "step 0: transfer_input" in trace.node.label
    assert sum(trace.link.value) == pytest.approx(6.0)


def test_sankey_from_weighted_path_table() -> None:
    t = pd.DataFrame({"path": ["home > login > error", "home > fx_main"], "count": [3, 2]})
    links = sankey_links(t).set_index(["source", "target"])["value"]
    assert links[("step 1: home", "step 2: login")] == 3
    assert links[("step 1: home", "step 2: fx_main")] == 2
    assert links[("step 2: login", "step 3: error")] == 3
    assert len(sankey_figure(t).data[0].node.label) == 4


def test_plot_functions_return_figures() -> None:
    ev, customers = _funnel_stream()
    f = funnel(ev, STEPS, by="life_stage", customers=customers)
    fig = plot_funnel(f)
    ax = fig.axes[0]
    assert len(ax.containers) == 4  # one bar series per segment
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        f"{i}. {s}" for i, s in enumerate(STEPS, start=1)
    ]
    plt.close(fig)
    _, ax = plt.subplots()
    assert plot_funnel(f, ax=ax, value="conv_from_first") is ax.figure
    plt.close(ax.figure)
    top = top_paths(paths_around(_path_stream(), "transfer_input", 2, 2), k=3)
    fig = plot_top_paths(top)
    assert len(fig.axes[0].patches) == 3
    plt.close(fig)


def test_shortened_path_labels_keep_both_ends_and_stay_distinct() -> None:
    a = "home > " + " > ".join(["account"] * 20) + " > transfer_input"
    b = "login > " + " > ".join(["account"] * 20) + " > transfer_input"
    labels = shorten_paths([a, b, "home > fx_main"], max_label=40)
    assert all(len(label) <= 45 for label in labels)
    assert labels[0].startswith("home") and labels[0].endswith("transfer_input")
    assert labels[1].startswith("login") and labels[1].endswith("transfer_input")
    assert labels[2] == "home > fx_main"
    assert len(set(labels)) == 3
    # same start and end, different middle: numbered rather than merged
    mid = " > ".join(["account"] * 10)
    c, d = (f"home > {mid} > {page} > {mid} > transfer_input" for page in ("loan", "fx"))
    same_ends = shorten_paths([c, d], max_label=30)
    assert len(set(same_ends)) == 2 and same_ends[0].startswith("#1 ")


def test_plots_have_titles_and_axis_labels() -> None:
    ev, customers = _funnel_stream()
    fig = plot_funnel(funnel(ev, STEPS, by="life_stage", customers=customers))
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel() == "step"
    plt.close(fig)
    around = paths_around(_path_stream(), "transfer_input", 2, 2)
    fig = plot_top_paths(top_paths(around, k=3), title="top")
    ax = fig.axes[0]
    assert ax.get_title() == "top" and ax.get_xlabel() and ax.get_ylabel() == "path"
    plt.close(fig)
    fig = sankey_static(around, title="around transfer_input")
    ax = fig.axes[0]
    assert ax.get_title() == "around transfer_input" and ax.get_xlabel() and ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["step -2", "step -1", "step 0"]
    # one band per link with a value
    assert len(ax.collections) == len(sankey_links(around))
    plt.close(fig)
