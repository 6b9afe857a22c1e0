"""Merge-aware state: when customer A is absorbed into B, B's profile equals the profile of one
customer that had every event from the start (:meth:`transforms.customer.CustomerLogic.absorb`)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_customer import make_event
from transforms.config import load_config
from transforms.customer import CustomerLogic, CustomerState
from transforms.events import EVENT_TYPES, Event
from transforms.features import Features

T0 = 1_717_200_000_000
MINUTE = 60_000
DAY = 86_400_000


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out |= _flat(inner, f"{prefix}{key}.")
        return out
    return {prefix.rstrip("."): ",".join(value) if isinstance(value, list) else value}


def _comparable(logic: CustomerLogic, state: CustomerState) -> dict[str, Any]:
    """The profile less ids and model scores (the scores depend on each logic's training history)."""
    profile = logic.profile(state)
    for key in ("customer_id", "identifiers", "seq", "churn_score", "propensity_score"):
        del profile[key]
    return _flat(profile)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[tuple[str, Event]], int]:
    """Events in event-time order, each owned by customer ``a`` or ``b``, and a merge position."""
    size = draw(st.integers(1, 40))
    events = []
    ts = T0
    for n in range(size):
        ts += draw(st.sampled_from([0, 1, MINUTE, 20 * MINUTE, 3 * 3_600_000, DAY, 8 * DAY]))
        kind = draw(st.sampled_from(sorted(EVENT_TYPES)))
        fields: dict[str, Any] = {"product_id": f"p{draw(st.integers(0, 3))}", "category": "c"}
        if kind in ("add_to_cart", "remove_from_cart", "product_view"):
            fields |= {"price": float(draw(st.integers(1, 90))), "quantity": draw(st.integers(1, 3))}
        if kind in ("purchase", "refund"):
            fields |= {"amount": float(draw(st.integers(1, 500)))}
        owner = draw(st.sampled_from("ab"))
        events.append((owner, make_event(n, kind, ts, fields)))
    return events, draw(st.integers(0, size))


def _feed(logic: CustomerLogic, state: CustomerState, event: Event) -> list[Any]:
    return logic.advance(state, [event], event.ts).changes


@settings(max_examples=150, deadline=None)
@given(streams())
def test_absorbed_profile_equals_one_customer_with_every_event(case: tuple[list[tuple[str, Event]], int]) -> None:
    events, merge_at = case
    end = events[-1][1].ts + 2 * DAY
    reference_logic, merged_logic = load_config(None).logic(), load_config(None).logic()
    reference = reference_logic.new_state("user:b")
    for _, event in events:
        _feed(reference_logic, reference, event)
    reference_logic.advance(reference, [], end)

    states = {"a": merged_logic.new_state("anon:a"), "b": merged_logic.new_state("user:b")}
    merge_changes = []
    for i, (owner, event) in enumerate(events):
        if i == merge_at:
            merge_changes = merged_logic.absorb(states["b"], states["a"]).changes
        _feed(merged_logic, states["b" if i >= merge_at else owner], event)
    if merge_at == len(events):
        merge_changes = merged_logic.absorb(states["b"], states["a"]).changes
    merged_logic.advance(states["b"], [], end)

    assert _comparable(merged_logic, states["b"]) == pytest.approx(_comparable(reference_logic, reference))
    assert sorted(states["b"].segments) == sorted(reference.segments)
    assert merged_logic.model.population.buyers == reference_logic.model.population.buyers
    assert all(change.reason == "merge" for change in merge_changes)
    assert not states["a"].segments  # the absorbed customer left every segment
    for customer in ("anon:a", "user:b"):
        seqs = [c.seq for c in merge_changes if c.customer_id == customer]
        assert seqs == sorted(set(seqs))


def test_merge_exits_the_absorbed_and_reevaluates_the_survivor() -> None:
    logic = load_config(None).logic()
    anonymous, user = logic.new_state("anon:a"), logic.new_state("user:b")
    buy = make_event(1, "purchase", T0, {"user_id": None, "anonymous_id": "a", "amount": 250.0})
    entered = logic.advance(anonymous, [buy], T0).changes
    assert {c.segment for c in entered} >= {"recent_buyer", "high_value"}
    view = make_event(2, "page_view", T0 + MINUTE, {})
    logic.advance(user, [view], T0 + MINUTE)
    step = logic.absorb(user, anonymous)
    exits = [(c.customer_id, c.segment, c.change) for c in step.changes if c.customer_id == "anon:a"]
    enters = [(c.customer_id, c.segment, c.change) for c in step.changes if c.customer_id == "user:b"]
    assert exits == [("anon:a", c.segment, "exited") for c in sorted(entered, key=lambda c: c.segment)]
    assert ("user:b", "recent_buyer", "entered") in enters
    assert {c.reason for c in step.changes} == {"merge"}
    assert all(c.event_time == T0 + MINUTE for c in step.changes)  # the later of the two clocks
    assert user.features.spend == 250.0 and user.features.orders == 1
    assert user.identifiers == {"user_id": ["u1"], "anonymous_id": ["a"]}
    assert logic.model.population.buyers == 1  # the absorbed customer left the RFM population


def test_merge_keeps_dedup_across_the_two_customers() -> None:
    logic = load_config(None).logic()
    first, second = logic.new_state("anon:a"), logic.new_state("user:b")
    event = make_event(1, "page_view", T0, {})
    logic.advance(first, [event], T0)
    logic.absorb(second, first)
    step = logic.advance(second, [event], T0 + 1)
    assert step.duplicates == [event] and not step.accepted


def test_cart_value_ignores_lines_before_the_last_purchase_in_any_order() -> None:
    lines = [
        make_event(1, "add_to_cart", T0, {"price": 30.0}),
        make_event(2, "purchase", T0 + 10, {}),
        make_event(3, "add_to_cart", T0 + 20, {"price": 25.0}),
        make_event(4, "remove_from_cart", T0 + 30, {"price": 5.0}),
    ]
    for order in (lines, lines[::-1], [lines[2], lines[0], lines[3], lines[1]]):
        features = Features()
        for event in order:
            features.add(event)
        assert features.cart_value == 20.0 and features.orders == 1
