"""Adapters map every row of the real datasets in ../shared/data to one contract event."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path

import pytest

from transforms.adapters import ADAPTERS
from transforms.adapters.uci_online_retail import iter_events as uci_events

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ALLOWED_TYPES = {
    "page_view",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "login",
    "identify",
    "purchase",
    "refund",
}
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
FILES = {
    "uci-online-retail": "uci_online_retail.csv.gz",
    "rees46": "rees46_2019-10-01_head.csv",
    "diginetica-views": "diginetica_item_views_sample.csv",
    "diginetica-purchases": "diginetica_purchases.csv",
    "otto": "otto_sessions_fixture.jsonl",
}
ROWS = {
    "uci-online-retail": 541_909,
    "rees46": 17_434,
    "diginetica-views": 12_391,
    "diginetica-purchases": 18_025,
    "otto": 862,
}
# 1-based positions in each adapter's output (= data row numbers, except OTTO's
# running count over all sessions) of the events the known-row tests look at.
PICKS = {
    "uci-online-retail": {1, 495, 518, 623, 1443, 1444, 38249, 299984},
    "rees46": {1, 163, 332},
    "diginetica-views": {1, 165},
    "diginetica-purchases": {1, 2},
    "otto": {1, 7, 9},
}


@dataclass
class Scan:
    """What one full pass over an adapter's output saw."""

    count: int = 0
    types: Counter = field(default_factory=Counter)
    with_user: int = 0
    event_ids: set[str] = field(default_factory=set)
    bad: list[tuple[str, dict]] = field(default_factory=list)
    picked: dict[int, dict] = field(default_factory=dict)


def _ts_ok(ts: object) -> bool:
    """True for epoch milliseconds or an RFC 3339 string with an explicit offset."""
    if isinstance(ts, int) and not isinstance(ts, bool):
        return True
    return (
        isinstance(ts, str) and RFC3339.fullmatch(ts) is not None and datetime.fromisoformat(ts).utcoffset() is not None
    )


def _problem(event: dict) -> str | None:
    """Name the first contract violation of ``event``, if any."""
    if event.get("type") not in ALLOWED_TYPES:
        return "type"
    if not _ts_ok(event.get("ts")):
        return "ts"
    if not isinstance(event.get("event_id"), str):
        return "event_id"
    json.dumps(event, allow_nan=False)
    return None


@cache
def scan(name: str) -> Scan:
    """Run adapter ``name`` over its real file once, in a single streaming pass."""
    path = DATA / FILES[name]
    assert path.is_file(), f"real data file missing: {path}"
    result = Scan()
    for position, event in enumerate(ADAPTERS[name](path), start=1):
        result.count = position
        result.types[event["type"]] += 1
        result.with_user += "user_id" in event
        result.event_ids.add(event["event_id"])
        problem = _problem(event)
        if problem and len(result.bad) < 5:
            result.bad.append((problem, event))
        if position in PICKS[name]:
            result.picked[position] = event
    return result


def test_registry_names() -> None:
    assert set(ADAPTERS) == set(FILES)


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_row_becomes_one_contract_event(name: str) -> None:
    result = scan(name)
    assert result.count == ROWS[name]
    assert set(result.types) <= ALLOWED_TYPES
    assert result.bad == []


def test_uci_counts() -> None:
    result = scan("uci-online-retail")
    assert result.types == {"purchase": 532_621, "refund": 9_288}
    assert result.count - result.with_user == 135_080  # no CustomerID: kept, no user_id
    assert len(result.event_ids) == 541_909 - 5_268  # 5,268 exact repeat lines


def test_uci_known_rows() -> None:
    picked = scan("uci-online-retail").picked
    assert picked[1] == {
        "event_id": picked[1]["event_id"],
        "type": "purchase",
        "ts": "2010-12-01T08:26:00+00:00",
        "user_id": "17850",
        "order_id": "536365",
        "product_id": "85123A",
        "price": 2.55,
        "quantity": 6,
        "amount": 15.3,
        "currency": "GBP",
        "properties": {
            "description": "WHITE HANGING HEART T-LIGHT HOLDER",
            "country": "United Kingdom",
            "line": 1,
        },
    }
    assert re.fullmatch(r"uci-[0-9a-f]{20}", picked[1]["event_id"])
    # C536543,22355,CHARLOTTE BAG SUKI DESIGN,-2,2010-12-01 14:30:00,0.85,17841.0
    cancellation = picked[1443]
    assert cancellation["type"] == "refund"
    assert cancellation["order_id"] == "C536543"
    assert (cancellation["quantity"], cancellation["price"], cancellation["amount"]) == (2, 0.85, 1.7)
    # 536544,21773,DECORATIVE ROSE BATHROOM BOTTLE,1,2010-12-01 14:32:00,2.51,,United Kingdom
    anonymous = picked[1444]
    assert not {"user_id", "anonymous_id", "email"} & set(anonymous)
    assert (anonymous["type"], anonymous["amount"], anonymous["order_id"]) == ("purchase", 2.51, "536544")
    # 536414,22139,,56,2010-12-01 11:52:00,0.0,,United Kingdom: blank description, zero price
    assert picked[623]["properties"]["description"] == ""
    assert (picked[623]["price"], picked[623]["amount"], picked[623]["quantity"]) == (0.0, 0.0, 56)
    # A563186,B,Adjust bad debt,1,2011-08-12 14:51:00,-11062.06: negative, in summer time
    bad_debt = picked[299984]
    assert bad_debt["ts"] == "2011-08-12T14:51:00+01:00"
    assert (bad_debt["type"], bad_debt["amount"], bad_debt["product_id"]) == ("purchase", -11062.06, "B")
    assert picked[38249]["properties"]["description"] == "Dotcomgiftshop Gift Voucher £40.00"
    # data rows 495 and 518 are the same line of invoice 536409
    assert picked[495]["event_id"] == picked[518]["event_id"]
    assert picked[495]["properties"]["line"] == 495 and picked[518]["properties"]["line"] == 518


