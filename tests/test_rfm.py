"""Properties of :class:`transforms.rfm.Population`: buyers per bucket, moves, merges and quintile scores.

The reference score is the module docstring's mid-rank quintile, recomputed exactly (with fractions)
from the customers' current bucket keys: ``1 + floor(5 * (below + equal / 2) / buyers)``, at most 5.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.features import Features
from transforms.rfm import DIMENSIONS, Population, RfmKey, rfm_key

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def buyer(last: int | None, orders: int, spend: float) -> Features:
    """A customer's lifetime features as the RFM step reads them (``last``: the latest purchase)."""
    return Features(last_at={} if last is None else {"purchase": last}, orders=orders, spend=spend)


SPEND = st.sampled_from([-25.0, 0.0, 0.5, 1.0, 9.99, 10.0, 10.05, 100.0, 1000.0]) | st.floats(0.01, 1e5)


@st.composite
def histories(
    draw: st.DrawFn, prefix: str = "c", min_customers: int = 1, max_customers: int = 15
) -> dict[str, list[Features]]:
    """Per customer, the features after each purchase or refund. A customer may refund before a first
    purchase (no bucket yet); once it bought, it stays a buyer (``last.purchase`` never goes away)."""
    count = draw(st.integers(min_customers, max_customers))
    result: dict[str, list[Features]] = {}
    for c in range(count):
        steps = draw(st.integers(1, 4))
        before = draw(st.integers(0, steps))  # states before the first purchase
        states: list[Features] = []
        last: int | None = None
        for step in range(steps):
            if step >= before:
                last = T0 + draw(st.integers(0, 90 * DAY))
            states.append(buyer(last, draw(st.integers(0, 20)), draw(SPEND)))
        result[f"{prefix}{c}"] = states
    return result


@dataclass
class Fed:
    population: Population
    keys: dict[str, RfmKey | None]


def feed(histories: dict[str, list[Features]], order: Sequence[str], population: Population | None = None) -> Fed:
    """Apply every customer's moves, interleaved as ``order`` says (each customer's own moves in order)."""
    population = population if population is not None else Population()
    keys: dict[str, RfmKey | None] = {}
    step = Counter[str]()
    for customer in order:
        features = histories[customer][step[customer]]
        step[customer] += 1
        keys[customer] = population.move(keys.get(customer), features)
    return Fed(population, keys)


def interleaving(histories: dict[str, list[Features]]) -> list[str]:
    return [customer for customer, states in histories.items() for _ in states]


def expected_counts(keys: dict[str, RfmKey | None]) -> tuple[Counter[int], ...]:
    present = [key for key in keys.values() if key is not None]
    return tuple(Counter(key[d] for key in present) for d in range(len(DIMENSIONS)))


def brute_scores(keys: dict[str, RfmKey | None], key: RfmKey | None) -> dict[str, int]:
    present = [k for k in keys.values() if k is not None]
    if key is None or not present:
        return dict.fromkeys(DIMENSIONS, 0)
    scores = {}
    for d, name in enumerate(DIMENSIONS):
        below = sum(1 for k in present if k[d] < key[d])
        equal = sum(1 for k in present if k[d] == key[d])
        scores[name] = min(5, 1 + math.floor(5 * (below + Fraction(equal, 2)) / len(present)))
    return scores


def assert_counts_exact(population: Population, keys: dict[str, RfmKey | None]) -> None:
    assert population.counts == expected_counts(keys)
    assert all(n > 0 for counter in population.counts for n in counter.values())  # no empty buckets kept
    assert population.buyers == sum(1 for key in keys.values() if key is not None)


# --- moves -------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_counts_do_not_depend_on_the_order_of_moves(data: st.DataObject) -> None:
    history = data.draw(histories(), label="histories")
    first = feed(history, data.draw(st.permutations(interleaving(history)), label="order 1"))
    second = feed(history, data.draw(st.permutations(interleaving(history)), label="order 2"))
    assert first.keys == second.keys
    assert first.population.counts == second.population.counts
    assert first.population.buyers == second.population.buyers
    assert_counts_exact(first.population, first.keys)
    # The same as each customer moving straight to its final buckets.
    direct = Population()
    for states in history.values():
        direct.move(None, states[-1])
    assert direct.counts == first.population.counts and direct.buyers == first.population.buyers


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_moving_again_does_not_count_twice(data: st.DataObject) -> None:
    history = data.draw(histories(), label="histories")
    fed = feed(history, data.draw(st.permutations(interleaving(history)), label="order"))
    ever_bought = {c for c, states in history.items() if any("purchase" in s.last_at for s in states)}
    assert fed.population.buyers == len(ever_bought)
    assert {c for c, key in fed.keys.items() if key is not None} == ever_bought
    assert all(sum(counter.values()) == len(ever_bought) for counter in fed.population.counts)
    # Moving to the same features again changes nothing.
    for customer, states in history.items():
        assert fed.population.move(fed.keys[customer], states[-1]) == fed.keys[customer]
    assert_counts_exact(fed.population, fed.keys)


