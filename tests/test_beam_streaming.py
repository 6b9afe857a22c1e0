"""The Beam topology in streaming mode, driven by TestStream: out-of-order and late events, and
segment exits fired by event-time timers with no further event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp

from pipelines.beam_pipeline import LiveCustomerFn, build
from pipelines.redis_store import StopClock
from pipelines.sources import RawRecord
from tests.conftest import make_spec, read_jsonl
from tests.test_customer import RULES_DOCUMENT
from transforms.config import parse_config

T0 = 1_740_820_000_000  # 2025-03-01T09:06:40Z
MINUTE = 60_000
DAY = 86_400_000
CONFIG = parse_config(RULES_DOCUMENT, env={})  # the timer tests' three segments, not the default set


def record(n: int, kind: str, ts: int, **fields: Any) -> RawRecord:
    payload = {"event_id": f"e{n}", "type": kind, "ts": ts, "user_id": "u1", **fields}
    return RawRecord("test", str(n), payload)


def purchase(n: int, ts: int) -> RawRecord:
    return record(n, "purchase", ts, order_id=f"o{n}", amount=10.0, currency="EUR")


def stamped(*records: RawRecord) -> list[beam.window.TimestampedValue]:
    return [beam.window.TimestampedValue(r, Timestamp(micros=r.payload["ts"] * 1000)) for r in records]


def run_stream(stream: TestStream, tmp_path: Path, redis_url: str, end: int) -> Path:
    """Run the topology over ``stream``; the live stop clock says the input ended at ``end``."""
    out = tmp_path / "out"
    spec = make_spec("test-stream", redis_url, out, config=CONFIG)
    stop_clock = StopClock(redis_url, "segstream:run:test:stop_at")
    stop_clock.mark(end)
    with beam.Pipeline(options=PipelineOptions(["--streaming"])) as pipeline:
        build(spec, pipeline | stream, LiveCustomerFn(spec.config, stop_clock, spec.redis_prefix))
    return out


def changes(out: Path) -> list[tuple[str, str, str, int]]:
    return [(c["segment"], c["change"], c["reason"], c["event_time"]) for c in read_jsonl(out / "changes.jsonl")]


def test_exits_fire_by_event_time_timers_with_no_further_event(tmp_path: Path, redis_url: str) -> None:
    stream = (
        TestStream()
        .advance_watermark_to(Timestamp(micros=(T0 - MINUTE) * 1000))
        .add_elements(stamped(purchase(1, T0), record(2, "page_view", T0 + MINUTE, anonymous_id="other")))
        .advance_watermark_to(Timestamp(micros=(T0 + 2 * MINUTE) * 1000))
        .advance_watermark_to(Timestamp(micros=(T0 + 31 * DAY) * 1000))
        # Only a timer that already fired moved the customer's clock past this event: then it is late.
        .add_elements(stamped(record(3, "page_view", T0 + DAY)))
        .advance_watermark_to_infinity()
    )
    out = run_stream(stream, tmp_path, redis_url, end=T0 + 31 * DAY)
    assert changes(out) == [
        ("recent_buyer", "entered", "rule", T0),
        ("recent_buyer", "exited", "expiry", T0 + 30 * DAY + 1),
    ]
    assert [(d["reason"], d["event_id"]) for d in read_jsonl(out / "dead_letters.jsonl")] == [("late", "e3")]


def test_cart_abandonment_enters_by_timer_and_out_of_order_events_apply_in_event_time(
    tmp_path: Path, redis_url: str
) -> None:
    stream = (
        TestStream()
        .advance_watermark_to(Timestamp(micros=(T0 - MINUTE) * 1000))
        # The purchase (earlier) arrives after the cart: applied in event-time order, it does not cancel the cart.
        .add_elements(stamped(record(1, "add_to_cart", T0 + 5_000, product_id="p", price=80.0), purchase(2, T0)))
        .advance_watermark_to(Timestamp(micros=(T0 + 40 * MINUTE) * 1000))
        .advance_watermark_to_infinity()
    )
    out = run_stream(stream, tmp_path, redis_url, end=T0 + 40 * MINUTE)
    assert changes(out) == [
        ("recent_buyer", "entered", "rule", T0),
        ("cart_abandoner", "entered", "rule", T0 + 5_000 + 30 * MINUTE),
    ]
    (profile,) = read_jsonl(out / "profiles.jsonl")
    assert profile["segments"] == ["cart_abandoner", "recent_buyer"] and profile["as_of"] == T0 + 40 * MINUTE


def test_events_behind_the_customers_clock_become_late_dead_letters(tmp_path: Path, redis_url: str) -> None:
    stream = (
        TestStream()
        .advance_watermark_to(Timestamp(micros=(T0 - MINUTE) * 1000))
        .add_elements(stamped(record(1, "page_view", T0)))
        .advance_watermark_to(Timestamp(micros=(T0 + 10 * MINUTE) * 1000))
        .add_elements(stamped(purchase(2, T0 - 60 * MINUTE), record(3, "page_view", T0 + 11 * MINUTE)))
        .advance_watermark_to_infinity()
    )
    out = run_stream(stream, tmp_path, redis_url, end=T0 + 11 * MINUTE)
    letters = read_jsonl(out / "dead_letters.jsonl")
    assert [(d["reason"], d["event_id"]) for d in letters] == [("late", "e2")]
    assert changes(out) == []  # the late purchase was not applied
    (profile,) = read_jsonl(out / "profiles.jsonl")
    assert profile["features"]["counts"] == {"page_view": 2}
