"""Segment scenarios as timelines, run on the plain core AND on the Beam streaming topology.

Each timeline is a list of ``(time, what, fields)`` lines (times as in :mod:`tests.test_customer`:
``"[Nd ]HH:MM[:SS[.mmm]]"`` after 2024-01-01T00:00Z). ``what`` is an event type, ``"watermark"`` (timers
fire up to that time) or ``"end"`` (the input stopped there: the last line). On the core the timeline
drives the :class:`tests.test_customer.MiniEngine` loop; on Beam it becomes a ``TestStream`` with
``advance_watermark_to`` steps, a stop clock at the end and :class:`pipelines.beam_pipeline.LiveCustomerFn`.
Both must produce exactly the expected changes (and the same change records, final profiles and
late events as each other). Engagement exits are computed here from the formula of
:mod:`transforms.engagement`, not with ``falls_below``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp

from pipelines.beam_pipeline import LiveCustomerFn, build
from pipelines.redis_store import StopClock
from pipelines.sources import RawRecord
from tests.conftest import make_spec, read_jsonl, without_scores
from tests.test_customer import MiniEngine, at, check_change_stream, make_event
from transforms.changes import SegmentChange
from transforms.config import JobConfig, parse_config
from transforms.customer import CustomerLogic
from transforms.engagement import DEFAULT_WEIGHTS

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

Line = tuple[str, str] | tuple[str, str, dict[str, Any]]
Expected = tuple[int, str, str, str]  # event time, segment, entered/exited, reason

HIGH_ENGAGEMENT = {
    "all": [
        {"feature": "window.7d.sessions", ">": 5},
        {"feature": "window.7d.session_minutes", ">": 4},
    ]
}
HIGH_PURCHASE_INTENT = {
    "all": [
        {"feature": "cart_value", ">": 50},
        {"since": "last.add_to_cart", "at_least": "30m", "within": "24h"},
        {"after": "last.add_to_cart", "than": "last.purchase"},
    ]
}
ENGAGED = {"feature": "engagement_score", ">=": 60}
ENGAGEMENT_HALF_LIFE = HOUR
ENGAGEMENT_SATURATION = 25.0


def config_for(**segments: Any) -> JobConfig:
    """The job configuration of a timeline: these segments, default windows (7d by 1d among them),
    30-minute sessions and an engagement half-life of one hour."""
    return parse_config(
        {"version": "timelines-1", "segments": segments, "engagement": {"half_life": "1h", "saturation": 25}},
        env={},
    )


# --- the engagement formula, evaluated here --------------------------------------------------


def formula_score(events: Sequence[tuple[str, int]], now: int) -> float:
    """``100 * (1 - exp(-sum(w * 2 ** (-(now - ts) / half_life)) / saturation))`` over events up to ``now``."""
    points = sum(
        DEFAULT_WEIGHTS[kind] * 2.0 ** (-(now - ts) / ENGAGEMENT_HALF_LIFE) for kind, ts in events if ts <= now
    )
    return 100.0 * (1.0 - math.exp(-points / ENGAGEMENT_SATURATION))


def first_ms_below(events: Sequence[tuple[str, int]], threshold: float, after: int) -> int:
    """The first millisecond after ``after`` with a formula score under ``threshold`` (no event after ``after``)."""
    assert all(ts <= after for _, ts in events)
    low, high = after, after + 1
    while formula_score(events, high) >= threshold:
        high += 100 * ENGAGEMENT_HALF_LIFE
    while high - low > 1:  # invariant: score(low) >= threshold > score(high)
        middle = (low + high) // 2
        if formula_score(events, middle) >= threshold:
            low = middle
        else:
            high = middle
    return high


def happenings(lines: Sequence[Line], until: int) -> list[tuple[str, int]]:
    return [(what, at(time)) for time, what, *_ in lines if what not in ("watermark", "end") and at(time) <= until]


# --- the timelines -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    name: str
    config: JobConfig
    lines: list[Line]
    expected: list[Expected]
    late: tuple[str, ...] = ()  # event ids that arrive behind the customer's clock

    def __post_init__(self) -> None:
        assert self.lines[-1][1] == "end", "a timeline ends with an 'end' line"
        marks = [at(t) for t, what, *_ in self.lines if what in ("watermark", "end")]
        assert marks == sorted(set(marks)), "watermarks only move forward"


def sessions_of_four_minutes(days: range) -> list[Line]:
    """One 4-minute session a day at 10:00 (page views at 10:00, 10:02, 10:04), a watermark at noon."""
    lines: list[Line] = []
    for day in days:
        lines += [(f"{day}d 10:00", "page_view"), (f"{day}d 10:02", "page_view"), (f"{day}d 10:04", "page_view")]
        lines.append((f"{day}d 12:00", "watermark"))
    return lines


# Five 4-minute sessions (days 0-4), then a sixth: at 5d 10:04 the mean is 24/6 = 4.0 (not > 4); the
# event at 5d 10:04:30 makes it 24.5/6 = 4.083 and the customer enters. The 7d window slides by day:
# at 7d 00:00 the day-0 pane leaves it, 5 sessions are left, and the customer exits by timer.
HIGH_ENGAGEMENT_EXPIRES = Timeline(
    "high_engagement_enters_on_event_and_expires_when_the_first_day_leaves",
    config_for(high_engagement=HIGH_ENGAGEMENT),
    [
        *sessions_of_four_minutes(range(5)),
        ("5d 10:00", "page_view"),
        ("5d 10:02", "page_view"),
        ("5d 10:04", "page_view"),
        ("5d 10:04:30", "page_view"),
        ("5d 12:00", "watermark"),
        ("6d 23:59:59.999", "watermark"),
        ("7d 06:00", "watermark"),
        ("9d 00:00", "end"),
    ],
    [
        (at("5d 10:04:30"), "high_engagement", "entered", "rule"),
        (at("7d 00:00"), "high_engagement", "exited", "expiry"),
    ],
)

# The same, plus a session on day 6: its first event drops the mean to 24.5/7 = 3.5 (exit by rule), its
# last (4 minutes later) lifts it to 28.5/7 = 4.07 (back in). When day 0 leaves, 6 sessions averaging
# 24.5/6 are left (still in); when day 1 leaves at 8d 00:00, only 5 are: exit by timer.
HIGH_ENGAGEMENT_SEVENTH_SESSION = Timeline(
    "high_engagement_dips_with_a_new_session_and_expires_when_day_1_leaves",
    config_for(high_engagement=HIGH_ENGAGEMENT),
    [
        *HIGH_ENGAGEMENT_EXPIRES.lines[:-4],
        ("6d 10:00", "page_view"),
        ("6d 10:04", "page_view"),
        ("6d 12:00", "watermark"),
        ("7d 12:00", "watermark"),
        ("10d 00:00", "end"),
    ],
    [
        (at("5d 10:04:30"), "high_engagement", "entered", "rule"),
        (at("6d 10:00"), "high_engagement", "exited", "rule"),
        (at("6d 10:04"), "high_engagement", "entered", "rule"),
        (at("8d 00:00"), "high_engagement", "exited", "expiry"),
    ],
)

# A cart of 30 + 2 x 12.50 = 55 by 00:10: 30 minutes after the last add, with no purchase since, the
# customer enters by timer (00:40); 24 h after the last add (and one ms) it exits by timer. A cart
# event that arrives after the customer's clock passed it is late and changes nothing.
PURCHASE_INTENT_EXPIRES = Timeline(
    "high_purchase_intent_enters_by_timer_and_expires_after_24_hours",
    config_for(high_purchase_intent=HIGH_PURCHASE_INTENT),
    [
        ("00:00", "add_to_cart", {"product_id": "p1", "price": 30.0}),
        ("00:10", "add_to_cart", {"product_id": "p2", "price": 12.5, "quantity": 2}),
        ("00:20", "watermark"),
        ("00:39:59", "watermark"),
        ("01:00", "watermark"),
        ("25:00", "watermark"),
        ("00:30", "add_to_cart", {"event_id": "late-cart", "product_id": "p3", "price": 500.0}),
        ("26:00", "end"),
    ],
    [
        (at("00:40"), "high_purchase_intent", "entered", "rule"),
        (at("24:10:00.001"), "high_purchase_intent", "exited", "expiry"),
    ],
    late=("late-cart",),
)

# Under 50 the cart does not count (a removal takes it back under), a purchase ends the intent by
# rule, and a purchase within 30 minutes of the next cart prevents the entry.
PURCHASE_INTENT_RULES = Timeline(
    "high_purchase_intent_needs_over_50_and_ends_with_a_purchase",
    config_for(high_purchase_intent=HIGH_PURCHASE_INTENT),
    [
        ("00:00", "add_to_cart", {"price": 40.0}),
        ("00:45", "watermark"),  # 00:30: a cart of 40 is not enough
        ("01:00", "add_to_cart", {"price": 20.0}),  # 60
        ("01:29", "remove_from_cart", {"price": 20.0}),  # back to 40 before the 01:30 timer
        ("02:00", "watermark"),
        ("03:00", "add_to_cart", {"price": 15.0}),  # 55
        ("03:40", "watermark"),
        ("05:00", "purchase", {"amount": 55.0}),  # empties the cart
        ("05:30", "watermark"),
        ("06:00", "add_to_cart", {"price": 60.0}),
        ("06:20", "purchase", {"amount": 60.0}),
        ("07:00", "watermark"),
        ("08:00", "end"),
    ],
    [
        (at("03:30"), "high_purchase_intent", "entered", "rule"),
        (at("05:00"), "high_purchase_intent", "exited", "rule"),
    ],
)

# Purchases weigh 10; with a 1 h half-life and saturation 25, 60 needs 25 * ln(1 / 0.4) = 22.9 points:
# two purchases 10 minutes apart have 18.9 (53), the third at 00:20 makes 26.8 (65.8): enter. With no
# further event the score decays below 60 at a millisecond computed from the formula: exit by timer.
# Hours later the same again.
ENGAGED_LINES: list[Line] = [
    ("00:00", "purchase"),
    ("00:10", "purchase"),
    ("00:20", "purchase"),
    ("01:00", "watermark"),
    ("10:00", "purchase"),
    ("10:10", "purchase"),
    ("10:15", "watermark"),
    ("10:20", "purchase"),
    ("11:00", "watermark"),
    ("12:00", "end"),
]
ENGAGED_TIMELINE = Timeline(
    "engaged_enters_on_events_and_exits_at_the_formula_millisecond",
    config_for(engaged=ENGAGED),
    ENGAGED_LINES,
    [
        (at("00:20"), "engaged", "entered", "rule"),
        (first_ms_below(happenings(ENGAGED_LINES, at("00:20")), 60.0, at("00:20")), "engaged", "exited", "expiry"),
        (at("10:20"), "engaged", "entered", "rule"),
        (first_ms_below(happenings(ENGAGED_LINES, at("10:20")), 60.0, at("10:20")), "engaged", "exited", "expiry"),
    ],
)

# All three rules at once. A cart added after three purchases keeps the customer engaged longer (5
# more points) and, 30 minutes later, makes it a purchase intent; the next purchase ends the intent
# but is not enough to be engaged again.
COMBINED_LINES: list[Line] = [
    ("00:00", "purchase"),
    ("00:10", "purchase"),
    ("00:20", "purchase"),
    ("00:25", "add_to_cart", {"price": 80.0}),
    ("00:30", "watermark"),
    ("01:10", "watermark"),
    ("02:00", "purchase", {"amount": 80.0}),
    ("02:30", "watermark"),
    ("03:00", "end"),
]
COMBINED = Timeline(
    "three_rules_together",
    config_for(high_engagement=HIGH_ENGAGEMENT, high_purchase_intent=HIGH_PURCHASE_INTENT, engaged=ENGAGED),
    COMBINED_LINES,
    [
        (at("00:20"), "engaged", "entered", "rule"),
        (first_ms_below(happenings(COMBINED_LINES, at("00:25")), 60.0, at("00:25")), "engaged", "exited", "expiry"),
        (at("00:55"), "high_purchase_intent", "entered", "rule"),
        (at("02:00"), "high_purchase_intent", "exited", "rule"),
    ],
)

TIMELINES = [
    HIGH_ENGAGEMENT_EXPIRES,
    HIGH_ENGAGEMENT_SEVENTH_SESSION,
    PURCHASE_INTENT_EXPIRES,
    PURCHASE_INTENT_RULES,
    ENGAGED_TIMELINE,
    COMBINED,
]


# RFM against the population of buyers: the only buyer has the mid-rank 3 in every dimension, so
# it enters at its first purchase and stays.
RFM_TIMELINE = Timeline(
    "ranked_buyer_stays_ranked",
    config_for(ranked_buyer={"feature": "rfm.frequency", ">=": 1}),
    [
        ("00:00", "purchase"),
        ("00:05", "watermark"),
        ("00:10", "purchase"),
        ("00:15", "watermark"),
        ("00:20", "purchase"),
        ("01:00", "end"),
    ],
    [(at("00:00"), "ranked_buyer", "entered", "rule")],
)


def test_the_engagement_timelines_are_designed_right() -> None:
    """The hand-made engagement timelines cross 60 where their comments say (by the formula)."""
    events = happenings(ENGAGED_LINES, at("12:00"))
    assert formula_score(events[:2], at("00:10")) < 60.0 <= formula_score(events[:3], at("00:20"))
    assert formula_score(events[:5], at("10:10")) < 60.0 <= formula_score(events[:6], at("10:20"))
    first_exit = ENGAGED_TIMELINE.expected[1][0]
    assert at("00:33") < first_exit < at("00:35")  # 00:20 + 1 h * log2(26.85 / 22.91) = 00:33:43.x
    combined = happenings(COMBINED_LINES, at("03:00"))
    assert formula_score(combined, at("02:00")) < 60.0  # the last purchase does not make it engaged again
    assert at("00:25") < COMBINED.expected[1][0] < at("00:55")  # exits before the intent enters


# --- running a timeline ------------------------------------------------------------------------


def events_of(timeline: Timeline) -> list[tuple[str, Any]]:
    """The timeline as steps: ``("event", Event)``, ``("watermark", ts)`` or ``("end", ts)``."""
    steps: list[tuple[str, Any]] = []
    for n, (time, what, *fields) in enumerate(timeline.lines, start=1):
        if what in ("watermark", "end"):
            steps.append((what, at(time)))
        else:
            steps.append(("event", make_event(n, what, at(time), fields[0] if fields else {})))
    return steps


@dataclass
class Run:
    changes: list[dict[str, Any]]
    profiles: list[dict[str, Any]]
    late: list[str]


def run_core(timeline: Timeline) -> Run:
    engine = MiniEngine(timeline.config.logic())
    for kind, value in events_of(timeline):
        if kind == "event":
            engine.event(value)
        elif kind == "watermark":
            engine.watermark(value)
        else:
            engine.end(value)
    check_change_stream(engine.changes)
    engine.logic.model.population.refresh()  # as the core engine does before the final profiles
    profiles = [engine.logic.profile(state) for _, state in sorted(engine.states.items())]
    return Run([c.to_dict() for c in engine.changes], profiles, [e.event_id for e in engine.late])


def micros(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


def run_beam(timeline: Timeline, tmp_path: Path, redis_url: str) -> Run:
    steps = events_of(timeline)
    first = min(e.ts for kind, e in steps if kind == "event")
    stream = TestStream().advance_watermark_to(micros(first - MINUTE))
    batch: list[beam.window.TimestampedValue] = []
    end = None
    for n, (kind, value) in enumerate(steps, start=1):
        if kind == "event":
            record = RawRecord("test", str(n), value.to_record())
            batch.append(beam.window.TimestampedValue(record, micros(value.ts)))
            continue
        if batch:
            stream = stream.add_elements(batch)
            batch = []
        if kind == "watermark":
            stream = stream.advance_watermark_to(micros(value))
        else:
            end = value
    assert end is not None
    stream = stream.advance_watermark_to_infinity()
    out = tmp_path / "beam"
    spec = make_spec("test-stream", redis_url, out, config=timeline.config)
    stop_clock = StopClock(redis_url, "segstream:run:timelines:stop_at")
    stop_clock.mark(end)
    with beam.Pipeline(options=PipelineOptions(["--streaming"])) as pipeline:
        build(spec, pipeline | stream, LiveCustomerFn(spec.config, stop_clock, spec.redis_prefix))
    changes = sorted(read_jsonl(out / "changes.jsonl"), key=lambda c: (c["customer_id"], c["seq"]))
    profiles = sorted(read_jsonl(out / "profiles.jsonl"), key=lambda p: p["customer_id"])
    letters = read_jsonl(out / "dead_letters.jsonl")
    assert {d["reason"] for d in letters} <= {"late"}
    return Run(changes, profiles, [d["event_id"] for d in letters])


def summary(changes: list[dict[str, Any]]) -> list[Expected]:
    return [(c["event_time"], c["segment"], c["change"], c["reason"]) for c in changes]


def assert_well_formed(changes: list[dict[str, Any]], version: str) -> None:
    """``seq`` strictly increasing per customer, entered/exited alternating per segment, one rule set."""
    seqs: dict[str, list[int]] = {}
    lives: dict[tuple[str, str], list[str]] = {}
    for change in changes:
        seqs.setdefault(change["customer_id"], []).append(change["seq"])
        lives.setdefault((change["customer_id"], change["segment"]), []).append(change["change"])
        assert change["rules_version"] == version
    for seq in seqs.values():
        assert all(a < b for a, b in itertools.pairwise(seq)), seq
    for kinds in lives.values():
        assert all(kind == ("entered" if i % 2 == 0 else "exited") for i, kind in enumerate(kinds)), kinds


@pytest.mark.parametrize("timeline", TIMELINES, ids=lambda t: t.name)
def test_timeline_on_the_core(timeline: Timeline) -> None:
    run = run_core(timeline)
    assert summary(run.changes) == timeline.expected
    assert_well_formed(run.changes, "timelines-1")
    assert [c["seq"] for c in run.changes] == list(range(1, len(run.changes) + 1))
    assert run.late == list(timeline.late)


@pytest.mark.parametrize("timeline", TIMELINES, ids=lambda t: t.name)
def test_timeline_on_beam(timeline: Timeline, tmp_path: Path, redis_url: str) -> None:
    run = run_beam(timeline, tmp_path, redis_url)
    assert summary(run.changes) == timeline.expected
    assert_well_formed(run.changes, "timelines-1")
    assert sorted(run.late) == sorted(timeline.late)
    core = run_core(timeline)
    assert run.changes == core.changes  # ids, seq, scores: the very same change records
    # The final profiles agree too, except RFM (see test_live_beam_final_profile_ranks_against_the_population).
    assert without_rfm(run.profiles) == without_rfm(core.profiles)
    assert [p["as_of"] for p in run.profiles] == [at(timeline.lines[-1][0])]


def without_rfm(profiles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return without_scores([{k: v for k, v in profile.items() if k != "rfm"} for profile in profiles])


def test_rfm_timeline_on_the_core() -> None:
    run = run_core(RFM_TIMELINE)
    assert summary(run.changes) == RFM_TIMELINE.expected
    assert [p["rfm"] for p in run.profiles] == [{"recency": 3, "frequency": 3, "monetary": 3}]


def test_rfm_timeline_on_beam(tmp_path: Path, redis_url: str) -> None:
    # Regression: the DirectRunner may make a DoFn instance per bundle; the live step's RFM population
    # must outlive them, or a repeat purchase leaves buckets the population never had.
    run = run_beam(RFM_TIMELINE, tmp_path, redis_url)
    assert summary(run.changes) == RFM_TIMELINE.expected


def test_live_beam_final_profile_ranks_against_the_population(tmp_path: Path, redis_url: str) -> None:
    # The only buyer, with six purchases, ranks in the middle (3) on both engines: the live step's final
    # profiles rank against the whole population it has seen.
    core = run_core(ENGAGED_TIMELINE)
    assert [p["rfm"] for p in core.profiles] == [{"recency": 3, "frequency": 3, "monetary": 3}]
    beam_run = run_beam(ENGAGED_TIMELINE, tmp_path, redis_url)
    assert [p["rfm"] for p in beam_run.profiles] == [p["rfm"] for p in core.profiles]


def test_high_engagement_changes_carry_the_window_scores() -> None:
    entered, exited = run_core(HIGH_ENGAGEMENT_EXPIRES).changes
    assert entered["scores"] == {"window.7d.session_minutes": 4.083, "window.7d.sessions": 6.0}  # 24.5 / 6
    assert exited["scores"] == {"window.7d.session_minutes": 4.1, "window.7d.sessions": 5.0}  # (3 x 4 + 4.5 + 4) / 5


def test_purchase_intent_change_carries_the_cart_value() -> None:
    entered, _ = run_core(PURCHASE_INTENT_EXPIRES).changes
    assert entered["scores"] == {"cart_value": 55.0}


# --- a new rule set on existing state (core only) ---------------------------------------------

V1 = {
    "version": "v1",
    "segments": {
        "big_spender": {"feature": "spend", ">=": 100},
        "browser": {"feature": "count.page_view", ">=": 2},
        "recent_buyer": {"since": "last.purchase", "within": "30d"},
    },
}
V2 = {
    "version": "v2",
    "segments": {
        "big_spender": {"feature": "spend", ">=": 50},  # a lower threshold
        "recent_buyer": {"since": "last.purchase", "within": "1d"},  # a shorter memory; "browser" is gone
    },
}


def logic_for(document: dict[str, Any]) -> CustomerLogic:
    return parse_config(document, env={}).logic()


def test_a_new_rule_set_reevaluates_existing_state_with_no_new_event() -> None:
    v1, v2 = logic_for(V1), logic_for(V2)
    state = v1.new_state("user:u1")
    events = [
        make_event(1, "page_view", at("00:00"), {}),
        make_event(2, "page_view", at("00:05"), {}),
        make_event(3, "purchase", at("00:10"), {"amount": 80.0}),
    ]
    first = v1.advance(state, events, at("2d 00:00"))
    assert summary([c.to_dict() for c in first.changes]) == [
        (at("00:05"), "browser", "entered", "rule"),
        (at("00:10"), "recent_buyer", "entered", "rule"),
    ]
    assert state.rules_version == "v1" and state.seq == 2
    # The job restarts with v2; the customer's next timer fires with no new event.
    second = v2.advance(state, [], at("2d 00:00"))
    changes = second.changes
    assert [(c.event_time, c.segment, c.change, c.reason, c.rules_version) for c in changes] == [
        (at("2d 00:00"), "big_spender", "entered", "rule", "v2"),
        (at("2d 00:00"), "browser", "exited", "rule", "v2"),
        (at("2d 00:00"), "recent_buyer", "exited", "rule", "v2"),  # 1 d after the purchase passed under v2
    ]
    assert [c.seq for c in changes] == [3, 4, 5]
    all_changes = [c.to_dict() for c in first.changes + changes]
    check_change_stream(first.changes + changes)
    assert [c["seq"] for c in all_changes] == [1, 2, 3, 4, 5]
    assert state.rules_version == "v2" and set(state.segments) == {"big_spender"}
    assert changes[0].scores == {"spend": 80.0}
    # Evaluated once: advancing again under v2 changes nothing.
    again = v2.advance(state, [], at("3d 00:00"))
    assert again.changes == [] and state.seq == 5


def test_a_new_rule_set_on_a_timer_due_under_the_old_one() -> None:
    """v1's recent_buyer would expire at 30 d; under v2 the first advance says what v2 thinks at the
    clock, then v2's own timers take over."""
    v1, v2 = logic_for(V1), logic_for(V2)
    state = v1.new_state("user:u1")
    first = v1.advance(state, [make_event(1, "purchase", at("00:00"), {"amount": 20.0})], at("12:00"))
    assert [(c.segment, c.change) for c in first.changes] == [("recent_buyer", "entered")]
    step = v2.advance(state, [], at("12:00"))
    assert step.changes == []  # still within v2's 1 d, and 20 is under v2's 50
    assert state.rule_wake == at("24:00:00.001")  # v2's expiry, not v1's 30 d
    step = v2.advance(state, [], state.rule_wake)
    assert [(c.event_time, c.segment, c.change, c.reason, c.rules_version, c.seq) for c in step.changes] == [
        (at("24:00:00.001"), "recent_buyer", "exited", "expiry", "v2", 2)
    ]


def test_a_new_rule_set_before_any_event_emits_nothing() -> None:
    v1, v2 = logic_for(V1), logic_for(V2)
    state = v1.new_state("user:u1")
    step = v2.advance(state, [], at("00:00"))
    assert step.changes == [] and state.rules_version == "v2"
    step = v2.advance(state, [make_event(1, "purchase", at("00:10"), {"amount": 60.0})], at("00:10"))
    changes: list[SegmentChange] = step.changes
    assert [(c.segment, c.change, c.seq, c.rules_version) for c in changes] == [
        ("big_spender", "entered", 1, "v2"),
        ("recent_buyer", "entered", 2, "v2"),
    ]
