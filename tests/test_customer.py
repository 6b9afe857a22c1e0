"""Per-customer logic on the plain core: scenario timelines and properties of the change stream.

Scenarios are timelines of ``(time, what, fields)`` lines, times relative to a fixed midnight:
``"00:30"``, ``"24:00:00.001"`` or ``"30d 00:00"``. ``what`` is an event type, ``"watermark"`` (fire
every timer up to that time, as a live engine does) or ``"end"`` (the input ended: every customer
goes to that time, as the core engine does at the end of a bounded input).
"""

from __future__ import annotations

import heapq
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.changes import SegmentChange
from transforms.customer import CustomerLogic, CustomerState, Step, StreamConfig
from transforms.events import EVENT_TYPES, Event
from transforms.rules import parse_rules
from transforms.summary import RunCounts

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
# The rules these tests were written against (the default configuration has more).
RULES_DOCUMENT: dict[str, Any] = {
    "version": "test-1",
    "segments": {
        "cart_abandoner": {
            "all": [
                {"since": "last.add_to_cart", "at_least": "30m"},
                {"since": "last.add_to_cart", "within": "24h"},
                {"after": "last.add_to_cart", "than": "last.purchase"},
            ]
        },
        "recent_buyer": {"since": "last.purchase", "within": "30d"},
        "big_spender": {"feature": "spend", ">=": 500},
    },
}
RULES = parse_rules(RULES_DOCUMENT)
STREAM = StreamConfig(max_out_of_orderness_ms=5 * SECOND, allowed_lateness_ms=0, dedup_horizon_ms=DAY)

_TIME = re.compile(r"^(?:(\d+)d\s+)?(\d+):(\d\d)(?::(\d\d)(?:\.(\d{3}))?)?$")


def at(text: str) -> int:
    """``"[Nd ]HH:MM[:SS[.mmm]]"`` after T0, in epoch milliseconds."""
    match = _TIME.match(text)
    assert match, f"bad timeline time {text!r}"
    days, hours, minutes, seconds, millis = (int(g or 0) for g in match.groups())
    return T0 + days * DAY + hours * HOUR + minutes * MINUTE + seconds * SECOND + millis


def make_event(n: int, kind: str, ts: int, fields: dict[str, Any]) -> Event:
    """An event with defaults: customer ``u1``, id ``e<n>``, purchases and refunds with an order."""
    values: dict[str, Any] = {"event_id": f"e{n}", "user_id": "u1"}
    if kind in ("purchase", "refund"):
        values |= {"order_id": f"o{n}", "amount": 10.0, "currency": "EUR"}
    values |= fields
    return Event(type=kind, ts=ts, **values)


@dataclass
class MiniEngine:
    """The core engine's loop without sources and sinks: keyed states, pending events, a timer heap."""

    logic: CustomerLogic
    states: dict[str, CustomerState] = field(default_factory=dict)
    pending: dict[str, list[Event]] = field(default_factory=dict)
    wakes: dict[str, int] = field(default_factory=dict)
    timers: list[tuple[int, str]] = field(default_factory=list)
    changes: list[SegmentChange] = field(default_factory=list)
    late: list[Event] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def event(self, event: Event) -> None:
        key = event.customer_key
        state = self.states.get(key)
        late, timer = self.logic.admit(state.clock if state else None, self.wakes.get(key), event)
        if late:
            self.late.append(event)
            return
        self.states.setdefault(key, self.logic.new_state(key))
        self.pending.setdefault(key, []).append(event)
        if timer is not None:
            self._set_timer(key, timer)

    def watermark(self, ts: int) -> None:
        while self.timers and self.timers[0][0] <= ts:
            fired, key = heapq.heappop(self.timers)
            if self.wakes.get(key) != fired:
                continue
            del self.wakes[key]
            self._take(key, self.logic.on_timer(self.states[key], self.pending.pop(key, []), fired, None, False))

    def end(self, ts: int) -> None:
        self.timers.clear()
        self.wakes.clear()
        for key in sorted(self.states):
            self._take(key, self.logic.on_timer(self.states[key], self.pending.pop(key, []), ts, ts, True))

    def _set_timer(self, key: str, ts: int) -> None:
        self.wakes[key] = ts
        heapq.heappush(self.timers, (ts, key))

    def _take(self, key: str, step: Step) -> None:
        if step.remaining:
            self.pending[key] = step.remaining
        if step.wake is not None:
            self._set_timer(key, step.wake)
        self.counts["accepted"] += len(step.accepted)
        self.counts["duplicates"] += len(step.duplicates)
        self.changes.extend(step.changes)


