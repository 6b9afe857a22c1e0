"""Bounded numbers and strict JSON (issue 21): extreme amounts, prices and quantities end as dead
letters (``out_of_range``, ``invalid_number``, ``malformed``), aggregates stay finite, and every output
the job writes (JSONL files, the summary, Redis values, webhook bodies) is strict JSON.

The core loop runs on generated input against a real Redis (``redis_url``); the oracle classifies each
generated line independently of the cleaning code: a NaN or infinite literal (or an integer too large
for a double) is not JSON (``malformed``); a number that is not finite, or a quantity that is not whole,
is ``invalid_number``; else one outside the limits (``cleaning.max_amount``: 1e9, ``max_quantity``:
1,000,000, price x quantity <= max_amount, nothing negative) is ``out_of_range``; else the event is
accepted, and a repeat of an accepted line is a duplicate.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.cli import execute, main
from pipelines.webhook_receiver import ReceiverServer, Reply, WebhookReceiver
from tests.conftest import NOW_MS, make_spec, read_jsonl
from tests.delivery_harness import SECRET, subscriber, with_subscribers
from transforms.config import ConfigError, parse_config
from transforms.engagement import MAX_POINTS, EngagementConfig, EngagementModel
from transforms.events import Event
from transforms.features import Features
from transforms.windows import WindowSet, WindowSpec

DAY_MS = 86_400_000
T0 = NOW_MS - 20 * DAY_MS
MAX_AMOUNT, MAX_QUANTITY = 1e9, 1_000_000
BIGGEST = sys.float_info.max
# Values of amount and price: finite ones in and out of range, text that is no finite number, and
# literals JSON has no form for.
MONEY = st.one_of(
    st.floats(min_value=0, max_value=2 * MAX_AMOUNT),
    st.sampled_from([0.0, 5e-324, 1e-308, 0.01, 49.99, MAX_AMOUNT, math.nextafter(MAX_AMOUNT, math.inf)]),
    st.sampled_from([1e15, 1e300, 1e308, BIGGEST, -0.01, -1e308, -BIGGEST, 10**30, "1e308", "12.50"]),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "nan", "abc"]),
    st.sampled_from([math.nan, math.inf, -math.inf, 10**400]),
)
QUANTITY = st.one_of(
    st.integers(1, 5),
    st.sampled_from([MAX_QUANTITY, MAX_QUANTITY + 1, 10**20, 1e20, 0, -3, 2.0, "7"]),
    st.sampled_from([1.5, "2.5", "NaN", "1e999", math.inf, math.nan]),
)
KINDS = ["purchase", "refund", "add_to_cart", "remove_from_cart", "checkout", "page_view"]


def classify(value: object, whole: bool = False) -> tuple[str, float | None]:
    """How cleaning must see one number: (``malformed`` | ``invalid`` | ``ok``, its value)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "malformed", None  # json.dumps writes NaN / Infinity: not JSON
    if isinstance(value, int) and abs(value) > BIGGEST:
        return "malformed", None  # a double cannot hold it: orjson refuses the line
    try:
        number = float(value)  # type: ignore[arg-type]
    except ValueError:
        return "invalid", None
    if not math.isfinite(number) or (whole and not number.is_integer()):
        return "invalid", None
    return "ok", number


def expected_reason(record: dict[str, Any]) -> str | None:
    """The dead-letter reason of a generated record; None when it is accepted."""
    amount = classify(record["amount"]) if "amount" in record else ("ok", None)
    price = classify(record["price"]) if "price" in record else ("ok", None)
    quantity = classify(record["quantity"], whole=True) if "quantity" in record else ("ok", None)
    kinds = {amount[0], price[0], quantity[0]}
    if "malformed" in kinds:
        return "malformed"
    if "invalid" in kinds:
        return "invalid_number"
    money = [v for v in (amount[1], price[1]) if v is not None]
    line = price[1] * quantity[1] if price[1] is not None and quantity[1] is not None else 0.0
    inside = all(0 <= v <= MAX_AMOUNT for v in money) and line <= MAX_AMOUNT
    inside = inside and (quantity[1] is None or 0 < quantity[1] <= MAX_QUANTITY)
    return None if inside else "out_of_range"


