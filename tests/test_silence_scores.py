"""Scores in silence: for a fixed history, as the silence grows, churn never falls and propensity and
lifetime value never rise, whatever model the configuration names and whatever it learnt
(Models.score_in_silence)."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from online_models import MODELS, Example, ModelSettings
from transforms.config import load_config
from transforms.events import Event
from transforms.model_features import model_features

DAY = 86_400_000
TYPES = ("page_view", "product_view", "add_to_cart", "purchase")


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    count = draw(st.integers(1, 12))
    times = sorted(draw(st.lists(st.integers(0, 200 * DAY), min_size=count, max_size=count)))
    events = []
    for number, ts in enumerate(times):
        kind = draw(st.sampled_from(TYPES))
        amount = draw(st.floats(1, 500)) if kind == "purchase" else None
        events.append(
            Event(
                f"e{number}",
                kind,
                ts,
                user_id="u",
                order_id=f"o{number}" if amount else None,
                amount=amount,
                currency="EUR" if amount else None,
            )
        )
    return events


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(MODELS)),
    history=histories(),
    silences=st.lists(st.integers(0, 800 * DAY), min_size=2, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_churn_never_falls_and_propensity_never_rises_as_silence_grows(
    name: str, history: list[Event], silences: list[int], seed: int
) -> None:
    config = load_config(None)
    config = dataclasses.replace(config, models=dataclasses.replace(config.models or ModelSettings(), model=name))
    logic = config.logic()
    assert logic.models is not None
    state = logic.new_state("user:u")
    logic.advance(state, history, history[-1].ts)
    # Teach the models something, with silences up to about one horizon, as labels do.
    rng = random.Random(seed)
    examples = []
    for _ in range(60):
        at = history[-1].ts + rng.randrange(0, 100 * DAY)
        features = model_features(logic.model, state.profile, at)
        task = rng.choice(("churn", "propensity", "ltv"))
        label = rng.random() < 0.5 if task != "ltv" else rng.choice((0.0, rng.uniform(1, 500)))
        examples.append(Example(task, features, label, at, at))
    logic.models.learn(examples)
    logic.models.flush()
    last = state.features.last_seen
    assert last is not None
    scores = [logic.model.scores(state.profile, last + silence) for silence in sorted(silences)]
    churn = [s["churn_score"] for s in scores]
    propensity = [s["propensity_score"] for s in scores]
    value = [s["ltv_score"] for s in scores]
    assert all(isinstance(score, float) and 0.0 <= score <= 1.0 for score in churn + propensity)
    assert churn == sorted(churn), (name, sorted(silences), churn)
    assert propensity == sorted(propensity, reverse=True), (name, sorted(silences), propensity)
    assert value == sorted(value, reverse=True) and value[-1] >= 0.0, (name, sorted(silences), value)


def test_at_an_event_the_scores_are_the_models_own() -> None:
    logic = load_config(None).logic()
    assert logic.models is not None
    state = logic.new_state("user:u")
    buy = Event("e1", "purchase", 10 * DAY, user_id="u", order_id="o1", amount=20.0, currency="EUR")
    logic.advance(state, [buy], buy.ts)
    for days in (1, 40, 90):
        label = Example("churn", model_features(logic.model, state.profile, buy.ts + days * DAY), days > 30, 0, 0)
        logic.models.learn([label])
    logic.models.flush()
    own = logic.models.score(model_features(logic.model, state.profile, buy.ts), buy.ts)
    assert logic.model.scores(state.profile, buy.ts) == {name: round(value, 6) for name, value in own.items()}
    later = logic.model.scores(state.profile, buy.ts + 200 * DAY)
    assert later["churn_score"] >= round(own["churn_score"], 6)