Line = tuple[str, str] | tuple[str, str, dict[str, Any]]
Expected = tuple[str, str, str, str]  # time, segment, entered/exited, reason


def run_timeline(lines: Sequence[Line], config: StreamConfig = STREAM) -> MiniEngine:
    engine = MiniEngine(CustomerLogic(RULES, config))
    for n, (time, what, *fields) in enumerate(lines, start=1):
        ts = at(time)
        if what == "watermark":
            engine.watermark(ts)
        elif what == "end":
            engine.end(ts)
        else:
            engine.event(make_event(n, what, ts, fields[0] if fields else {}))
    return engine


def changes_of(engine: MiniEngine, customer: str = "user:u1") -> list[tuple[int, str, str, str]]:
    return [(c.event_time, c.segment, c.change, c.reason) for c in engine.changes if c.customer_id == customer]


def counts(engine: MiniEngine) -> tuple[int, int]:
    """(accepted, duplicates)."""
    return engine.counts["accepted"], engine.counts["duplicates"]


def expect(lines: Sequence[Line], expected: Sequence[Expected], config: StreamConfig = STREAM) -> MiniEngine:
    """Run the timeline and compare customer ``u1``'s changes with the expected ones."""
    engine = run_timeline(lines, config)
    assert changes_of(engine) == [(at(t), segment, change, reason) for t, segment, change, reason in expected]
    return engine


# --- cart_abandoner ----------------------------------------------------------------------------


def test_cart_abandoner_enters_30_minutes_after_add_to_cart_by_timer() -> None:
    engine = expect(
        [("00:00", "add_to_cart", {"price": 20.0}), ("00:45", "watermark")],
        [("00:30", "cart_abandoner", "entered", "rule")],
    )
    assert engine.states["user:u1"].segments == {"cart_abandoner": at("00:30")}
    assert engine.wakes == {"user:u1": at("24:00:00.001")}


def test_cart_abandoner_not_before_30_minutes() -> None:
    expect([("00:00", "add_to_cart"), ("00:29:59.999", "watermark")], [])


def test_cart_abandoner_not_entered_when_purchase_within_30_minutes() -> None:
    expect(
        [("00:00", "add_to_cart"), ("00:20", "purchase"), ("02:00", "watermark")],
        [("00:20", "recent_buyer", "entered", "rule")],
    )


def test_cart_abandoner_exits_on_purchase() -> None:
    expect(
        [("00:00", "add_to_cart"), ("00:45", "watermark"), ("01:00", "purchase"), ("03:00", "watermark")],
        [
            ("00:30", "cart_abandoner", "entered", "rule"),
            ("01:00", "cart_abandoner", "exited", "rule"),
            ("01:00", "recent_buyer", "entered", "rule"),
        ],
    )


def test_cart_abandoner_expires_after_24_hours_by_timer() -> None:
    engine = expect(
        [("00:00", "add_to_cart"), ("25:00", "watermark")],
        [("00:30", "cart_abandoner", "entered", "rule"), ("24:00:00.001", "cart_abandoner", "exited", "expiry")],
    )
    state = engine.states["user:u1"]
    assert state.segments == {}
    # What is left is the state's own expiry: once the longest window (30 d by 1 d) has passed.
    assert engine.wakes == {"user:u1": at("00:00") + 31 * DAY + 1}
    engine.watermark(at("00:00") + 31 * DAY + 1)
    assert engine.wakes == {}
    assert not state.recent_event_ids and state.profile.activity.panes == {}


