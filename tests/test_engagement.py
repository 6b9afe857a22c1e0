"""Properties of :class:`transforms.engagement.EngagementModel` (the decayed, saturating engagement score).

The reference is the module docstring's formula, evaluated directly over the raw events::

    points(now) = sum(w_e * 2 ** (-(now - ts_e) / half_life));  score = 100 * (1 - exp(-points / saturation))
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.engagement import DEFAULT_WEIGHTS, EngagementConfig, EngagementModel, Points
from transforms.events import EVENT_TYPES

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
TYPES = sorted(EVENT_TYPES)
REL = 1e-9

Happening = tuple[str, int]  # (event type, ts)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


def at_least(a: float, b: float) -> bool:
    """``a >= b`` up to floating-point noise."""
    return a >= b or close(a, b)


def formula_points(config: EngagementConfig, events: Sequence[Happening], now: int) -> float:
    return sum(config.weights.get(kind, 0.0) * 2.0 ** (-(now - ts) / config.half_life_ms) for kind, ts in events)


def formula_score(config: EngagementConfig, events: Sequence[Happening], now: int) -> float:
    return 100.0 * (1.0 - math.exp(-formula_points(config, events, now) / config.saturation))


# --- strategies --------------------------------------------------------------------------------

WEIGHT = st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 10.0]) | st.floats(0.0, 50.0)


@st.composite
def configs(draw: st.DrawFn) -> EngagementConfig:
    weights = {kind: draw(WEIGHT) for kind in TYPES} if draw(st.booleans()) else dict(DEFAULT_WEIGHTS)
    half_life = draw(st.sampled_from([SECOND, MINUTE, HOUR, DAY, 7 * DAY]) | st.integers(1, 10 * DAY))
    saturation = draw(st.sampled_from([1.0, 25.0, 100.0]) | st.floats(0.5, 200.0))
    return EngagementConfig(weights=weights, half_life_ms=half_life, saturation=saturation)


def happenings(max_size: int = 25, min_size: int = 0) -> st.SearchStrategy[list[Happening]]:
    times = st.integers(T0, T0 + 10 * DAY) | st.integers(T0, T0 + 10 * MINUTE)
    return st.lists(st.tuples(st.sampled_from(TYPES), times), min_size=min_size, max_size=max_size)


def fed(model: EngagementModel, events: Sequence[Happening]) -> Points:
    points = model.create()
    for kind, ts in events:
        model.add(points, kind, ts)
    return points


def latest(events: Sequence[Happening]) -> int:
    return max((ts for _, ts in events), default=T0)


NOW_OFFSET = st.sampled_from([0, 1, MINUTE, HOUR, DAY, 30 * DAY]) | st.integers(0, 20 * DAY)


# --- properties --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(config=configs(), events=happenings(), offset=NOW_OFFSET, before=st.integers(0, 20 * DAY))
def test_score_is_between_0_and_100_and_follows_the_formula(
    config: EngagementConfig, events: list[Happening], offset: int, before: int
) -> None:
    model = EngagementModel(config)
    points = fed(model, events)
    now = latest(events) + offset
    score = model.score(points, now)
    assert 0.0 <= score <= 100.0
    assert close(model.points(points, now), formula_points(config, events, now))
    assert close(score, formula_score(config, events, now))
    assert 0.0 <= model.score(points, now - before) <= 100.0  # the past is clamped, never out of range
    assert model.score(model.create(), now) == 0.0


@settings(max_examples=200, deadline=None)
@given(config=configs(), events=happenings(), kind=st.sampled_from(TYPES), data=st.data())
def test_adding_an_event_never_lowers_the_score(
    config: EngagementConfig, events: list[Happening], kind: str, data: st.DataObject
) -> None:
    model = EngagementModel(config)
    ts = data.draw(st.integers(T0, T0 + 10 * DAY), label="ts")
    without = fed(model, events)
    with_it = fed(model, [*events, (kind, ts)])
    for offset in data.draw(st.lists(NOW_OFFSET, min_size=1, max_size=4), label="offsets"):
        now = max(latest(events), ts) + offset
        assert at_least(model.score(with_it, now), model.score(without, now))
        assert at_least(model.points(with_it, now), model.points(without, now))


@settings(max_examples=200, deadline=None)
@given(config=configs(), events=happenings(min_size=1), shift=st.integers(0, 5 * DAY), offset=NOW_OFFSET)
def test_more_recent_events_never_score_lower(
    config: EngagementConfig, events: list[Happening], shift: int, offset: int
) -> None:
    model = EngagementModel(config)
    now = latest(events) + shift + offset
    original = fed(model, events)
    shifted = fed(model, [(kind, ts + shift) for kind, ts in events])
    assert at_least(model.score(shifted, now), model.score(original, now))


@settings(max_examples=200, deadline=None)
@given(config=configs(), events=happenings(), offsets=st.lists(NOW_OFFSET, min_size=2, max_size=6))
def test_with_no_new_event_the_score_never_rises(
    config: EngagementConfig, events: list[Happening], offsets: list[int]
) -> None:
    model = EngagementModel(config)
    points = fed(model, events)
    scores = [model.score(points, latest(events) + offset) for offset in sorted(offsets)]
    assert all(later <= earlier for earlier, later in itertools.pairwise(scores))


@settings(max_examples=200, deadline=None)
@given(config=configs(), events=happenings(), data=st.data(), offset=NOW_OFFSET)
def test_order_of_events_does_not_matter(
    config: EngagementConfig, events: list[Happening], data: st.DataObject, offset: int
) -> None:
    model = EngagementModel(config)
    now = latest(events) + offset
    shuffled = data.draw(st.permutations(events), label="arrival order")
    in_order = fed(model, sorted(events, key=lambda e: e[1]))
    assert close(model.points(fed(model, shuffled), now), model.points(in_order, now))
    assert close(model.points(fed(model, events), now), model.points(in_order, now))


@settings(max_examples=200, deadline=None)
@given(config=configs(), events=happenings(), data=st.data(), offset=NOW_OFFSET)
def test_merge_equals_adding_every_event(
    config: EngagementConfig, events: list[Happening], data: st.DataObject, offset: int
) -> None:
    model = EngagementModel(config)
    sides = data.draw(st.lists(st.booleans(), min_size=len(events), max_size=len(events)), label="sides")
    left = fed(model, [e for e, side in zip(events, sides, strict=True) if side])
    right = fed(model, [e for e, side in zip(events, sides, strict=True) if not side])
    merged = model.merge(left, right)
    assert merged is left
    now = latest(events) + offset
    assert close(model.points(merged, now), model.points(fed(model, events), now))
    assert close(model.points(merged, now), formula_points(config, events, now))
    assert close(model.points(model.merge(model.create(), fed(model, events)), now), model.points(merged, now))


# Thresholds a rule can sensibly use; tiny ones and exactly 100 have tests of their own (see the bugs below).
THRESHOLD = st.sampled_from([0.0, 0.01, 1.0, 50.0, 60.0, 63.2, 99.0, 99.99]) | st.floats(0.01, 99.999)


@settings(max_examples=200, deadline=None)
@given(config=configs(), events=happenings(), threshold=THRESHOLD, offset=NOW_OFFSET)
def test_falls_below_is_the_first_millisecond_under_the_threshold(
    config: EngagementConfig, events: list[Happening], threshold: float, offset: int
) -> None:
    model = EngagementModel(config)
    points = fed(model, events)
    now = latest(events) + offset
    moment = model.falls_below(points, threshold, now)
    if model.score(points, now) < threshold or not events or threshold <= 0.0:
        assert moment is None  # already below (or never can be: a score is never under 0)
        return
    if sum(config.weights.get(kind, 0.0) for kind, _ in events) == 0.0:
        assert moment is None
        return
    assert moment is not None and moment > now
    assert model.score(points, moment - 1) >= threshold
    assert model.score(points, moment) < threshold


def test_falls_below_by_hand() -> None:
    """One purchase worth 10 points, half-life 1 s, saturation 10: the docstring's example, worked out."""
    config = EngagementConfig(weights={"purchase": 10.0}, half_life_ms=1000, saturation=10.0)
    model = EngagementModel(config)
    points = fed(model, [("purchase", 0)])
    # 100 * (1 - exp(-10 * 2 ** (-t / 1000) / 10)) < 50  <=>  t > 1000 * log2(1 / ln 2) = 528.766...
    crossing = 1000 * math.log2(1 / math.log(2))
    assert model.falls_below(points, 50.0, now=0) == math.floor(crossing) + 1 == 529
    assert model.falls_below(points, 50.0, now=600) is None  # already under 50
    assert model.falls_below(model.create(), 50.0, now=0) is None