def test_move_by_hand() -> None:
    population = Population()
    key = population.move(None, buyer(T0, 1, 10.0))
    assert key == rfm_key(buyer(T0, 1, 10.0)) and population.buyers == 1
    key = population.move(key, buyer(T0 + DAY, 2, 30.0))
    assert population.buyers == 1
    assert population.counts[1] == Counter({2: 1})  # the customer left the 1-order bucket
    assert population.move(None, buyer(None, 0, -5.0)) is None  # a refund before any purchase: no bucket
    assert population.buyers == 1


# --- scores ------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_scores_are_1_to_5_for_buyers_and_0_for_none(data: st.DataObject) -> None:
    history = data.draw(histories(), label="histories")
    fed = feed(history, data.draw(st.permutations(interleaving(history)), label="order"))
    population = fed.population
    assert population.scores(None) == {"recency": 0, "frequency": 0, "monetary": 0}
    for key in fed.keys.values():
        scores = population.scores(key)
        assert set(scores) == set(DIMENSIONS)
        if key is None:
            assert set(scores.values()) == {0}
        else:
            assert all(1 <= s <= 5 for s in scores.values())
    probe = data.draw(st.builds(buyer, st.integers(T0 - DAY, T0 + 100 * DAY), st.integers(0, 30), SPEND), label="probe")
    if population.buyers:
        assert all(1 <= s <= 5 for s in population.scores(rfm_key(probe)).values())  # even a key nobody holds
    assert Population().scores(rfm_key(probe)) == {"recency": 0, "frequency": 0, "monetary": 0}