def test_second_add_to_cart_restarts_the_clock() -> None:
    expect(
        [("00:00", "add_to_cart"), ("00:10", "add_to_cart"), ("00:35", "watermark"), ("00:45", "watermark")],
        [("00:40", "cart_abandoner", "entered", "rule")],
    )


def test_cart_abandoner_enters_again_after_a_new_cart() -> None:
    expect(
        [
            ("00:00", "add_to_cart"),
            ("00:40", "purchase"),
            ("02:00", "add_to_cart"),
            ("03:00", "watermark"),
        ],
        [
            ("00:30", "cart_abandoner", "entered", "rule"),
            ("00:40", "cart_abandoner", "exited", "rule"),
            ("00:40", "recent_buyer", "entered", "rule"),
            ("02:30", "cart_abandoner", "entered", "rule"),
        ],
    )


# --- recent_buyer ------------------------------------------------------------------------------


def test_recent_buyer_enters_on_purchase_and_expires_30_days_later() -> None:
    engine = expect(
        [("00:00", "purchase", {"amount": 42.0}), ("30d 00:00:00.001", "watermark")],
        [("00:00", "recent_buyer", "entered", "rule"), ("30d 00:00:00.001", "recent_buyer", "exited", "expiry")],
    )
    assert engine.states["user:u1"].features.spend == 42.0


def test_recent_buyer_still_in_at_exactly_30_days() -> None:
    engine = expect(
        [("00:00", "purchase"), ("30d 00:00", "watermark")],
        [("00:00", "recent_buyer", "entered", "rule")],
    )
    assert engine.wakes == {"user:u1": at("30d 00:00:00.001")}


def test_big_spender_scores_decide_the_change() -> None:
    engine = expect(
        [("00:00", "purchase", {"amount": 300.0}), ("01:00", "purchase", {"amount": 250.0}), ("02:00", "watermark")],
        [("00:00", "recent_buyer", "entered", "rule"), ("01:00", "big_spender", "entered", "rule")],
    )
    big = engine.changes[-1]
    assert big.scores == {"spend": 550.0}
    assert big.rules_version == "test-1"


# --- seq and change_id -------------------------------------------------------------------------

TWO_CUSTOMERS: list[Line] = [
    ("00:00", "add_to_cart", {"user_id": "u1"}),
    ("00:05", "purchase", {"user_id": "u2"}),
    ("00:45", "watermark"),
    ("01:00", "purchase", {"user_id": "u1"}),
    ("02:00", "add_to_cart", {"user_id": "u2"}),
    ("40d 00:00", "end"),
]


def test_seq_strictly_increasing_per_customer() -> None:
    engine = run_timeline(TWO_CUSTOMERS)
    by_customer: dict[str, list[int]] = {}
    for change in engine.changes:
        by_customer.setdefault(change.customer_id, []).append(change.seq)
    assert by_customer == {"user:u1": [1, 2, 3, 4], "user:u2": [1, 2, 3, 4]}
    assert {k: s.seq for k, s in engine.states.items()} == {"user:u1": 4, "user:u2": 4}


def test_change_id_deterministic() -> None:
    first = [c.change_id for c in run_timeline(TWO_CUSTOMERS).changes]
    again = [c.change_id for c in run_timeline(TWO_CUSTOMERS).changes]
    assert first == again
    assert len(set(first)) == len(first)


def test_change_id_differs_by_customer() -> None:
    lines: list[Line] = [("00:00", "purchase"), ("00:10", "watermark")]
    other: list[Line] = [("00:00", "purchase", {"user_id": "u9"}), ("00:10", "watermark")]
    (mine,) = run_timeline(lines).changes
    (theirs,) = run_timeline(other).changes
    assert (mine.segment, mine.change, mine.seq) == (theirs.segment, theirs.change, theirs.seq)
    assert mine.change_id != theirs.change_id


# --- duplicates and the dedup horizon ----------------------------------------------------------