def test_falls_below_a_tiny_positive_threshold() -> None:
    # Regression: for 0 < threshold < ~1.1e-14, 1 - threshold / 100 rounds to 1.0; the estimate must not divide by it.
    config = EngagementConfig(weights={"purchase": 10.0}, half_life_ms=SECOND, saturation=25.0)
    model = EngagementModel(config)
    points = fed(model, [("purchase", T0)])
    threshold = 1e-15
    assert model.score(points, T0) >= threshold
    moment = model.falls_below(points, threshold, T0)
    assert moment is not None
    assert model.score(points, moment - 1) >= threshold > model.score(points, moment)


def test_falls_below_a_small_threshold_is_not_late() -> None:
    # Regression (found by hypothesis): with a small threshold the formula's estimate lands after the
    # crossing through rounding; the answer must still be the first millisecond under the threshold.
    config = EngagementConfig(half_life_ms=DAY, saturation=1.0)  # default weights: add_to_cart is 5
    model = EngagementModel(config)
    points = fed(model, [("add_to_cart", T0)])
    moment = model.falls_below(points, 1e-05, T0)
    assert moment is not None
    assert model.score(points, moment) < 1e-05
    assert model.score(points, moment - 1) >= 1e-05


def test_falls_below_100_when_the_score_saturated_at_100() -> None:
    # Regression: a score that rounds to exactly 100.0 stays 100.0 for a while; `>= 100` must not
    # re-wake every millisecond until it drops.
    config = EngagementConfig(weights={"purchase": 1000.0}, half_life_ms=DAY, saturation=1.0)
    model = EngagementModel(config)
    points = fed(model, [("purchase", T0)])
    assert model.score(points, T0) == 100.0
    moment = model.falls_below(points, 100.0, T0)
    assert moment is not None
    assert model.score(points, moment) < 100.0
    assert model.score(points, moment - 1) >= 100.0


