"""Lifetime value: delayed values (PendingSpend), the online regression, ltv_score in profiles and rules."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online_models.spend import LTV, PendingSpend
from transforms.config import ConfigError, parse_config
from transforms.events import Event

DAY = 86_400_000
HORIZON = 30 * DAY


def brute_force(snapshot_ts: int, spends: list[tuple[int, float]]) -> float:
    return max(0.0, sum(amount for ts, amount in spends if snapshot_ts < ts <= snapshot_ts + HORIZON))


@settings(max_examples=200, deadline=None)
@given(
    moments=st.lists(st.tuples(st.integers(0, 120 * DAY), st.floats(-50, 500), st.booleans()), min_size=1, max_size=40),
)
def test_each_snapshot_is_valued_with_the_net_spend_of_its_horizon(moments: list[tuple[int, float, bool]]) -> None:
    pending = PendingSpend(horizon_ms=HORIZON, snapshot_every_ms=DAY, max_pending=None)
    spends: list[tuple[int, float]] = []
    taken: list[int] = []
    examples = []
    for ts, amount, snapshot in sorted(moments, key=lambda m: m[0]):
        examples += pending.due(ts)
        pending.on_spend(ts, amount)
        spends.append((ts, amount))
        if snapshot and pending.take(ts, {"x": 1.0}):
            taken.append(ts)
    examples += pending.due(10**15)
    assert [e.snapshot_ts for e in examples] == taken
    for example in examples:
        assert example.task == LTV and example.label_ts == example.snapshot_ts + HORIZON
        assert example.label == pytest.approx(brute_force(example.snapshot_ts, spends), abs=1e-6)


def test_a_merge_values_each_side_with_both_sides_spend() -> None:
    mine, theirs = PendingSpend(HORIZON, DAY), PendingSpend(HORIZON, DAY)
    mine.take(0, {"side": 1.0})
    theirs.on_spend(5 * DAY, 40.0)  # the absorbed customer bought after my snapshot
    theirs.take(6 * DAY, {"side": 2.0})
    mine.on_spend(10 * DAY, 10.0)  # and I bought after theirs
    assert mine.merge(theirs) == []
    valued = {e.features["side"]: e.label for e in mine.due(10**15)}
    assert valued == {1.0: 50.0, 2.0: 10.0}


def purchase(n: int, ts: int, amount: float) -> Event:
    return Event(f"p{n}", "purchase", ts, user_id=f"u{n % 7}", order_id=f"o{n}", amount=amount, currency="EUR")


def test_ltv_score_learns_who_spends_and_rules_read_it() -> None:
    config = parse_config(
        {"segments": {"valuable": {"feature": "ltv_score", ">=": 50}}, "models": {"ltv_days": 30, "learn_batch": 1}},
        env={},
    )
    logic = config.logic()
    states = {f"u{i}": logic.new_state(f"user:u{i}") for i in range(7)}
    rng = random.Random(5)
    for n in range(2_000):  # u0..u2 buy 100 a week, the others once at the start
        customer = f"u{n % 7}"
        if n % 7 >= 3 and n > 7:
            continue
        ts = (n // 7) * 7 * DAY + rng.randrange(DAY)
        logic.advance(states[customer], [purchase(n, ts, 100.0)], ts)
    assert logic.models is not None and logic.models.models[LTV].n_updates > 50
    now = max(s.clock or 0 for s in states.values())
    profiles = {name: logic.profile(state) for name, state in states.items()}
    for name in ("u0", "u1", "u2"):
        assert profiles[name]["ltv_score"] > 5 * max(1.0, profiles["u3"]["ltv_score"])
    assert "valuable" in profiles["u0"]["segments"] and "valuable" not in profiles["u3"]["segments"]
    summary = logic.models.summary()[LTV]["validation"]
    assert summary["n"] > 50 and summary["mean_absolute_error"] is not None and now > 0


@pytest.mark.parametrize("value", [0, -1, "soon", True])
def test_a_bad_ltv_horizon_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match=r"models\.ltv_days"):
        parse_config({"segments": {"s": {"feature": "orders", ">=": 1}}, "models": {"ltv_days": value}}, env={})


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 50), st.floats(0, 5), st.floats(0, 1000)), min_size=1, max_size=60))
def test_the_fast_prediction_is_rivers(rows: list[tuple[float, float, float]]) -> None:
    from online_models.pipelines import SpendRegressor

    model = SpendRegressor()
    for orders, recency, spend in rows:
        model.learn_clean({"orders": orders, "recency": recency}, spend)
    x = {"orders": rows[0][0], "recency": rows[-1][1], "unknown": 3.0}
    river = model.model.predict_one(x)
    expected = math.expm1(min(max(river, 0.0), model.top))
    assert model.predict_clean(x) == pytest.approx(expected, rel=1e-9, abs=1e-9)