def test_duplicate_within_horizon_counted_and_not_applied() -> None:
    engine = expect(
        [
            ("00:00", "purchase", {"event_id": "p1", "amount": 300.0}),
            ("00:10", "watermark"),
            ("23:00", "purchase", {"event_id": "p1", "amount": 300.0}),
            ("23:30", "watermark"),
        ],
        [("00:00", "recent_buyer", "entered", "rule")],
    )
    assert counts(engine) == (1, 1)
    features = engine.states["user:u1"].features
    assert (features.spend, features.counts["purchase"]) == (300.0, 1)


def test_duplicate_in_same_batch_not_applied_twice() -> None:
    engine = run_timeline(
        [
            ("00:00", "add_to_cart", {"event_id": "c1", "price": 5.0}),
            ("00:00", "add_to_cart", {"event_id": "c1", "price": 5.0}),
            ("00:01", "end"),
        ]
    )
    assert counts(engine) == (1, 1)
    assert engine.states["user:u1"].features.cart_value == 5.0


def test_same_event_id_after_horizon_accepted_again() -> None:
    engine = run_timeline(
        [
            ("00:00", "page_view", {"event_id": "v1"}),
            ("00:01", "watermark"),
            ("24:00:00.001", "page_view", {"event_id": "v1"}),
            ("25:00", "watermark"),
        ]
    )
    assert counts(engine) == (2, 0)
    assert engine.states["user:u1"].features.counts == {"page_view": 2}


def test_same_event_id_at_horizon_is_duplicate() -> None:
    engine = run_timeline(
        [
            ("00:00", "page_view", {"event_id": "v1"}),
            ("24:00", "page_view", {"event_id": "v1"}),
            ("25:00", "watermark"),
        ]
    )
    assert counts(engine) == (1, 1)


def test_event_ids_expire_from_state() -> None:
    logic = CustomerLogic(RULES, STREAM)
    state = logic.new_state("user:u1")
    logic.advance(state, [make_event(1, "page_view", T0, {}), make_event(2, "page_view", T0 + HOUR, {})], T0 + HOUR)
    assert list(state.recent_event_ids) == ["e1", "e2"]
    logic.advance(state, [], T0 + DAY + 30 * MINUTE)
    assert list(state.recent_event_ids) == ["e2"]


# --- lateness and order ------------------------------------------------------------------------


def test_admit_flags_late_events() -> None:
    logic = CustomerLogic(RULES, replace(STREAM, allowed_lateness_ms=MINUTE))
    clock = at("01:00")
    event = make_event(1, "page_view", clock - MINUTE - 1, {})
    assert logic.admit(clock, None, event) == (True, None)
    assert logic.admit(clock, None, replace(event, ts=clock - MINUTE)) == (False, clock)
    assert logic.admit(clock, None, replace(event, ts=clock + 5)) == (False, clock + 5)
    assert logic.admit(None, None, event) == (False, event.ts)
    # A timer already set earlier is kept (no new timer).
    assert logic.admit(clock, clock, replace(event, ts=clock + 5)) == (False, None)
    letter = logic.late_letter(event)
    assert (letter.reason, letter.event_id, letter.event_time) == ("late", "e1", event.ts)


def test_late_event_dead_lettered_and_within_lateness_applied() -> None:
    config = replace(STREAM, allowed_lateness_ms=MINUTE)
    engine = expect(
        [
            ("01:00", "page_view"),
            ("01:00", "watermark"),
            ("00:59:30", "purchase", {"event_id": "ok"}),  # 30 s behind: applied, at the clock
            ("00:58:59.999", "purchase", {"event_id": "late"}),  # more than a minute behind
            ("02:00", "watermark"),
        ],
        [("01:00", "recent_buyer", "entered", "rule")],
        config,
    )
    assert [e.event_id for e in engine.late] == ["late"]
    assert counts(engine) == (2, 0)
    assert engine.states["user:u1"].features.last_at["purchase"] == at("00:59:30")


def test_late_without_lateness_allowance() -> None:
    engine = run_timeline([("01:00", "page_view"), ("01:00", "watermark"), ("00:59:59.999", "purchase")])
    assert [e.type for e in engine.late] == ["purchase"]
    assert engine.changes == []