@settings(max_examples=200, deadline=None)
@given(config=configs(), events=happenings(), kind=st.sampled_from(TYPES), ts=st.integers(T0 - DAY, T0 + 11 * DAY))
def test_zero_weight_types_change_nothing(
    config: EngagementConfig, events: list[Happening], kind: str, ts: int
) -> None:
    zero = EngagementConfig(weights={**config.weights, kind: 0.0}, half_life_ms=config.half_life_ms,
                            saturation=config.saturation)  # fmt: skip
    model = EngagementModel(zero)
    points = fed(model, events)
    before = Points(points.value, points.at)
    model.add(points, kind, ts)
    assert points == before
    unknown = fed(model, events)
    model.add(unknown, "not_a_type", ts)  # an unknown type weighs nothing either
    assert unknown == before


def test_default_zero_weights_leave_points_untouched() -> None:
    model = EngagementModel(EngagementConfig())
    zero_types = [kind for kind, weight in DEFAULT_WEIGHTS.items() if weight == 0.0]
    assert zero_types == ["remove_from_cart", "refund"]
    points = model.create()
    for kind in zero_types:
        model.add(points, kind, T0)
    assert points == Points() and model.score(points, T0) == 0.0
    model.add(points, "page_view", T0)
    model.add(points, "refund", T0 + DAY)  # a later zero-weight event does not move the reference time
    assert points == Points(1.0, T0)


@settings(max_examples=200, deadline=None)
@given(
    config=configs(),
    events=happenings(),
    kind=st.sampled_from(TYPES),
    extra=st.floats(0.001, 50.0),
    offset=NOW_OFFSET,
)
def test_a_heavier_weight_never_scores_lower(
    config: EngagementConfig, events: list[Happening], kind: str, extra: float, offset: int
) -> None:
    heavier = EngagementConfig(
        weights={**config.weights, kind: config.weights.get(kind, 0.0) + extra},
        half_life_ms=config.half_life_ms,
        saturation=config.saturation,
    )
    light, heavy = EngagementModel(config), EngagementModel(heavier)
    now = latest(events) + offset
    light_score = light.score(fed(light, events), now)
    heavy_score = heavy.score(fed(heavy, events), now)
    assert at_least(heavy_score, light_score)
    assert at_least(heavy.points(fed(heavy, events), now), light.points(fed(light, events), now))
