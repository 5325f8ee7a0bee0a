"""Rule files: the shipped rules load, and every kind of invalid file gets a precise error."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.features.detection import RuleError, load_rules
from src.features.detection.rules import NS, parse_duration

SHIPPED = {
    "fx_remit_large",
    "loan_inquiry_no_application",
    "signup_abandoned",
    "product_page_dwell",
    "campaign_target_not_reached",
    "repeated_errors",
}

VALID = """
name: r1
action: {type: flag}
within: 1h
steps:
  - name: a
    source: click
    where: {page: home}
  - name: b
    source: txn
    where: {code: TRANSFER}
"""


def _write(tmp_path: Path, text: str, name: str = "rule.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_rules_load() -> None:
    rules = {r.name: r for r in load_rules()}
    assert set(rules) == SHIPPED
    fx = rules["fx_remit_large"]
    assert fx.kind == "match" and fx.within_ns == 30 * 60 * NS
    assert ("amount_krw", "gte", 10_000_000.0) in fx.steps[1].preds
    assert rules["loan_inquiry_no_application"].kind == "timeout"
    assert rules["loan_inquiry_no_application"].steps[1].within_ns == 7 * 86400 * NS
    assert rules["repeated_errors"].steps[0].count == (3, 300 * NS, "page")
    assert rules["campaign_target_not_reached"].steps[0].session_start is True


@pytest.mark.parametrize(
    "text,seconds",
    [("30m", 1800), ("7d", 604800), ("180s", 180), ("1.5h", 5400), (90, 90), ("2 weeks", 1209600)],
)
def test_parse_duration(text: object, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "10 parsecs", "-5m", 0, "0.5s", True])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_valid_file_and_list_file(tmp_path: Path) -> None:
    assert [r.name for r in load_rules(_write(tmp_path, VALID))] == ["r1"]
    two = (
        "- "
        + VALID.strip().replace("\n", "\n  ")
        + "\n- "
        + VALID.strip().replace("r1", "r2").replace("\n", "\n  ")
    )
    assert [r.name for r in load_rules(_write(tmp_path, two, "two.yaml"))] == ["r1", "r2"]


# (what to change in VALID, expected fragments of the message)
INVALID = [
    (("page: home", "page: hom"), ["step 1 (a)", "where.page", "unknown page 'hom'"]),
    (("code: TRANSFER", "code: TRANSFERX"), ["step 2 (b)", "unknown code 'TRANSFERX'"]),
    (("source: txn", "source: atm"), ["step 2 (b)", "source", "'click' or 'txn'"]),
    (
        ("where: {code: TRANSFER}", "where: {page: home}"),
        ["step 2 (b)", "field 'page' does not exist on txn events"],
    ),
    (("where: {code: TRANSFER}", "where: {amount: {gte: big}}"), ["step 2 (b)", "amount"]),
    (
        ("where: {code: TRANSFER}", "where: {code: {gte: 5}}"),
        ["step 2 (b)", "gte/lte do not apply"],
    ),
    (("where: {code: TRANSFER}", "where: {code: {like: TR}}"), ["step 2 (b)", "like"]),
    (("where: {code: TRANSFER}", "where: {}"), ["step 2 (b)", "step has no condition"]),
    (
        ("where: {code: TRANSFER}", "where: {code: TRANSFER}\n    absent: true"),
        ["step 2 (b)", "absent step needs 'within'"],
    ),
    (
        ("where: {code: TRANSFER}", "where: {code: TRANSFER}\n    within: 5 parsecs"),
        ["step 2 (b)", "within", "not a duration"],
    ),
    (
        ("where: {page: home}", "where: {page: home}\n    absent: true\n    within: 1m"),
        ["step 1 (a)", "first step cannot be absent"],
    ),
    (
        ("where: {page: home}", "where: {page: home}\n    within: 1m"),
        ["step 1 (a)", "first step cannot have 'within'"],
    ),
    (("within: 1h\n", ""), ["step 2 (b)", "no time bound"]),
    (
        ("where: {code: TRANSFER}", "where: {code: TRANSFER}\n    count: {n: 1, within: 1m}"),
        ["step 2 (b)", "count.n", "greater than or equal to 2"],
    ),
    (
        (
            "where: {code: TRANSFER}",
            "where: {code: TRANSFER}\n    count: {n: 3, within: 1m, same: page}",
        ),
        ["step 2 (b)", "count.same", "'page' does not exist on txn"],
    ),
    (
        ("where: {code: TRANSFER}", "where: {code: TRANSFER}\n    dwell_gte: 3m"),
        ["step 2 (b)", "dwell_gte"],
    ),
    (
        ("where: {code: TRANSFER}", "where: {code: TRANSFER, session_start: true}"),
        ["step 2 (b)", "session_start"],
    ),
    (
        ("where: {code: TRANSFER}", "where: {code: TRANSFER}\n    colour: red"),
        ["step 2 (b)", "colour", "Extra inputs"],
    ),
    (("action: {type: flag}", "action: {type: launch_rocket}"), ["rule: action.type"]),
    (("action: {type: flag}\n", ""), ["rule: action", "Field required"]),
    (("name: r1", "name: R 1"), ["rule 'R 1'", "name"]),
    (("within: 1h", "within: 1m\nsteps_extra: 1"), ["steps_extra", "Extra inputs"]),
    (
        ("where: {code: TRANSFER}", "where: {code: TRANSFER}\n    absent: true\n    within: 2h"),
        ["rule 'r1': rule", "can never fire"],
    ),
]


@pytest.mark.parametrize("change,fragments", INVALID)
def test_invalid_rule_messages(
    tmp_path: Path, change: tuple[str, str], fragments: list[str]
) -> None:
    old, new = change
    assert old in VALID
    path = _write(tmp_path, VALID.replace(old, new, 1), "bad_rule.yaml")
    with pytest.raises(RuleError) as exc:
        load_rules(tmp_path)
    msg = str(exc.value)
    assert "bad_rule.yaml" in msg
    if not any("rule '" in f for f in fragments):
        assert "rule 'r1'" in msg
    for f in fragments:
        assert f in msg, (f, msg)
    assert path.exists()


def test_empty_and_broken_yaml_and_duplicates(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="empty.yaml: empty rule file"):
        load_rules(_write(tmp_path, "", "empty.yaml"))
    with pytest.raises(RuleError, match="broken.yaml: not valid YAML"):
        load_rules(_write(tmp_path, "name: [unclosed", "broken.yaml"))
    d = tmp_path / "dups"
    d.mkdir()
    _write(d, VALID, "a.yaml")
    _write(d, VALID, "b.yaml")
    with pytest.raises(RuleError, match=r"b.yaml: rule 'r1': rule: duplicate name.*a.yaml"):
        load_rules(d)
    with pytest.raises(RuleError, match="notalist.yaml: rule '\\?': rule: expected a mapping"):
        load_rules(_write(tmp_path, "- 3\n", "notalist.yaml"))