def timeline_events(n: int) -> list[Event]:
    rng = random.Random(n)
    kinds = ["add_to_cart", "purchase", "page_view", "remove_from_cart", "refund", "add_to_cart"]
    return [
        make_event(i, rng.choice(kinds), T0 + rng.randrange(0, 3 * DAY, MINUTE), {"price": 7.0, "amount": 90.0})
        for i in range(n)
    ]


def test_out_of_order_within_one_advance_same_as_sorted() -> None:
    logic = CustomerLogic(RULES, STREAM)
    events = timeline_events(40)
    ordered = sorted(events, key=lambda e: e.order_key)
    shuffled = list(events)
    random.Random(7).shuffle(shuffled)
    assert shuffled != ordered
    results = []
    for pending in (ordered, shuffled, list(reversed(ordered))):
        state = logic.new_state("user:u1")
        step = logic.advance(state, pending, T0 + 40 * DAY)
        results.append((snapshot(step.changes), state.segments, state.features, step.wake))
    assert results[0][0], "the scenario should produce changes"
    assert results[0] == results[1] == results[2]


def test_advance_keeps_future_events_pending() -> None:
    logic = CustomerLogic(RULES, STREAM)
    state = logic.new_state("user:u1")
    later = make_event(2, "purchase", at("02:00"), {})
    step = logic.advance(state, [later, make_event(1, "add_to_cart", at("00:00"), {})], at("00:10"))
    assert step.remaining == [later]
    assert step.wake == at("00:30")  # the rule timer comes before the pending event
    assert step.changes == [] and state.clock == at("00:10")
    step = logic.advance(state, step.remaining, at("01:00"))
    assert [(c.segment, c.event_time) for c in step.changes] == [("cart_abandoner", at("00:30"))]
    assert step.remaining == [later] and state.clock == at("01:00")
    assert step.wake == at("02:00")  # the pending purchase comes before the cart's 24 h expiry


# --- on_timer ----------------------------------------------------------------------------------


def test_on_timer_bounded_goes_straight_to_end() -> None:
    logic = CustomerLogic(RULES, STREAM)
    state = logic.new_state("user:u1")
    events = [make_event(1, "add_to_cart", at("00:00"), {}), make_event(2, "purchase", at("05:00"), {})]
    end = at("10d 00:00")
    step = logic.on_timer(state, events, fired_at=at("00:00"), end=end, bounded=True)
    assert state.clock == end
    assert [(c.segment, c.change) for c in step.changes] == [
        ("cart_abandoner", "entered"),
        ("cart_abandoner", "exited"),
        ("recent_buyer", "entered"),
    ]
    assert step.remaining == [] and step.wake is None  # recent_buyer's expiry is after the end


def test_on_timer_live_goes_to_fired_at() -> None:
    logic = CustomerLogic(RULES, STREAM)
    state = logic.new_state("user:u1")
    events = [make_event(1, "add_to_cart", at("00:00"), {}), make_event(2, "purchase", at("05:00"), {})]
    step = logic.on_timer(state, events, fired_at=at("00:00"), end=None, bounded=False)
    assert state.clock == at("00:00")
    assert step.changes == [] and step.remaining == [events[1]]
    assert step.wake == at("00:30")
    step = logic.on_timer(state, step.remaining, fired_at=at("00:30"), end=at("00:40"), bounded=False)
    assert [c.segment for c in step.changes] == ["cart_abandoner"]
    assert step.wake is None  # the pending purchase at 05:00 is past the end


def test_on_timer_never_wakes_past_end() -> None:
    logic = CustomerLogic(RULES, STREAM)
    for end in (at("00:10"), at("00:30"), at("23:59"), at("24:00:00.001"), at("31d 00:00")):
        for bounded in (True, False):
            state = logic.new_state("user:u1")
            events = [make_event(1, "add_to_cart", at("00:00"), {}), make_event(2, "purchase", at("02:00"), {})]
            fired, pending = at("00:00"), events
            for _ in range(20):
                step = logic.on_timer(state, pending, fired, end, bounded)
                assert state.clock is not None and state.clock <= end
                if step.wake is None:
                    break
                assert step.wake <= end
                fired, pending = step.wake, step.remaining
            if bounded:
                assert state.clock == end


