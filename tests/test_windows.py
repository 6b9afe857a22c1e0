"""Properties of :class:`transforms.windows.WindowSet` against a brute-force recomputation from raw events.

The reference below is written from the module docstring's definitions, not from the implementation:
a window of ``size`` S sliding by ``slide`` P covers, at ``now``, ``[(now // P - S // P + 1) * P, now]``;
``sessions`` are the maximal runs of the customer's events less than ``session_gap_ms`` apart whose
*start* lies in the window; ``session_minutes`` is their mean duration in minutes (3 decimals);
``cart_value`` sums ``price * quantity`` of ``add_to_cart``; ``spend`` is purchases net of refunds.
Prices and amounts are binary fractions, so sums are exact whatever the order of addition.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.events import EVENT_TYPES, Event
from transforms.windows import Activity, WindowSet, WindowSpec

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
TYPES = sorted(EVENT_TYPES)

SPEC_POOL = (
    WindowSpec("10m", 10 * MINUTE, 2 * MINUTE),
    WindowSpec("1h", HOUR, 5 * MINUTE),
    WindowSpec("3h", 3 * HOUR, HOUR),
    WindowSpec("24h", DAY, HOUR),
    WindowSpec("7d", 7 * DAY, DAY),
    WindowSpec("30m_tumbling", 30 * MINUTE, 30 * MINUTE),
)


# --- the reference -----------------------------------------------------------------------------


def window_start(spec: WindowSpec, now: int) -> int:
    size, slide = spec.size_ms, spec.slide_ms
    return (now // slide - size // slide + 1) * slide


def brute_sessions(events: Sequence[Event], gap: int) -> list[tuple[int, int]]:
    """Maximal runs of events whose consecutive times are less than ``gap`` apart: (start, end)."""
    runs: list[tuple[int, int]] = []
    for ts in sorted(e.ts for e in events):
        if runs and ts - runs[-1][1] < gap:
            runs[-1] = (runs[-1][0], ts)
        else:
            runs.append((ts, ts))
    return runs


def brute(events: Sequence[Event], spec: WindowSpec, gap: int, now: int) -> dict[str, Any]:
    """Every metric of ``spec`` at ``now``, recomputed from the raw events with ``ts <= now``."""
    seen = [e for e in events if e.ts <= now]
    start = window_start(spec, now)
    inside = [e for e in seen if start <= e.ts <= now]
    result: dict[str, Any] = {f"count.{kind}": sum(1 for e in inside if e.type == kind) for kind in TYPES}
    sessions = [(s, e) for s, e in brute_sessions(seen, gap) if start <= s <= now]
    durations = [end - begin for begin, end in sessions]
    result.update(
        events=len(inside),
        products=len({e.product_id for e in inside if e.product_id is not None}),
        categories=len({e.category for e in inside if e.category is not None}),
        orders=len({e.order_id for e in inside if e.type in ("purchase", "refund") and e.order_id is not None}),
        sessions=len(sessions),
        session_minutes=round(sum(durations) / len(durations) / MINUTE, 3) if durations else 0.0,
        cart_value=round(
            sum(
                (e.price or 0.0) * (e.quantity if e.quantity is not None else 1)
                for e in inside
                if e.type == "add_to_cart"
            ),
            2,
        ),
        spend=round(
            sum(e.amount or 0.0 for e in inside if e.type == "purchase")
            - sum(e.amount or 0.0 for e in inside if e.type == "refund"),
            2,
        ),
    )
    return result


def test_reference_matches_the_docstring_example() -> None:
    """The reference agrees with the worked example of the module docstring (it is not vacuous)."""
    spec = WindowSpec("1h", HOUR, 5 * MINUTE)
    events = [
        Event("e1", "add_to_cart", 0, user_id="u", product_id="p", price=20.0, quantity=2),
        Event("e2", "page_view", 10 * MINUTE, user_id="u"),
    ]
    result = brute(events, spec, 30 * MINUTE, 10 * MINUTE)
    assert (result["events"], result["cart_value"], result["sessions"], result["session_minutes"]) == (2, 40.0, 1, 10.0)
    assert result["products"] == 1 and result["count.add_to_cart"] == 1
    # At 1 h the pane at 0 has left: only the page view is seen, and its session started at 0.
    later = brute(events, spec, 30 * MINUTE, HOUR)
    assert (later["events"], later["cart_value"], later["sessions"], later["products"]) == (1, 0.0, 0, 0)


# --- strategies --------------------------------------------------------------------------------


@st.composite
def window_sets(draw: st.DrawFn) -> WindowSet:
    specs = draw(st.lists(st.sampled_from(SPEC_POOL), min_size=1, max_size=4, unique_by=lambda s: s.name))
    if draw(st.booleans()):
        slide = draw(st.integers(1, 20)) * draw(st.sampled_from([1, SECOND, MINUTE]))
        specs.append(WindowSpec("odd", slide * draw(st.integers(1, 6)), slide))
    gap = draw(st.sampled_from([MINUTE, 5 * MINUTE, 30 * MINUTE]) | st.integers(1, 2 * HOUR))
    return WindowSet(tuple(specs), session_gap_ms=gap)


MONEY = st.none() | st.sampled_from([0.0, 0.25, 1.5, 20.0, 99.75, 512.5])


@st.composite
def event_lists(draw: st.DrawFn, gap: int, min_size: int = 0, max_size: int = 20, start: int = T0) -> list[Event]:
    """Events of one customer: spread over three days, or right next to an earlier one (session gaps)."""
    count = draw(st.integers(min_size, max_size))
    events: list[Event] = []
    for n in range(count):
        if events and draw(st.booleans()):
            base = draw(st.sampled_from(events)).ts
            step = draw(
                st.sampled_from([0, 1, gap - 1, gap, gap + 1, -(gap - 1), -gap, 2 * MINUTE, HOUR, DAY])
                | st.integers(-HOUR, HOUR)
            )
            ts = max(start, base + step)
        else:
            ts = start + draw(st.integers(0, 3 * DAY))
        kind = draw(st.sampled_from(TYPES))
        events.append(
            Event(
                f"e{n}",
                kind,
                ts,
                user_id="u1",
                product_id=draw(st.none() | st.sampled_from(["p1", "p2", "p3"])),
                category=draw(st.none() | st.sampled_from(["shoes", "hats"])),
                # Any type may carry an order id; only purchases and refunds count as orders.
                order_id=draw(st.none() | st.sampled_from(["o1", "o2", "o3"])),
                price=draw(MONEY),
                quantity=draw(st.none() | st.integers(1, 3)),
                amount=draw(MONEY),
            )
        )
    return events


def leave_times(windows: WindowSet, events: Sequence[Event]) -> list[int]:
    """The moments a pane holding an event leaves a window (and the millisecond before)."""
    times = set()
    for spec in windows.specs.values():
        for event in events:
            leaves = (event.ts // spec.slide_ms + spec.panes) * spec.slide_ms
            times |= {leaves - 1, leaves}
    return sorted(times)


@st.composite
def nows(draw: st.DrawFn, windows: WindowSet, events: Sequence[Event]) -> list[int]:
    """A few query times at or after the last event: right at it, at pane boundaries, anywhere later."""
    latest = max(e.ts for e in events)
    boundaries = [t for t in leave_times(windows, events) if t >= latest]
    choices = st.just(latest) | st.integers(latest, latest + 8 * DAY)
    if boundaries:
        choices = choices | st.sampled_from(boundaries)
    return draw(st.lists(choices, min_size=1, max_size=5))


def fed(windows: WindowSet, events: Sequence[Event]) -> Activity:
    activity = windows.create()
    for event in events:
        windows.add(activity, event)
    return activity


def results(windows: WindowSet, activity: Activity, now: int) -> dict[str, dict[str, Any]]:
    return {name: windows.result(activity, name, now) for name in windows.specs}


def reference(windows: WindowSet, events: Sequence[Event], now: int) -> dict[str, dict[str, Any]]:
    return {name: brute(events, spec, windows.session_gap_ms, now) for name, spec in windows.specs.items()}


# --- add / result ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_incremental_add_in_any_order_equals_brute_force(data: st.DataObject) -> None:
    windows = data.draw(window_sets(), label="windows")
    events = data.draw(event_lists(windows.session_gap_ms, min_size=1), label="events")
    arrival = data.draw(st.permutations(events), label="arrival order")
    activity = fed(windows, arrival)
    for now in data.draw(nows(windows, events), label="nows"):
        assert results(windows, activity, now) == reference(windows, events, now)


def test_result_of_an_empty_accumulator_is_all_zero() -> None:
    windows = WindowSet(SPEC_POOL, session_gap_ms=30 * MINUTE)
    activity = windows.create()
    for name in windows.specs:
        result = windows.result(activity, name, T0)
        assert set(result) == {f"count.{kind}" for kind in TYPES} | {
            "events", "products", "categories", "orders", "sessions", "session_minutes", "cart_value", "spend",
        }  # fmt: skip
        assert all(value == 0 for value in result.values())
    assert windows.next_change(activity, T0) is None
    assert windows.is_empty(activity)


def test_an_empty_accumulator_answers_like_the_full_computation() -> None:
    """An empty accumulator (a silent customer, pruned) is answered from precomputed results: the
    same values of the same types, in fresh dicts."""
    windows = WindowSet(SPEC_POOL, session_gap_ms=30 * MINUTE)
    full = WindowSet(SPEC_POOL, session_gap_ms=30 * MINUTE)
    full.is_empty = lambda activity: False  # type: ignore[method-assign]  # always the full computation
    activity = windows.create()
    for name in windows.specs:
        for now in (0, T0, T0 + 12_345_678):
            result = windows.result(activity, name, now)
            assert list(result.items()) == list(full.result(activity, name, now).items())
            for metric in result:
                value = windows.value(activity, name, metric, now)
                assert (value, type(value)) == (full.value(activity, name, metric, now), type(result[metric]))
        result["events"] = 99
        assert windows.result(activity, name, T0)["events"] == 0


def test_small_sliding_window_boundaries_by_hand() -> None:
    """10 min by 2 min: at 10:00 the window starts at 09:52, so an event at 09:51:59.999 is out."""
    windows = WindowSet((WindowSpec("10m", 10 * MINUTE, 2 * MINUTE),), session_gap_ms=MINUTE)
    ten = T0 + 10 * HOUR
    events = [
        Event("a", "page_view", ten - 8 * MINUTE - 1, user_id="u"),  # pane 09:50, just before the window
        Event("b", "add_to_cart", ten - 8 * MINUTE, user_id="u", price=2.5, quantity=2),  # first ms of the window
        Event("c", "purchase", ten - 7 * MINUTE, user_id="u", order_id="o", amount=12.25),
        Event("d", "refund", ten, user_id="u", order_id="o", amount=2.25),
    ]
    activity = fed(windows, events)
    result = windows.result(activity, "10m", ten)
    assert result["events"] == 3
    assert (result["cart_value"], result["spend"], result["orders"]) == (5.0, 10.0, 1)
    # a-b is one session (1 ms apart), started before the window; c and d are sessions of their own.
    assert (result["sessions"], result["session_minutes"]) == (2, 0.0)
    assert windows.next_change(activity, ten) == ten + 2 * MINUTE  # the pane at 09:52 leaves at 10:02
    assert result == brute(events, windows.specs["10m"], MINUTE, ten)


# --- merge -------------------------------------------------------------------------------------


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_merge_equals_one_accumulator_fed_both(data: st.DataObject) -> None:
    windows = data.draw(window_sets(), label="windows")
    events = data.draw(event_lists(windows.session_gap_ms, min_size=1), label="events")
    sides = data.draw(st.lists(st.booleans(), min_size=len(events), max_size=len(events)), label="sides")
    left = [e for e, side in zip(events, sides, strict=True) if side]
    right = [e for e, side in zip(events, sides, strict=True) if not side]
    into = fed(windows, left)
    other = fed(windows, right)
    merged = windows.merge(into, other)
    assert merged is into
    whole = fed(windows, events)
    times = data.draw(nows(windows, events), label="nows")
    for now in times:
        assert results(windows, merged, now) == results(windows, whole, now) == reference(windows, events, now)
    # The merged value shares nothing with the other side: feeding ``other`` later leaves it alone.
    before = {now: results(windows, merged, now) for now in times}
    for event in events:
        windows.add(other, event)
    assert {now: results(windows, merged, now) for now in times} == before


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_merge_with_empty_is_identity(data: st.DataObject) -> None:
    windows = data.draw(window_sets(), label="windows")
    events = data.draw(event_lists(windows.session_gap_ms, min_size=1), label="events")
    expected = fed(windows, events)
    for merged in (
        windows.merge(windows.create(), fed(windows, events)),
        windows.merge(fed(windows, events), Activity()),
    ):
        for now in data.draw(nows(windows, events), label="nows"):
            assert results(windows, merged, now) == results(windows, expected, now)


# --- prune -------------------------------------------------------------------------------------


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_prune_never_changes_what_a_window_sees_from_the_horizon_on(data: st.DataObject) -> None:
    windows = data.draw(window_sets(), label="windows")
    events = data.draw(event_lists(windows.session_gap_ms, min_size=1), label="events")
    latest = max(e.ts for e in events)
    horizon = data.draw(
        st.integers(latest, latest + 2 * windows.longest)
        | st.sampled_from([t for t in leave_times(windows, events) if t >= latest]),
        label="horizon",
    )
    kept = fed(windows, events)
    pruned = copy.deepcopy(kept)
    windows.prune(pruned, horizon)
    times = data.draw(
        st.lists(st.integers(horizon, horizon + 2 * windows.longest), min_size=1, max_size=4), label="nows"
    )
    for now in [horizon, *times]:
        assert results(windows, pruned, now) == results(windows, kept, now)
    if any(r["events"] for r in results(windows, kept, horizon).values()):
        assert not windows.is_empty(pruned)
    # Events from the horizon on (not late) still join sessions exactly as without pruning.
    later = data.draw(event_lists(windows.session_gap_ms, max_size=8, start=horizon), label="later events")
    for event in later:
        windows.add(kept, event)
        windows.add(pruned, event)
    end = max([horizon, *(e.ts for e in later)])
    for now in [end, *data.draw(st.lists(st.integers(end, end + 2 * windows.longest), max_size=3), label="after")]:
        assert results(windows, pruned, now) == results(windows, kept, now) == reference(windows, events + later, now)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_prune_far_past_every_event_leaves_nothing(data: st.DataObject) -> None:
    windows = data.draw(window_sets(), label="windows")
    events = data.draw(event_lists(windows.session_gap_ms, min_size=1), label="events")
    latest = max(e.ts for e in events)
    horizon = latest + windows.longest + windows.session_gap_ms + data.draw(st.integers(1, 10 * DAY), label="extra")
    activity = fed(windows, events)
    assert not windows.is_empty(activity)
    windows.prune(activity, horizon)
    assert windows.is_empty(activity)
    assert windows.next_change(activity, horizon) is None
    for name in windows.specs:
        assert windows.result(activity, name, horizon)["events"] == 0


# --- next_change -------------------------------------------------------------------------------


def samples_between(windows: WindowSet, start: int, end: int, data: st.DataObject) -> list[int]:
    """Times in [start, end): both ends, every pane boundary (up to 30) and a few random ones."""
    times = {start, end - 1}
    for slide in windows.slides:
        first = (start // slide + 1) * slide
        for boundary in range(first, min(end, first + 30 * slide), slide):
            times |= {boundary - 1, boundary}
    times |= set(data.draw(st.lists(st.integers(start, end - 1), max_size=5), label="random samples"))
    return sorted(t for t in times if start <= t < end)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_next_change_is_when_the_oldest_pane_leaves(data: st.DataObject) -> None:
    windows = data.draw(window_sets(), label="windows")
    events = data.draw(event_lists(windows.session_gap_ms, min_size=1), label="events")
    activity = fed(windows, events)
    for now in data.draw(nows(windows, events), label="nows"):
        at_now = results(windows, activity, now)
        overall = windows.next_change(activity, now)
        earliest = None
        for name in windows.specs:
            change = windows.next_change(activity, now, name)
            if change is None:
                # Nothing in the window: nothing can leave it, and (with no new event) it stays empty.
                assert at_now[name]["events"] == 0
                later = data.draw(st.integers(now, now + 8 * DAY), label="later")
                assert windows.result(activity, name, later) == at_now[name]
                continue
            assert change > now
            for t in samples_between(windows, now, change, data):
                assert windows.result(activity, name, t) == at_now[name], (name, t)
            # At next_change the oldest pane with events has left: strictly fewer events are seen.
            assert windows.result(activity, name, change)["events"] < at_now[name]["events"]
            earliest = change if earliest is None else min(earliest, change)
        assert overall == earliest
        if overall is not None:
            for t in samples_between(windows, now, overall, data):
                assert results(windows, activity, t) == at_now


# --- WindowSpec --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(slide=st.integers(1, 10 * DAY), size=st.integers(1, 100 * DAY))
def test_window_spec_needs_a_size_that_is_a_multiple_of_the_slide(slide: int, size: int) -> None:
    if size % slide:
        with pytest.raises(ValueError, match="multiple of slide"):
            WindowSpec("w", size, slide)
    else:
        spec = WindowSpec("w", size, slide)
        assert spec.panes * slide == size


@pytest.mark.parametrize(
    ("size", "slide"),
    [(10 * MINUTE, 3 * MINUTE), (0, MINUTE), (MINUTE, 0), (-MINUTE, MINUTE), (HOUR, -MINUTE), (MINUTE, HOUR)],
)
def test_window_spec_rejects_bad_shapes(size: int, slide: int) -> None:
    with pytest.raises(ValueError, match="positive multiple of slide"):
        WindowSpec("bad", size, slide)
