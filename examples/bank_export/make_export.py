"""How the example export in this folder was made: a small, deterministic "bank" in its own shape.

The files next to this script are the example (``nextoffer ingest --mapping mapping.yaml``
reads them); this script only documents how they were written, and rewrites them identically:

    python examples/bank_export/make_export.py

The bank speaks its own dialect on purpose: vendor column names (``CUST_NO``, ``TRX_DT``,
``TRX_CD``), Korean code labels, timestamps in four non-contract formats and two time zones,
balances in thousands of won, a UTF-8 CSV with a byte-order mark, a pipe-delimited CSV, a cp949
CSV and a Parquet file. The behaviour is simple but learnable: a customer with a need for a
product browses its pages for a while, then (often) signs up for it, so a propensity model has
something to find over the 150 days.

Standard library only, except pandas/pyarrow for the one Parquet file.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20260105
START = datetime(2025, 10, 1)
DAYS = 150
N_CUSTOMERS = 40
UTC_OFFSET = timedelta(hours=9)  # Asia/Seoul: no daylight saving time since 1988

PRODUCTS = ("loan", "savings", "fund", "card", "fx", "pension")
# The bank's product codes; the mapping turns them into the contract's products.
PRODUCT_CODE = {
    "loan": "LOAN-CREDIT",
    "savings": "SAV-12M",
    "fund": "FUND-GLOBAL-EQ",
    "card": "CARD-CHECK",
    "fx": "FX-ACCT",
    "pension": "PEN-IRP",
}
HOLDING_TYPE = {  # Korean product-type labels of the holdings export
    "account": "수시입출",
    "fx": "외화예금",
    "card": "카드",
    "loan": "대출",
    "savings": "적금",
    "fund": "펀드",
    "auto_transfer": "자동이체",
    "pension": "연금",
}
# Screens of the bank's app and web site (the mapping turns them into the contract's pages).
SCREENS = {
    "loan": ["/loan", "/loan/limit", "/loan/limit/result", "/loan/apply/1", "/loan/apply/2"],
    "savings": ["/savings", "/savings/detail", "/join/1", "/join/2"],
    "fund": ["/fund", "/fund/detail", "/fund/detail"],
    "card": ["/card/benefit", "/card/benefit", "/card/statement"],
    "fx": ["/fx", "/fx/rate", "/fx/remit"],
    "pension": ["/pension", "/pension", "/event"],
}
SIGNUP_SCREENS = {
    "loan": ["/loan/apply/1", "/loan/apply/2", "/loan/apply/3", "/loan/apply/complete"],
    "savings": ["/join/1", "/join/2", "/join/3", "/join/complete"],
    "fund": ["/fund/detail", "/join/1", "/join/2", "/fund/complete"],
    "card": ["/card/benefit", "/join/1", "/join/2", "/join/complete"],
    "fx": ["/fx", "/join/1", "/join/3", "/join/complete"],
    "pension": ["/pension", "/join/1", "/join/2", "/join/3", "/join/complete"],
}
ROUTINE_SCREENS = ["/account", "/transfer/input", "/transfer/complete", "/event", "/cs"]
LIFE_STAGES = {  # Korean label, birth years
    "student": ("대학생", 2002, 2007),
    "first_job": ("사회초년생", 1994, 2001),
    "family": ("가족형성", 1982, 1993),
    "mid_career": ("중년", 1966, 1981),
    "retiree": ("은퇴", 1950, 1965),
}
NEED_LIKELY = {  # which needs each life stage tends to have
    "student": ["card", "fx", "savings"],
    "first_job": ["savings", "card", "fund", "loan"],
    "family": ["loan", "savings", "fund", "card"],
    "mid_career": ["fund", "pension", "loan", "fx"],
    "retiree": ["pension", "savings", "fx"],
}
INCOME = ["하", "중하", "중", "중상", "상"]
REGIONS = ["서울", "서울", "경기", "경기", "인천", "부산", "대구", "광주", "대전", "세종", "제주"]
REFERRERS = ["직접", "직접", "직접", "푸시", "문자", "검색", "배너", "카카오톡", "이메일"]
OFFERS = [  # code, display area, product group, message, margin (won), cost (won)
    ("EV-LN-01", "메인배너", "대출", "신용대출 금리 0.3%p 우대", 250000, 20),
    ("EV-SV-01", "메인배너", "적금", "12개월 적금 연 4.5%", 40000, 15),
    ("EV-FD-01", "메인배너", "펀드", "글로벌 ETF 펀드 첫 매수 수수료 면제", 90000, 15),
    ("EV-CD-01", "메인배너", "카드", "체크카드 카페 10% 캐시백", 30000, 10),
    ("EV-FX-01", "계좌알림", "외환", "해외송금 수수료 50% 할인", 20000, 5),
    ("EV-PN-01", "계좌알림", "연금", "IRP 세액공제 안내", 120000, 5),
    ("EV-SV-02", "이벤트", "적금", "적금 가입 이벤트: 커피 쿠폰", 35000, 30),
    ("EV-CD-02", "이벤트", "카드", "신규 카드 발급 이벤트", 28000, 30),
]
OFFER_PRODUCT = {"대출": "loan", "적금": "savings", "펀드": "fund", "카드": "card"}
OFFER_PRODUCT |= {"외환": "fx", "연금": "pension"}


@dataclass
class Customer:
    no: str
    stage: str
    needs: list[tuple[str, datetime, datetime | None]] = field(default_factory=list)
    """(product, need starts, signs up at or None)."""
    holds: set[str] = field(default_factory=set)
    device: str = ""
    cookie: str = ""
    os: str = ""
    closed: datetime | None = None


def local(dt: datetime) -> str:
    return dt.strftime("%Y/%m/%d %H:%M:%S")


def main(out_dir: Path = HERE) -> None:
    """Write the export into ``out_dir`` (default: this folder)."""
    rng = random.Random(SEED)
    customers, customer_rows, holding_rows = [], [], []
    hold_no = 0

    def holding(c: Customer, kind: str, opened: datetime, **extra: object) -> None:
        nonlocal hold_no
        hold_no += 1
        product = kind if kind in PRODUCT_CODE else None
        code = {"account": "ACC-BASIC", "auto_transfer": "AUTO-SAVE"}.get(kind) or PRODUCT_CODE[
            str(product)
        ]
        balance = {
            "account": rng.randint(200, 30000),
            "savings": rng.randint(1000, 20000),
            "fund": rng.randint(500, 15000),
            "loan": rng.randint(5000, 80000),
            "pension": rng.randint(2000, 40000),
            "fx": rng.randint(100, 5000),
        }.get(kind, "")
        holding_rows.append(
            {
                "HOLD_NO": f"A{hold_no:07d}",
                "CUST_NO": c.no,
                "PRD_TYPE": HOLDING_TYPE[kind],
                "PRD_CD": code,
                "OPEN_DT": opened.strftime("%Y%m%d"),
                "CLOSE_DT": "",
                "BAL_AMT_THOU": balance,  # thousands of won
                "CARD_STL_DD": rng.choice([1, 10, 14, 25]) if kind == "card" else "",
                "MTRT_DT": (opened + timedelta(days=365)).strftime("%Y%m%d")
                if kind == "savings"
                else "",
                "LOAN_INT_DD": rng.randint(1, 28) if kind == "loan" else "",
                "AUTO_END_DT": (opened + timedelta(days=365)).strftime("%Y%m%d")
                if kind == "auto_transfer"
                else "",
                **extra,
            }
        )
        if product:
            c.holds.add(product)

    for i in range(N_CUSTOMERS):
        stage = list(LIFE_STAGES)[i % len(LIFE_STAGES)]
        label, lo, hi = LIFE_STAGES[stage]
        c = Customer(no=f"{100000001 + i * 7}", stage=stage)
        c.device, c.cookie = f"AD{rng.getrandbits(40):010X}", f"CK{rng.getrandbits(48):012x}"
        c.os = rng.choice(["iOS", "Android"])
        joined = START - timedelta(days=rng.randint(60, 3650), minutes=rng.randint(0, 1439))
        holding(c, "account", joined)
        if rng.random() < 0.5:
            holding(c, "card", joined + timedelta(days=rng.randint(0, 50)))
        if stage in ("family", "mid_career") and rng.random() < 0.3:
            holding(c, "loan", joined + timedelta(days=rng.randint(0, 50)))
        # one to three needs over the period; most end in a signup some days later
        wants = [p for p in NEED_LIKELY[stage] if p not in c.holds]
        for product in rng.sample(wants, k=min(len(wants), rng.choice([1, 2, 2, 3]))):
            begins = START + timedelta(days=rng.randint(3, DAYS - 10), hours=rng.randint(8, 21))
            signs = begins + timedelta(days=rng.randint(2, 20), minutes=rng.randint(0, 600))
            done = signs if rng.random() < 0.7 and signs < START + timedelta(days=DAYS) else None
            c.needs.append((product, begins, done))
        if i % 17 == 5:  # a customer who leaves the bank near the end
            c.closed = START + timedelta(days=DAYS - 12, hours=11)
        customers.append(c)
        accident = START + timedelta(days=60, hours=15, minutes=i) if i % 19 == 7 else None
        customer_rows.append(
            {
                "CUST_NO": c.no,
                "CUST_NM": rng.choice("김이박최정강조윤장임") + "*" + rng.choice("민서준현우진"),
                "BIRTH_YR": rng.randint(lo, hi),
                "SEX_CD": rng.choice(["남", "여"]),
                "LIFE_STG": label,
                "INCM_GRD": rng.choice(INCOME),
                "REGION_NM": rng.choice(REGIONS),
                "JOIN_DT": joined.strftime("%Y%m%d"),
                "PUSH_AGR_YN": rng.choice("YYN"),
                "SMS_AGR_YN": rng.choice("YN"),
                "KAKAO_AGR_YN": rng.choice("YYN"),
                "EMAIL_AGR_YN": rng.choice("YNN"),
                "ACDNT_RPT_DTM": accident.strftime("%Y%m%d%H%M%S") if accident else "",
                "CLOSE_DT": c.closed.strftime("%Y%m%d") if c.closed else "",
            }
        )

    clicks, txns, exposures = [], [], []
    session_no = 9000
    click_seq = 0
    trx_seq = 0  # provisional order; renumbered in time order at the end

    def txn(c: Customer, when: datetime, code: str, channel: str, amount: float, **kw) -> None:
        nonlocal trx_seq
        trx_seq += 1
        txns.append(
            {
                "TRX_SEQ": trx_seq,
                "TRX_DT": local(when),
                "CUST_NO": c.no,
                "TRX_CD": code,
                "CHNL_CD": channel,
                "TRX_AMT": amount,
                "CRNC_CD": kw.get("currency", "원"),
                "PRD_CD": kw.get("product", ""),
                "BRNCH_CD": kw.get("branch", ""),
            }
        )

    def session(c: Customer, start: datetime, screens: list[str], signup: str | None) -> None:
        """One visit: anonymous landing, login, the screens, maybe a banner, logout."""
        nonlocal session_no, click_seq
        session_no += 1
        app = rng.random() < 0.75
        t = start

        def click(screen: str, event: str, who: str | None, dwell: float) -> None:
            nonlocal click_seq, t
            click_seq += 1
            clicks.append(
                {
                    "LOG_SEQ": click_seq,
                    "LOG_TS_UTC": (t - UTC_OFFSET).strftime("%Y%m%d%H%M%S"),
                    "CHNL": "MOB" if app else "PC",
                    "DEVICE_ID": c.device if app else f"WB{c.cookie[2:10]}",
                    "COOKIE_ID": None if app else c.cookie,
                    "CUST_NO": who,
                    "SESSION_NO": session_no,
                    "SCREEN_ID": screen,
                    "EVENT_TYPE": event,
                    "STAY_SEC": round(dwell, 1),
                    "INFLOW": referrer,
                    "APP_VER": "5.12.0" if app else None,
                    "OS_NM": c.os if app else "Windows",
                }
            )
            t += timedelta(seconds=dwell + rng.uniform(1, 6))

        referrer = rng.choice(REFERRERS)
        click("/main", "조회", None, rng.uniform(2, 12))
        click("/login", "로그인", c.no, rng.uniform(3, 9))
        for screen in screens:
            click(screen, rng.choice(["조회", "조회", "클릭"]), c.no, rng.uniform(5, 90))
        if rng.random() < 0.5:
            slot = rng.choice(["메인배너", "메인배너", "계좌알림", "이벤트"])
            shown = [o for o in OFFERS if o[1] == slot]
            offer = rng.choice(shown)
            product = OFFER_PRODUCT[offer[2]]
            wants = any(p == product and b <= t for p, b, _ in c.needs)
            clicked = rng.random() < (0.35 if wants else 0.04)
            exposures.append(
                {
                    "RESP_ID": f"RSP{len(exposures) + 1:06d}",
                    "EXPO_DTM": (t - UTC_OFFSET).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "CUST_NO": c.no,
                    "DISP_AREA": slot,
                    "CHNL": "MOB" if app else "PC",
                    "OFFER_CD": offer[0],
                    "EXPO_PROB": round(1 / len(shown), 6),
                    "CLICK_YN": "Y" if clicked else "N",
                    "CONV_YN": "Y" if clicked and signup == product else "N",
                }
            )
        if signup:
            for screen in SIGNUP_SCREENS[signup]:
                click(
                    screen, "제출" if "complete" not in screen else "조회", c.no, rng.uniform(8, 60)
                )
            if signup == "loan":
                txn(
                    c,
                    t,
                    "대출신청",
                    "모바일앱" if app else "인터넷뱅킹",
                    0,
                    product=PRODUCT_CODE["loan"],
                )
            txn(
                c,
                t,
                "신규가입",
                "모바일앱" if app else "인터넷뱅킹",
                0,
                product=PRODUCT_CODE[signup],
            )
            if signup == "fund":
                txn(
                    c,
                    t + timedelta(seconds=20),
                    "펀드매수",
                    "모바일앱",
                    rng.randint(10, 300) * 10000,
                    product=PRODUCT_CODE["fund"],
                )
        elif rng.random() < 0.1:
            click("/error", "오류", c.no, rng.uniform(1, 3))
        if rng.random() < 0.6:
            click("/main", "로그아웃", c.no, rng.uniform(1, 3))

    for c in customers:
        end = c.closed or START + timedelta(days=DAYS)
        day = START + timedelta(days=rng.randint(0, 4))
        while day < end:  # routine visits, more often while a need is open
            open_needs = [p for p, b, s in c.needs if b <= day and (s is None or day < s)]
            hour = timedelta(hours=rng.randint(7, 22), minutes=rng.randint(0, 59))
            screens = rng.sample(ROUTINE_SCREENS, k=rng.randint(1, 2))
            for p in open_needs:
                screens += rng.sample(SCREENS[p], k=rng.randint(1, len(SCREENS[p])))
            session(c, day + hour, screens, None)
            if "/transfer/complete" in screens:
                txn(
                    c,
                    day + hour + timedelta(minutes=2),
                    rng.choice(["당행이체", "타행이체"]),
                    "모바일앱",
                    rng.randint(1, 200) * 5000,
                )
            if "/account" in screens and rng.random() < 0.5:
                txn(c, day + hour + timedelta(minutes=1), "잔액조회", "모바일앱", 0)
            day += timedelta(days=rng.randint(3, 6) if open_needs else rng.randint(6, 12))
        for product, _begins, signs in c.needs:
            if signs is not None and signs < end:
                session(c, signs, rng.sample(SCREENS[product], k=2), product)
                holding(c, product, signs)
                if product == "savings":
                    holding(c, "auto_transfer", signs)
        month = START
        while month < end:  # the monthly rhythm of the core system
            payday = month.replace(day=25, hour=9, minute=rng.randint(0, 59))
            if c.stage != "student" and payday < end:
                txn(c, payday, "급여입금", "자동", rng.randint(250, 700) * 10000)
            if "card" in c.holds and payday < end:
                txn(
                    c,
                    payday + timedelta(days=-10, hours=1),
                    "카드결제",
                    "자동",
                    rng.randint(5, 150) * 10000,
                    product=PRODUCT_CODE["card"],
                )
            if "loan" in c.holds and payday < end:
                txn(
                    c,
                    payday + timedelta(days=-5, hours=2),
                    "대출이자",
                    "자동",
                    rng.randint(10, 90) * 1000,
                    product=PRODUCT_CODE["loan"],
                )
            if "savings" in c.holds and payday < end:
                txn(
                    c,
                    payday + timedelta(hours=3),
                    "자동이체",
                    "자동",
                    300000,
                    product=PRODUCT_CODE["savings"],
                )
            when = month + timedelta(days=rng.randint(0, 27), hours=rng.randint(9, 16))
            if when < end:
                txn(c, when, "출금", "ATM", rng.randint(1, 50) * 10000)
            if rng.random() < 0.3 and when < end:
                txn(
                    c,
                    when + timedelta(days=1),
                    "입금",
                    "영업점",
                    rng.randint(1, 100) * 10000,
                    branch=f"B{rng.randint(100, 140)}",
                )
            if ("fx" in c.holds or c.stage == "student") and rng.random() < 0.5 and when < end:
                currency, amount = rng.choice(
                    [
                        ("달러", rng.randint(200, 3000)),
                        ("엔", rng.randint(20000, 300000)),
                        ("동", rng.randint(5, 40) * 1000000),
                        ("유로", rng.randint(100, 2000)),
                        ("위안", rng.randint(500, 8000)),
                    ]
                )
                txn(
                    c,
                    when + timedelta(days=2),
                    "해외송금",
                    rng.choice(["모바일앱", "인터넷뱅킹", "영업점"]),
                    amount,
                    currency=currency,
                    product=PRODUCT_CODE["fx"],
                )
            if "loan" in {p for p, *_ in c.needs} and rng.random() < 0.4 and when < end:
                txn(
                    c,
                    when + timedelta(days=3),
                    "대출한도조회",
                    "모바일앱",
                    0,
                    product=PRODUCT_CODE["loan"],
                )
            month = (month + timedelta(days=32)).replace(day=1)
        if c.closed:
            txn(c, c.closed - timedelta(hours=1), "출금", "영업점", 10000, branch="B101")

    # a savings product bought long ago matures within the period
    for c in customers[::9]:
        opened = START - timedelta(days=365 - 40)
        holding(c, "savings", opened, CLOSE_DT=(opened + timedelta(days=365)).strftime("%Y%m%d"))
        txn(
            c,
            opened + timedelta(days=365, hours=10),
            "만기지급",
            "자동",
            3600000,
            product=PRODUCT_CODE["savings"],
        )

    clicks.sort(key=lambda r: (r["LOG_TS_UTC"], r["LOG_SEQ"]))
    txns.sort(key=lambda r: (r["TRX_DT"], r["TRX_SEQ"]))
    for seq, row in enumerate(clicks, start=1):  # the systems number their rows in time order
        row["LOG_SEQ"] = seq
    for seq, row in enumerate(txns, start=700001):  # never collides with the web log's numbers
        row["TRX_SEQ"] = seq
    exposures.sort(key=lambda r: (r["EXPO_DTM"], r["RESP_ID"]))
    for seq, row in enumerate(exposures, start=1):
        row["RESP_ID"] = f"RSP{seq:06d}"
    # UTF-8 with a byte-order mark (what Excel writes), a cp949 file, a pipe-delimited one
    write_csv(out_dir / "CUST_MST.csv", customer_rows, encoding="utf-8-sig")
    write_csv(out_dir / "ACCT_HOLD.csv", holding_rows, encoding="cp949")
    write_csv(out_dir / "TRX_HIST.csv", txns, encoding="utf-8-sig", delimiter="|")
    offer_rows = [
        dict(
            zip(
                ["OFFER_CD", "DISP_AREA", "PRD_GRP", "OFFER_MSG", "MARGIN_WON", "COST_WON"],
                o,
                strict=True,
            )
        )
        for o in OFFERS
    ]
    write_csv(out_dir / "OFFER_MST.csv", offer_rows, encoding="utf-8")
    write_csv(out_dir / "CAMPAIGN_RESP.csv", exposures, encoding="utf-8")
    write_parquet(out_dir / "WEB_LOG.parquet", clicks)
    print(
        f"{len(customer_rows)} customers, {len(holding_rows)} holdings, {len(txns)} transactions, "
        f"{len(clicks)} web/app events, {len(exposures)} exposures, {len(offer_rows)} offers"
    )


def write_csv(path: Path, rows: list[dict], encoding: str, delimiter: str = ",") -> None:
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows).astype(
        {"LOG_SEQ": "int64", "SESSION_NO": "int64", "STAY_SEC": "float64"}
    )
    frame.to_parquet(path, index=False)


if __name__ == "__main__":
    main()