# --- properties --------------------------------------------------------------------------------

BOUNDARIES = [0, 1, 30 * MINUTE - 1, 30 * MINUTE, DAY, DAY + 1, 30 * DAY, 30 * DAY + 1]


@st.composite
def streams(draw: st.DrawFn, customers: int = 3) -> list[Event]:
    """Events of a few customers over a few days; some repeat an earlier event id (same payload)."""
    count = draw(st.integers(1, 40))
    events: list[Event] = []
    for n in range(count):
        if events and draw(st.integers(0, 5)) == 0:
            original = draw(st.sampled_from(events))
            shift = draw(st.sampled_from([0, 0, 1, 30 * MINUTE, DAY, DAY + 1, 2 * DAY, 3 * DAY]))
            events.append(replace(original, ts=original.ts + shift))
            continue
        if events and draw(st.booleans()):
            base = draw(st.sampled_from(events)).ts  # near an earlier event: exercises rule boundaries
            ts = base + draw(st.sampled_from(BOUNDARIES))
        else:
            ts = T0 + draw(st.integers(0, 4 * DAY))
        kind = draw(st.sampled_from(sorted(EVENT_TYPES)))
        fields: dict[str, Any] = {"user_id": f"u{draw(st.integers(1, customers))}"}
        if kind in ("purchase", "refund"):
            fields |= {
                "order_id": f"o{draw(st.integers(1, 5))}",
                "amount": draw(st.sampled_from([0.0, 9.99, 120.0, 450.0])),
                "currency": draw(st.sampled_from(["EUR", "USD"])),
            }
        elif kind in ("add_to_cart", "remove_from_cart"):
            fields |= {"price": draw(st.sampled_from([None, 5.0, 19.5])), "quantity": draw(st.integers(1, 3))}
        events.append(make_event(n, kind, ts, fields))
    return events


def snapshot(changes: Iterable[SegmentChange]) -> list[tuple[Any, ...]]:
    return [(c.change_id, c.customer_id, c.segment, c.change, c.seq, c.event_time, c.reason) for c in changes]


@dataclass
class Outcome:
    changes: list[SegmentChange] = field(default_factory=list)
    states: dict[str, CustomerState] = field(default_factory=dict)
    accepted: int = 0
    duplicates: int = 0

    def key(self) -> tuple[Any, ...]:
        finals = {k: (s.seq, s.segments, s.features.to_dict(), s.features) for k, s in sorted(self.states.items())}
        return snapshot(self.changes), finals, self.accepted, self.duplicates


def by_customer(events: list[Event]) -> dict[str, list[Event]]:
    keyed: dict[str, list[Event]] = {}
    for event in events:
        keyed.setdefault(event.customer_key, []).append(event)
    return keyed


def end_of(events: list[Event]) -> int:
    return max(e.ts for e in events) + 32 * DAY  # past every rule timer and the state's expiry


def run_batch(logic: CustomerLogic, events: list[Event], end: int) -> Outcome:
    outcome = Outcome()
    for key, mine in sorted(by_customer(events).items()):
        state = outcome.states[key] = logic.new_state(key)
        step = logic.advance(state, mine, end)
        assert step.remaining == [] and step.wake is None
        outcome.changes += step.changes
        outcome.accepted += len(step.accepted)
        outcome.duplicates += len(step.duplicates)
    return outcome