def test_uci_event_ids_follow_line_content(tmp_path: Path) -> None:
    header = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    line = "536365,85123A,WHITE HANGING HEART,6,12/1/2010 8:26,2.55,17850.0,United Kingdom\n"
    other = line.replace(",6,", ",7,")
    path = tmp_path / "retail.csv"
    path.write_text(header + line + line + other, encoding="utf-8")
    first, repeat, changed = uci_events(path)
    assert first["event_id"] == repeat["event_id"] != changed["event_id"]
    assert first["ts"] == "2010-12-01T08:26:00+00:00"
    assert [first["properties"]["line"], repeat["properties"]["line"]] == [1, 2]


def test_uci_gzip_cp1252_and_unparseable_values(tmp_path: Path) -> None:
    header = b"InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    row = b"C1,POST,VOUCHER \xa340,-1,6/30/2011 9:05,x,,EIRE\n"
    path = tmp_path / "retail.csv.gz"
    path.write_bytes(gzip.compress(header + row + row.replace(b"6/30/2011", b"someday")))
    refund, undated = uci_events(path)
    assert refund["properties"]["description"] == "VOUCHER £40"
    assert refund["ts"] == "2011-06-30T09:05:00+01:00"
    assert (refund["type"], refund["quantity"], refund["price"]) == ("refund", 1, "x")
    assert "amount" not in refund and "user_id" not in refund
    assert undated["ts"] == "someday 9:05"


def test_rees46_known_rows() -> None:
    result = scan("rees46")
    assert result.types == {"product_view": 17_055, "add_to_cart": 165, "purchase": 214}
    assert len(result.event_ids) == result.count  # identical rows stay distinct events
    picked = result.picked
    assert picked[1] == {
        "event_id": "rees46-1",
        "type": "product_view",
        "ts": "2019-10-01T00:00:00+00:00",
        "user_id": "541312140",
        "anonymous_id": "72d76fde-8bb3-4e00-8c23-a032dfed738c",
        "session_id": "72d76fde-8bb3-4e00-8c23-a032dfed738c",
        "product_id": "44600062",
        "category": "2103807459595387724",  # no category_code: falls back to the id
        "price": 35.79,
        "properties": {"brand": "shiseido", "category_id": "2103807459595387724"},
    }
    purchase = picked[163]
    session = "8187d148-3c41-46d4-b0c0-9c08cd9dc564"
    assert purchase["type"] == "purchase"
    assert purchase["ts"] == "2019-10-01T00:02:14+00:00"
    assert purchase["order_id"] == f"{session}:1004856"
    assert (purchase["amount"], purchase["quantity"], purchase["currency"]) == (130.76, 1, "USD")
    assert purchase["category"] == "electronics.smartphone"
    assert picked[332]["type"] == "add_to_cart"
    assert "order_id" not in picked[332]


def test_diginetica_views_known_rows() -> None:
    result = scan("diginetica-views")
    assert result.count - result.with_user == 7_681  # user_id "NA"
    assert result.picked[1] == {  # 1;NA;81766;526309;2016-05-09
        "event_id": "dgn-view-1",
        "type": "product_view",
        "anonymous_id": "dgn-session-1",
        "session_id": "1",
        "ts": "2016-05-09T00:08:46.309+00:00",
        "product_id": "81766",
    }
    assert result.picked[165] == {  # 48;2;24764;8863;2016-04-09
        "event_id": "dgn-view-165",
        "type": "product_view",
        "anonymous_id": "dgn-session-48",
        "session_id": "48",
        "user_id": "2",
        "ts": "2016-04-09T00:00:08.863+00:00",
        "product_id": "24764",
    }


def test_diginetica_purchases_known_rows() -> None:
    result = scan("diginetica-purchases")
    assert result.count - result.with_user == 11_322
    assert result.picked[1] == {  # 150;18278;17100868;2016-05-06;16421;25911
        "event_id": "dgn-purchase-1",
        "type": "purchase",
        "anonymous_id": "dgn-session-150",
        "session_id": "150",
        "user_id": "18278",
        "ts": "2016-05-06T00:00:00.000+00:00",
        "order_id": "16421",
        "product_id": "25911",
        "quantity": 1,
        "amount": 0.0,
        "currency": "EUR",
        "properties": {"amount_unknown": True, "timeframe_ms": 17_100_868},
    }
    anonymous = result.picked[2]  # 151;NA;6454547;2016-05-06;16290;175874
    assert "user_id" not in anonymous
    assert (anonymous["anonymous_id"], anonymous["order_id"]) == ("dgn-session-151", "16290")


def test_otto_known_rows() -> None:
    result = scan("otto")
    assert result.types == {"product_view": 800, "add_to_cart": 52, "purchase": 10}
    assert len(result.event_ids) == result.count
    assert result.picked[1] == {
        "event_id": "otto-0-1",
        "type": "product_view",
        "ts": 1_659_304_800_025,
        "anonymous_id": "otto-0",
        "session_id": "0",
        "product_id": "1517085",
    }
    assert result.picked[7]["type"] == "add_to_cart"
    order = result.picked[9]  # {"aid":305831,"ts":1659370027105,"type":"orders"}
    assert order["type"] == "purchase"
    assert order["order_id"] == "0:305831:1659370027105"
    assert (order["amount"], order["currency"], order["properties"]) == (
        0.0,
        "EUR",
        {"amount_unknown": True},
    )