@st.composite
def spread_population(draw: st.DrawFn) -> tuple[dict[str, list[Features]], str, str]:
    """At least ten buyers; ``top`` strictly first and ``bottom`` strictly last in every dimension (by
    more than a bucket: an hour of recency, one order, 5 % of spend)."""
    others = draw(st.integers(8, 30))
    finals = [
        (T0 + draw(st.integers(0, 60 * DAY)), draw(st.integers(2, 20)), draw(st.floats(1.0, 1e4)))
        for _ in range(others)
    ]
    lasts, orders, spends = zip(*finals, strict=True)
    top = buyer((max(lasts) // HOUR + 1) * HOUR + draw(st.integers(0, HOUR - 1)), max(orders) + 1, max(spends) * 1.05)
    bottom_spend = draw(st.sampled_from([min(spends) / 1.05, 0.0, -10.0]))
    bottom = buyer((min(lasts) // HOUR - 1) * HOUR + draw(st.integers(0, HOUR - 1)), min(orders) - 1, bottom_spend)
    history: dict[str, list[Features]] = {f"c{i}": [buyer(*final)] for i, final in enumerate(finals)}
    # The extremes got there by moves, from somewhere in the middle.
    history["top"] = [buyer(*finals[0]), top]
    history["bottom"] = [buyer(*finals[-1]), bottom]
    return history, "top", "bottom"


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_the_strict_top_scores_5_and_the_strict_bottom_scores_1(data: st.DataObject) -> None:
    history, top, bottom = data.draw(spread_population(), label="population")
    fed = feed(history, data.draw(st.permutations(interleaving(history)), label="order"))
    assert fed.population.buyers >= 10
    assert fed.population.scores(fed.keys[top]) == {"recency": 5, "frequency": 5, "monetary": 5}
    assert fed.population.scores(fed.keys[bottom]) == {"recency": 1, "frequency": 1, "monetary": 1}


def test_docstring_example_worked_out() -> None:
    population = Population()
    keys = [population.move(None, buyer(day * DAY, day, 10.0 * day)) for day in range(1, 11)]
    # Ten distinct buyers: the i-th (0-based) scores 1 + floor(5 * (i + 1/2) / 10) = 1 + floor((i + 0.5) / 2).
    assert [population.scores(k)["frequency"] for k in keys] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [population.scores(k)["recency"] for k in keys] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [population.scores(k)["monetary"] for k in keys] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


# --- merge and refresh -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_merge_of_disjoint_populations_equals_one_fed_both(data: st.DataObject) -> None:
    left = data.draw(histories(prefix="a"), label="left")
    right = data.draw(histories(prefix="b"), label="right")
    a = feed(left, data.draw(st.permutations(interleaving(left)), label="left order"))
    b = feed(right, data.draw(st.permutations(interleaving(right)), label="right order"))
    a.population.scores(next(iter(a.keys.values())))  # rank tables built before the merge must not linger
    both = {**left, **right}
    whole = feed(both, data.draw(st.permutations(interleaving(both)), label="order"))
    merged = a.population.merge(b.population)
    assert merged is a.population
    assert merged.counts == whole.population.counts
    assert merged.buyers == whole.population.buyers
    keys = {**a.keys, **b.keys}
    assert keys == whole.keys
    assert_counts_exact(merged, keys)
    whole.population.refresh()
    for key in keys.values():
        assert merged.scores(key) == whole.population.scores(key) == brute_scores(keys, key)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_after_refresh_scores_are_the_exact_mid_rank_quintiles(data: st.DataObject) -> None:
    history = data.draw(histories(max_customers=25), label="histories")
    order = data.draw(st.permutations(interleaving(history)), label="order")
    population = Population()
    keys: dict[str, RfmKey | None] = {}
    step = Counter[str]()
    for customer in order:
        keys[customer] = population.move(keys.get(customer), history[customer][step[customer]])
        step[customer] += 1
        if data.draw(st.integers(0, 3), label="query now?") == 0:
            # Scores between refreshes may lag behind recent moves; right after a refresh they may not.
            population.scores(keys[customer])
            if data.draw(st.booleans(), label="refresh?"):
                population.refresh()
                assert population.scores(keys[customer]) == brute_scores(keys, keys[customer])
    population.refresh()
    for key in keys.values():
        assert population.scores(key) == brute_scores(keys, key)


def test_refresh_catches_up_with_moves_the_tables_missed() -> None:
    population = Population()
    keys = [population.move(None, buyer(T0 + i * DAY, i + 1, 10.0 * (i + 1))) for i in range(10)]
    assert population.scores(keys[9])["frequency"] == 5  # the tables are built here
    # Twenty new buyers above everyone (fewer moves than a rebuild needs): the old top is no longer on top.
    everyone = dict(enumerate(keys))
    for i in range(10, 30):
        everyone[i] = population.move(None, buyer(T0 + i * DAY, i + 1, 10.0 * (i + 1)))
    population.refresh()
    assert (
        population.scores(keys[9]) == brute_scores(everyone, keys[9]) == {"recency": 2, "frequency": 2, "monetary": 2}
    )


def test_a_population_that_never_counted_a_customer_stays_non_negative() -> None:
    """After a restore (or on another worker) the population may not hold a customer's old buckets:
    the move then only adds, and every count stays a count."""
    elsewhere = Population()
    key = elsewhere.move(None, Features(last_at={"purchase": 0}, orders=1, spend=10.0))
    fresh = Population()
    fresh.move(key, Features(last_at={"purchase": 86_400_000}, orders=2, spend=30.0))
    assert fresh.buyers == 1
    assert all(count > 0 for counter in fresh.counts for count in counter.values())


def monetary(spend: float) -> int:
    """The monetary bucket of a buyer who spent ``spend``."""
    key = rfm_key(buyer(T0, 1, spend))
    assert key is not None
    return key[2]


@settings(max_examples=300, deadline=None)
@given(
    spends=st.lists(
        st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([5e-324, 1e308, 1.7976931348623157e308]),
        min_size=1,
        max_size=8,
    )
)
def test_any_spend_has_a_bucket_and_a_score(spends: list[float]) -> None:
    """A huge finite spend, an infinite one (state saved before cleaning bounded amounts) or NaN never
    raises (math.ceil(inf) raised OverflowError); the monetary bucket never falls as the spend rises."""
    population = Population()
    keys = [population.move(None, buyer(T0, 1, spend)) for spend in spends]
    for spend, key in zip(spends, keys, strict=True):
        assert key is not None and key[2] == monetary(spend)
        assert 1 <= population.scores(key)["monetary"] <= 5
        if not spend > 0:  # <= 0 or NaN: no spend
            assert key[2] == monetary(0.0)
    ordered = sorted((spend, monetary(spend)) for spend in spends if not math.isnan(spend))
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(ordered))


def test_the_largest_spends_share_the_top_bucket() -> None:
    assert monetary(1.7976931348623157e308) == monetary(math.inf) > monetary(1e15) > monetary(1e9) > monetary(0.0)