def run_incremental(
    logic: CustomerLogic, events: list[Event], cuts: list[int], end: int, rng: random.Random
) -> Outcome:
    """Advance each customer at every cut; each event arrives (in random order) no later than it is due."""
    times = sorted({*cuts, end})
    outcome = Outcome()
    for key, mine in sorted(by_customer(events).items()):
        arrivals: dict[int, list[Event]] = {}
        for event in mine:
            due = next(i for i, t in enumerate(times) if t >= event.ts)
            arrivals.setdefault(rng.randint(0, due), []).append(event)
        state = outcome.states[key] = logic.new_state(key)
        pending: list[Event] = []
        for i, to_ts in enumerate(times):
            pending = pending + arrivals.get(i, [])
            rng.shuffle(pending)
            step = logic.advance(state, pending, to_ts)
            pending = step.remaining
            outcome.changes += step.changes
            outcome.accepted += len(step.accepted)
            outcome.duplicates += len(step.duplicates)
        assert pending == []
    return outcome


def check_change_stream(changes: list[SegmentChange]) -> None:
    seqs: dict[str, list[int]] = {}
    lives: dict[tuple[str, str], list[str]] = {}
    for change in changes:
        seqs.setdefault(change.customer_id, []).append(change.seq)
        lives.setdefault((change.customer_id, change.segment), []).append(change.change)
    for seq in seqs.values():
        assert seq == list(range(1, len(seq) + 1))
    for kinds in lives.values():
        assert kinds == ["entered", "exited"] * (len(kinds) // 2) + ["entered"] * (len(kinds) % 2)


@st.composite
def cuts_for(draw: st.DrawFn, events: list[Event]) -> list[int]:
    """Intermediate advance times: anywhere in the run, or just around an event's rule boundaries."""
    start, end = min(e.ts for e in events) - HOUR, end_of(events)
    anywhere = st.integers(start, end)
    near = st.tuples(st.sampled_from(events), st.sampled_from([-1, *BOUNDARIES])).map(lambda p: p[0].ts + p[1])
    return draw(st.lists(st.one_of(anywhere, near), max_size=10))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), events=streams(), seed=st.integers(0, 2**32))
def test_incremental_equals_batch(data: st.DataObject, events: list[Event], seed: int) -> None:
    logic = CustomerLogic(RULES, STREAM)
    end = end_of(events)
    cuts = data.draw(cuts_for(events), label="cuts")
    batch = run_batch(logic, events, end)
    incremental = run_incremental(logic, events, cuts, end, random.Random(seed))
    assert incremental.key() == batch.key()


# Every kind of feature: windows, sessions, engagement, RFM, a rule that holds before any event.
RICH_RULES = parse_rules(
    {
        "version": "rich",
        "segments": {
            **{name: spec for name, spec in RULES_DOCUMENT["segments"].items()},
            "busy_hour": {"feature": "window.1h.events", ">=": 3},
            "long_sessions": {"feature": "window.24h.session_minutes", ">": 20},
            "engaged": {"feature": "engagement_score", ">=": 40},
            "champion": {"feature": "rfm.frequency", ">=": 4},
            "never_bought": {"not": {"feature": "orders", ">": 0}},
            "cart_heavy_week": {
                "all": [
                    {"feature": "window.7d.cart_value", ">": 30},
                    {"not": {"since": "last.purchase", "within": "7d"}},
                ]
            },
        },
    }
)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), events=streams(), seed=st.integers(0, 2**32))
def test_evaluating_only_affected_segments_equals_evaluating_all(
    data: st.DataObject, events: list[Event], seed: int
) -> None:
    """After an event, only the segments whose features its type can change are evaluated again."""
    tracked = CustomerLogic(RICH_RULES, STREAM)
    everything = CustomerLogic(RICH_RULES, STREAM)
    everything.affected = dict.fromkeys(everything.affected, frozenset(RICH_RULES.segments))
    assert tracked.affected["page_view"] < everything.affected["page_view"]  # there is something to skip
    end = end_of(events)
    cuts = data.draw(cuts_for(events), label="cuts")
    one = run_incremental(tracked, events, cuts, end, random.Random(seed))
    other = run_incremental(everything, events, cuts, end, random.Random(seed))
    assert one.key() == other.key()