@st.composite
def streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Records of a few customers in event-time order; some repeat the line before (a duplicate)."""
    records: list[dict[str, Any]] = []
    for n in range(draw(st.integers(1, 30))):
        if records and draw(st.integers(0, 9)) == 0:
            records.append(records[-1])
            continue
        kind = draw(st.sampled_from(KINDS))
        record: dict[str, Any] = {
            "event_id": f"e{n}",
            "type": kind,
            "ts": T0 + n * 60_000,
            "user_id": f"u{draw(st.integers(0, 3))}",
        }
        if kind in ("purchase", "refund"):
            record |= {"order_id": f"o{n}", "amount": draw(MONEY), "currency": "EUR"}
        if kind in ("add_to_cart", "remove_from_cart") or draw(st.integers(0, 4)) == 0:
            record |= {"product_id": "p1", "price": draw(MONEY), "quantity": draw(QUANTITY)}
        records.append(record)
    return records


def _refuse(literal: str) -> None:
    raise AssertionError(f"not strict JSON: {literal}")


def strict_loads(text: str) -> Any:
    """``json.loads`` that fails on NaN, Infinity and -Infinity (Python's json accepts them)."""
    return json.loads(text, parse_constant=_refuse)


def check_strict_value(value: str) -> None:
    """A value the job stored: strict JSON if it is JSON at all, and never a non-finite number."""
    try:
        json.loads(value)
    except ValueError:
        pass
    else:
        strict_loads(value)
    try:
        number = float(value)
    except ValueError:
        return
    assert math.isfinite(number), f"a non-finite number stored: {value!r}"


def check_redis(url: str, prefix: str = "segstream") -> int:
    """Every text value under ``prefix`` (strings, hash fields, stream fields, set and list members) is
    strict; binary ones (model snapshots) are not JSON and are skipped. Returns how many were checked."""
    client = redis.Redis.from_url(url)
    values: list[bytes] = []
    for key in client.scan_iter(f"{prefix}:*"):
        kind = client.type(key).decode()
        if kind == "string":
            values.append(client.get(key) or b"")
        elif kind == "hash":
            values.extend(client.hgetall(key).values())
        elif kind == "stream":
            values.extend(v for _, fields in client.xrange(key) for v in fields.values())
        elif kind == "set":
            values.extend(client.smembers(key))
        elif kind == "list":
            values.extend(client.lrange(key, 0, -1))
    checked = 0
    for raw in values:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        check_strict_value(text)
        checked += 1
    return checked


def check_outputs(out: Path) -> dict[str, Any]:
    """Every line of every output file parses strictly; so does a dead letter's payload when it is
    a record (not raw text). Returns the summary."""
    for name in ("changes.jsonl", "profiles.jsonl", "dead_letters.jsonl"):
        for line in (out / name).read_text(encoding="utf-8").splitlines():
            record = strict_loads(line)
            if name == "dead_letters.jsonl" and record["reason"] not in ("malformed", "oversized"):
                strict_loads(record["payload"])
    return strict_loads((out / "summary.json").read_text(encoding="utf-8"))


def line_of(record: dict[str, Any]) -> str:
    return json.dumps(record)  # NaN, Infinity: the literals a careless producer writes


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(records=streams())
def test_extreme_numbers_through_the_core_loop_leave_strict_json_and_counts_that_add_up(
    redis_url: str, records: list[dict[str, Any]]
) -> None:
    redis.Redis.from_url(redis_url).flushall()  # one Redis for every example of the test
    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / "in.jsonl"
        source.write_text("".join(line_of(r) + "\n" for r in records), encoding="utf-8")
        out = Path(directory) / "out"
        summary = execute(make_spec(source, redis_url, out), "core")
        assert check_outputs(out) == summary
        letters = read_jsonl(out / "dead_letters.jsonl")
    assert check_redis(redis_url) > 0
    reasons = [expected_reason(r) for r in records]
    seen: set[str] = set()
    duplicates = 0
    for record, reason in zip(records, reasons, strict=True):
        if reason is None:
            duplicates += record["event_id"] in seen
            seen.add(record["event_id"])
    expected = Counter(reason for reason in reasons if reason is not None)
    assert summary["events_in"] == len(records)
    assert summary["events_in"] == summary["accepted"] + summary["duplicates"] + sum(summary["dead_letters"].values())
    assert (summary["accepted"], summary["duplicates"]) == (len(seen), duplicates)
    assert summary["dead_letters"] == dict(expected) == dict(Counter(letter["reason"] for letter in letters))


def run_cli(source: Path, redis_url: str, out: Path) -> dict[str, Any]:
    """``segstream run`` on the core engine, in-process; asserts exit code 0 and returns the summary."""
    args = ["run", "--now", str(NOW_MS), "--no-progress", "--engine", "core", "--source", str(source)]
    args += ["--redis-url", redis_url, "--changes-out", str(out / "changes.jsonl")]
    args += ["--profiles-out", str(out / "profiles.jsonl"), "--dead-letter-out", str(out / "dead_letters.jsonl")]
    result = CliRunner().invoke(main, [*args, "--summary-out", str(out / "summary.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return check_outputs(out)


def test_the_issue_reproductions_are_dead_letters_and_the_job_succeeds(redis_url: str, tmp_path: Path) -> None:
    """Two purchases of 1e308 made ``spend`` infinite and RFM bucketing raise OverflowError (exit 1);
    price 1e300 x quantity 1e20 wrote ``Infinity`` into profiles and changes."""
    buy = {"type": "purchase", "user_id": "u1", "currency": "EUR", "amount": 1e308}
    lines = [
        {**buy, "event_id": "b1", "ts": T0, "order_id": "o1"},
        {**buy, "event_id": "b2", "ts": T0 + 1, "order_id": "o2"},
        {"event_id": "c1", "type": "add_to_cart", "ts": T0 + 2, "user_id": "u2", "price": 1e300, "quantity": 1e20},
        {**buy, "event_id": "b3", "ts": T0 + 3, "order_id": "o3", "amount": MAX_AMOUNT},  # at the limit: accepted
        {**buy, "event_id": "b4", "ts": T0 + 4, "order_id": "o4", "amount": MAX_AMOUNT},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    summary = run_cli(source, redis_url, tmp_path / "out")
    assert (summary["events_in"], summary["accepted"], summary["dead_letters"]) == (5, 2, {"out_of_range": 3})
    letters = read_jsonl(tmp_path / "out" / "dead_letters.jsonl")
    assert [(d["event_id"], d["field"]) for d in letters] == [("b1", "amount"), ("b2", "amount"), ("c1", "price")]
    (profile,) = read_jsonl(tmp_path / "out" / "profiles.jsonl")
    assert profile["customer_id"] == "user:u1" and profile["features"]["spend"] == 2 * MAX_AMOUNT
    assert profile["rfm"]["monetary"] >= 1
    assert check_redis(redis_url) > 0


class RawBodies(WebhookReceiver):
    """The real receiver, also keeping each request body as it arrived."""

    def __init__(self, out: Path) -> None:
        super().__init__([SECRET], out)
        self.bodies: list[bytes] = []

    def handle(self, headers: Mapping[str, str], body: bytes) -> Reply:
        self.bodies.append(body)
        return super().handle(headers, body)


def test_webhook_bodies_of_a_run_on_extreme_input_are_strict_json(redis_url: str, tmp_path: Path) -> None:
    records = [
        {"event_id": f"e{n}", "type": "purchase", "ts": T0 + n, "user_id": f"u{n % 2}", "order_id": f"o{n}"}
        | {"currency": "EUR", "amount": amount}
        for n, amount in enumerate([1e308, MAX_AMOUNT, 1e-308, 5e-324, MAX_AMOUNT, "Infinity", 300.0])
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    receiver = RawBodies(tmp_path / "received.jsonl")
    server: ReceiverServer = receiver.serve(port=0)
    try:
        config = with_subscribers(subscriber("all", server.url))
        summary = execute(make_spec(source, redis_url, tmp_path / "out", config=config), "core")
    finally:
        server.stop()
        receiver.close()
    changes = read_jsonl(tmp_path / "out" / "changes.jsonl")
    assert changes and summary["dead_letters"] == {"out_of_range": 1, "invalid_number": 1}
    bodies = [strict_loads(body.decode("utf-8")) for body in receiver.bodies]
    assert {body["change_id"] for body in bodies} == {change["change_id"] for change in changes}
    check_outputs(tmp_path / "out")
    check_redis(redis_url)


# --------------------------------------------------------------------------------------------------
# Aggregates: engagement points, lifetime features and windows stay finite
# --------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    weight=st.floats(min_value=0, max_value=BIGGEST),
    saturation=st.floats(min_value=5e-324, max_value=BIGGEST),
    times=st.lists(st.integers(0, 10 * DAY_MS), min_size=1, max_size=20),
    threshold=st.floats(min_value=0, max_value=100),
)
def test_engagement_is_finite_for_any_finite_config(
    weight: float, saturation: float, times: list[int], threshold: float
) -> None:
    """Any finite weights and saturation, events in any order, split over two merged accumulators:
    points stay finite (at most MAX_POINTS: two weights of 1e308 once summed to infinity, and
    infinity times a decay of 0 to NaN), the score is within 0..100 and falls_below never raises."""
    model = EngagementModel(EngagementConfig(weights={"purchase": weight}, half_life_ms=DAY_MS, saturation=saturation))
    one, other = model.create(), model.create()
    for n, ts in enumerate(times):
        model.add(one if n % 2 else other, "purchase", ts)
    points = model.merge(one, other)
    now = max(times) + DAY_MS
    for at in (max(times), now, now + 3000 * DAY_MS):
        assert 0.0 <= model.points(points, at) <= MAX_POINTS
        assert 0.0 <= model.score(points, at) <= 100.0
    wakes = model.falls_below(points, threshold, now)
    assert wakes is None or (wakes > now and model.score(points, wakes) < threshold <= model.score(points, wakes - 1))


@pytest.mark.parametrize("weight", [math.nan, math.inf, -1.0, 10**400, True])
def test_engagement_weights_must_be_finite(weight: object) -> None:
    document = {"segments": {"big": {"feature": "spend", ">=": 1}}, "engagement": {"weights": {"purchase": weight}}}
    with pytest.raises(ConfigError, match=r"engagement\.weights\.purchase: needs a finite number >= 0"):
        parse_config(document, env={})


@pytest.mark.parametrize("saturation", [math.nan, math.inf, 0, 10**400])
def test_engagement_saturation_must_be_finite(saturation: object) -> None:
    document = {"segments": {"big": {"feature": "spend", ">=": 1}}, "engagement": {"saturation": saturation}}
    with pytest.raises(ConfigError, match=r"engagement\.saturation must be a finite positive number"):
        parse_config(document, env={})


@settings(max_examples=30, deadline=None)
@given(count=st.integers(1, 3000), price=st.sampled_from([MAX_AMOUNT, MAX_AMOUNT / MAX_QUANTITY, 1e-308]))
def test_sums_of_many_events_at_the_limits_stay_finite_and_exact(count: int, price: float) -> None:
    """Purchases of max_amount and cart lines of max_amount (price x max_quantity): lifetime spend and
    windowed spend and cart value are the exact sums (below 2**53 whole units), never infinite."""
    features, windows = Features(), WindowSet((WindowSpec("30d", 30 * DAY_MS, DAY_MS),), session_gap_ms=1_800_000)
    activity = windows.create()
    quantity = round(MAX_AMOUNT / price) if price >= 1 else MAX_QUANTITY
    for n in range(count):
        for event in (
            Event(f"b{n}", "purchase", T0 + n, user_id="u", order_id=f"o{n}", amount=MAX_AMOUNT, currency="EUR"),
            Event(f"c{n}", "add_to_cart", T0 + n, user_id="u", product_id="p", price=price, quantity=quantity),
        ):
            features.add(event)
            windows.add(activity, event)
    result = windows.result(activity, "30d", now=T0 + count)
    assert features.spend == result["spend"] == count * MAX_AMOUNT
    assert math.isfinite(result["cart_value"]) and result["cart_value"] == pytest.approx(count * price * quantity)
    json.dumps([features.to_dict(), result], allow_nan=False)