@settings(max_examples=150, deadline=None)
@given(events=streams())
def test_seq_gapless_and_changes_alternate(events: list[Event]) -> None:
    outcome = run_batch(CustomerLogic(RULES, STREAM), events, end_of(events))
    check_change_stream(outcome.changes)
    last: dict[tuple[str, str], str] = {(c.customer_id, c.segment): c.change for c in outcome.changes}
    for key, state in outcome.states.items():
        assert state.seq == sum(1 for c in outcome.changes if c.customer_id == key)
        assert set(state.segments) == {
            segment for (who, segment), kind in last.items() if who == key and kind == "entered"
        }
        assert set(state.segments) <= {"big_spender"}  # 31 days after the last event, every timed segment expired


@settings(max_examples=150, deadline=None)
@given(events=streams())
def test_every_event_accepted_or_duplicate(events: list[Event]) -> None:
    outcome = run_batch(CustomerLogic(RULES, STREAM), events, end_of(events))
    assert outcome.accepted + outcome.duplicates == len(events)
    ids = Counter((e.customer_key, e.event_id) for e in events)
    assert outcome.accepted >= len(ids)  # every distinct id is applied at least once


@settings(max_examples=150, deadline=None)
@given(events=streams(), jitter_seed=st.integers(0, 2**32))
def test_engine_loop_equals_batch(events: list[Event], jitter_seed: int) -> None:
    """The watermark-and-timer loop (events arriving out of order within the bound) gives the batch result."""
    rng = random.Random(jitter_seed)
    bound = STREAM.max_out_of_orderness_ms
    # Arrival order: by event time plus a jitter below the out-of-orderness bound.
    arriving = sorted(events, key=lambda e: e.ts + rng.randrange(bound))
    engine = MiniEngine(CustomerLogic(RULES, STREAM))
    max_ts: int | None = None
    for event in arriving:
        engine.event(event)
        if max_ts is None or event.ts > max_ts:
            max_ts = event.ts
            engine.watermark(max_ts - bound)
    end = end_of(events)
    engine.end(end)
    batch = run_batch(CustomerLogic(RULES, STREAM), events, end)
    assert engine.late == []
    ordered = sorted(engine.changes, key=lambda c: (c.customer_id, c.seq))
    assert snapshot(ordered) == snapshot(batch.changes)
    assert (engine.counts["accepted"], engine.counts["duplicates"]) == (batch.accepted, batch.duplicates)
    assert {k: (s.segments, s.features) for k, s in engine.states.items()} == {
        k: (s.segments, s.features) for k, s in batch.states.items()
    }


# --- run counts --------------------------------------------------------------------------------


def test_run_counts_balanced_merge_and_summary() -> None:
    worker_a, worker_b = RunCounts(), RunCounts()
    worker_a.add("events_in", 5)
    worker_a.add("accepted", 3)
    worker_a.add("duplicates")
    worker_a.add_dead_letter("late")
    worker_a.add_change("recent_buyer", "entered", 2)
    worker_a.add("customers", 2)
    assert worker_a.balanced()
    worker_b.add("events_in", 2)
    worker_b.add("accepted")
    assert not worker_b.balanced()
    worker_b.add_dead_letter("malformed")
    worker_b.add_change("recent_buyer", "exited")
    worker_b.add_change("cart_abandoner", "entered")
    worker_a.merge(worker_b)
    assert worker_a.balanced()
    summary = worker_a.summary(seconds=2.0, engine="core", rules_version="default-1")
    assert summary == {
        "events_in": 7,
        "accepted": 4,
        "duplicates": 1,
        "no_consent": 0,
        "forgets": 0,
        "consent_revocations": 0,
        "dead_letters": {"late": 1, "malformed": 1},
        "customers": 2,
        "segment_changes": {
            "cart_abandoner": {"entered": 1, "exited": 0},
            "recent_buyer": {"entered": 2, "exited": 1},
        },
        "seconds": 2.0,
        "events_per_second": 3.5,
        "engine": "core",
        "rules_version": "default-1",
        "models": None,
        "model_updates": {},
    }
    assert list(summary["dead_letters"]) == ["late", "malformed"]
    assert RunCounts().summary(0.0, "core", "v")["events_per_second"] == 0.0
