"""Online models: pipelines by name, delayed labels, progressive validation, snapshots, the Models glue."""

from __future__ import annotations

import ast
import hashlib
import itertools
import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import redis
import river
import river.checks
from hypothesis import given, settings
from hypothesis import strategies as st
from river import compose, datasets, forest, linear_model, naive_bayes, optim, preprocessing, tree

from online_models import (
    DAY_MS,
    MODELS,
    TASKS,
    DictStore,
    Example,
    ModelRegistry,
    Models,
    ModelSettings,
    OnlineModel,
    PendingLabels,
    ProgressiveValidation,
    build_model,
    clean_features,
    dump_model,
    load_model,
    read_header,
    roc_auc,
)
from online_models import snapshots as snapshot_module
from online_models.pipelines import linear_coefficients
from tests.forged_snapshots import RunsCode, snapshot_of

DAY = DAY_MS


# --- pipelines ---------------------------------------------------------------------------------


def test_default_model_is_scaler_then_logistic_regression() -> None:
    model = build_model("logistic")
    assert isinstance(model, compose.Pipeline)
    steps = list(model.steps.values())
    assert [type(s) for s in steps] == [preprocessing.StandardScaler, linear_model.LogisticRegression]
    assert OnlineModel().name == "logistic"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("hoeffding_adaptive_tree", tree.HoeffdingAdaptiveTreeClassifier),
        ("naive_bayes", naive_bayes.GaussianNB),
        ("adaptive_random_forest", forest.ARFClassifier),
    ],
)
def test_models_by_name(name: str, kind: type) -> None:
    assert isinstance(build_model(name), kind)
    assert name in MODELS


def test_params_reach_the_classifier_and_are_not_mutated() -> None:
    params = {"lr": 0.05, "l2": 0.01}
    model = build_model("logistic", params)
    lr = model["LogisticRegression"]
    assert lr.l2 == 0.01
    assert lr.optimizer.learning_rate == 0.05
    assert params == {"lr": 0.05, "l2": 0.01}
    assert build_model("hoeffding_adaptive_tree", {"grace_period": 7, "seed": 3}).grace_period == 7


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'gbm'") as error:
        build_model("gbm")
    for name in MODELS:
        assert name in str(error.value)
    with pytest.raises(ValueError, match="bad params"):
        build_model("naive_bayes", {"depth": 3})
    with pytest.raises(ValueError, match="lr must be a positive number"):
        build_model("logistic", {"lr": -1})


def _river_datasets(model):
    """River's classifier datasets for its checks, without ``river.checks``' sklearn import."""
    yield datasets.Phishing().take(200)
    yield ((x, np.bool_(y)) for x, y in datasets.Phishing().take(200))


@pytest.mark.parametrize("params", list(OnlineModel._unit_test_params()), ids=lambda p: p.get("name", "logistic"))
def test_river_estimator_checks(params: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    # river 0.23's check_estimator builds its datasets with sklearn (not a dependency here) only to
    # cover regressors; classifiers get Phishing, which is what this replacement yields.
    monkeypatch.setattr(river.checks, "_yield_datasets", _river_datasets)
    model = OnlineModel(**params)
    checks = [check.__name__ for check in river.checks.yield_checks(model)]
    assert {"check_clone_is_idempotent", "check_pickling", "check_predict_proba_one_binary"} <= set(checks)
    assert "check_emerging_features" in checks and "check_disappearing_features" in checks
    river.checks.check_estimator(model)


def test_clone_keeps_params_as_given_and_forgets_learning() -> None:
    params = {"grace_period": 20}
    model = OnlineModel("hoeffding_adaptive_tree", params)
    assert model.params is params
    for i in range(50):
        model.learn({"x": float(i)}, i % 2 == 0)
    clone = model.clone()
    assert clone.params == params and clone.params is not params
    assert clone.name == "hoeffding_adaptive_tree"
    assert clone.n_updates == 0 and model.n_updates == 50
    assert clone._get_params() == model._get_params()


def test_clean_features_drops_missing_and_non_finite() -> None:
    raw = {"a": 1, "b": None, "c": float("nan"), "d": float("inf"), "e": True, "f": "3", "g": np.float64(2.5)}
    assert clean_features(raw) == {"a": 1.0, "e": 1.0, "g": 2.5}
    assert clean_features(None) == {}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_missing_values_are_dropped_not_learnt(name: str) -> None:
    with_missing = OnlineModel(name)
    without = OnlineModel(name)
    rng = random.Random(1)
    for _ in range(200):
        recency = rng.uniform(0, 60)
        label = recency < 20
        with_missing.learn({"recency": recency, "orders": None, "spend": float("nan")}, label)
        without.learn({"recency": recency}, label)
    for recency in (1.0, 30.0, 59.0):
        p = with_missing.predict({"recency": recency, "orders": None, "spend": float("nan")})
        assert math.isfinite(p) and 0.0 <= p <= 1.0
        assert p == pytest.approx(without.predict({"recency": recency}))
    assert with_missing.predict({"recency": 1.0}) > with_missing.predict({"recency": 59.0})


def test_untrained_model_predicts_one_half_for_both_classes() -> None:
    for name in MODELS:
        assert OnlineModel(name).predict_proba_one({"x": 1.0}) == {False: 0.5, True: 0.5}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.dictionaries(st.sampled_from("abcdef"), st.floats(-1e6, 1e6), max_size=6), st.booleans()),
        max_size=60,
    ),
    st.dictionaries(st.sampled_from("abcdefg"), st.floats(-1e6, 1e6), max_size=7),
    st.sampled_from([{}, {"lr": 0.05}, {"lr": 0.5, "l2": 0.01}]),
)
def test_fast_logistic_prediction_equals_rivers(examples, x, params) -> None:
    model = OnlineModel("logistic", params)
    reference = build_model("logistic", params)
    for features, label in examples:
        model.learn_clean(features, label)
        reference.learn_one(features, label)
        assert model.predict_clean(x) == pytest.approx(reference.predict_proba_one(x)[True], abs=1e-12)
    restored = pickle.loads(pickle.dumps(model))
    assert restored.predict_clean(x) == pytest.approx(reference.predict_proba_one(x)[True], abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.dictionaries(st.sampled_from("abcdef"), st.floats(-1e6, 1e6), max_size=6), st.booleans()),
        max_size=60,
    ),
    st.sampled_from([{}, {"lr": 0.05}, {"lr": 0.5, "l2": 0.01}, {"lr": 0.1, "clip_gradient": 0.2}]),
    st.integers(1, 3),
)
def test_fast_logistic_learning_equals_rivers_bit_for_bit(examples, params, predict_every) -> None:
    model = OnlineModel("logistic", params)
    reference = build_model("logistic", params)
    assert model._sgd
    for n, (features, label) in enumerate(examples):
        if n % predict_every == 0:
            model.predict_clean(features)  # the coefficients are current: the update moves them in place
        model.learn_clean(features, label)
        reference.learn_one(features, label)
    scaler, regression = model.model.steps.values()
    river_scaler, river_regression = reference.steps.values()
    assert list(regression._weights.items()) == list(river_regression._weights.items())
    assert regression.intercept == river_regression.intercept
    assert regression.optimizer.n_iterations == river_regression.optimizer.n_iterations == len(examples)
    assert (scaler.counts, scaler.means, scaler.vars) == (river_scaler.counts, river_scaler.means, river_scaler.vars)
    model.predict_clean({})
    assert model._coefficients == linear_coefficients(scaler, regression)


def test_other_optimisers_and_l1_learn_through_river() -> None:
    assert not OnlineModel("logistic", {"optimizer": optim.Adam()})._sgd
    assert not OnlineModel("logistic", {"l1": 0.01})._sgd
    assert not OnlineModel("naive_bayes")._sgd


def test_snapshots_without_the_fast_path_attributes_still_load() -> None:
    model = OnlineModel()
    for n in range(50):
        model.learn_clean({"a": float(n % 7), "b": float(n % 3)}, n % 2 == 0)
    old = OnlineModel.__new__(OnlineModel)
    state = {k: v for k, v in pickle.loads(pickle.dumps(model)).__dict__.items() if not k.startswith("_")}
    old.__setstate__(state)  # what unpickling a snapshot of an earlier version does
    x = {"a": 3.0, "b": 1.0}
    assert old._linear is not None and old.predict_clean(x) == pytest.approx(model._proba(x)[True], abs=1e-12)


def test_other_models_and_initialisers_predict_through_river() -> None:
    assert OnlineModel("naive_bayes")._linear is None
    assert OnlineModel("logistic", {"initializer": optim.initializers.Constant(0.1)})._linear is None
    assert OnlineModel("logistic")._linear is not None


# --- delayed labels ----------------------------------------------------------------------------


def test_pending_defaults_and_bound_rule() -> None:
    p = PendingLabels("propensity")
    assert p.horizon_ms == 14 * DAY and p.snapshot_every_ms == DAY and p.max_pending == 15
    c = PendingLabels("churn")
    assert c.horizon_ms == 90 * DAY and c.max_pending == 91
    assert PendingLabels.for_task("churn", 30, snapshot_every_ms=7 * DAY).max_pending == 5
    with pytest.raises(ValueError, match="unknown task"):
        PendingLabels("ltv")
    small = PendingLabels("propensity", max_pending=2)
    assert [small.take(d * DAY + 5, {"d": d}) for d in (0, 0, 1, 2, 3)] == [True, False, True, False, False]
    assert len(small) == 2 and small.dropped == 2


def test_snapshot_is_a_copy() -> None:
    p = PendingLabels("propensity")
    features = {"x": 1.0}
    p.take(0, features)
    features["x"] = 99.0
    assert p.on_purchase(DAY)[0].features == {"x": 1.0}


def test_horizon_edges() -> None:
    p = PendingLabels("propensity")
    p.take(DAY, {})
    assert p.on_purchase(DAY) == []  # the purchase that triggered the snapshot does not label it
    assert p.due(15 * DAY) == []  # t + horizon itself is still inside
    assert p.next_due() == 15 * DAY + 1
    [example] = p.on_purchase(15 * DAY)  # a purchase exactly at t + horizon labels it
    assert (example.label, example.label_ts) == (True, 15 * DAY)
    c = PendingLabels("churn")
    c.take(0, {})
    assert c.on_purchase(91 * DAY) == []  # too late to say "came back"
    [churned] = c.due(91 * DAY)
    assert churned == Example("churn", {}, True, 0, 90 * DAY)
    assert c.next_due() is None


def test_late_snapshot_is_refused() -> None:
    p = PendingLabels("propensity")
    p.on_purchase(5 * DAY)
    assert p.take(4 * DAY, {}) is False and p.late == 1
    assert p.take(6 * DAY, {}) is True


Event = tuple[int, str]  # (ts, "take" | "purchase")


def events_strategy(max_days: int = 40) -> st.SearchStrategy[list[Event]]:
    event = st.tuples(st.integers(0, max_days * DAY), st.sampled_from(["take", "take", "purchase"]))
    return st.lists(event, max_size=40).map(lambda es: sorted(es, key=lambda e: (e[0], e[1] == "take")))


def replay(pending: PendingLabels, events: list[Event], finish: bool = True) -> tuple[list[int], list[Example]]:
    """Process events in time order as the job does: timer (watermark = event time), purchase, take."""
    taken: list[int] = []
    examples: list[Example] = []
    for ts, kind in events:
        examples += pending.due(ts)
        if kind == "purchase":
            examples += pending.on_purchase(ts)
        elif pending.take(ts, {"ts": float(ts)}):
            taken.append(ts)
    if finish:
        examples += pending.due(10**15)
    return taken, examples


def oracle(task: str, horizon: int, snapshot_ts: int, purchases: list[int]) -> tuple[bool, int]:
    inside = [p for p in purchases if snapshot_ts < p <= snapshot_ts + horizon]
    if inside:
        return task == "propensity", min(inside)
    return task == "churn", snapshot_ts + horizon


@settings(max_examples=150, deadline=None)
@given(events=events_strategy(), task=st.sampled_from(["propensity", "churn"]), days=st.integers(1, 20))
def test_every_snapshot_is_labelled_once_from_its_horizon_only(events: list[Event], task: str, days: int) -> None:
    pending = PendingLabels.for_task(task, days)
    taken, examples = replay(pending, events)
    assert sorted(e.snapshot_ts for e in examples) == taken  # exactly once each
    assert len(pending) == 0
    purchases = [ts for ts, kind in events if kind == "purchase"]
    for example in examples:
        assert example.features == {"ts": float(example.snapshot_ts)}
        assert (example.label, example.label_ts) == oracle(task, days * DAY, example.snapshot_ts, purchases)
        assert example.snapshot_ts < example.label_ts <= example.snapshot_ts + days * DAY


@settings(max_examples=150, deadline=None)
@given(
    events=events_strategy(),
    future=st.lists(st.tuples(st.integers(0, 40 * DAY), st.sampled_from(["take", "purchase"])), max_size=20),
    cut=st.integers(0, 40 * DAY),
    task=st.sampled_from(["propensity", "churn"]),
)
def test_labels_never_depend_on_what_comes_after_them(
    events: list[Event], future: list[Event], cut: int, task: str
) -> None:
    """What is labelled while processing events up to ``cut`` is the same whatever follows ``cut``."""
    prefix = [e for e in events if e[0] <= cut]
    other_future = sorted(((cut + 1 + ts, kind) for ts, kind in future), key=lambda e: (e[0], e[1] == "take"))
    _, by_cut = replay(PendingLabels(task), prefix, finish=False)
    first = PendingLabels(task)
    _, full = replay(first, events, finish=False)
    second = PendingLabels(task)
    _, changed = replay(second, prefix + other_future, finish=False)
    assert full[: len(by_cut)] == by_cut
    assert changed[: len(by_cut)] == by_cut
    for example in full:  # and no label is known before its label time
        assert example.label_ts <= max(ts for ts, _ in events)


def take_all(pending: PendingLabels, times: list[int]) -> None:
    for ts in sorted(times):
        pending.take(ts, {"ts": float(ts)})


@settings(max_examples=200, deadline=None)
@given(
    a=st.lists(st.integers(0, 30 * DAY), max_size=25),
    b=st.lists(st.integers(0, 30 * DAY), max_size=25),
    max_pending=st.integers(1, 12),
)
def test_merge_equals_taking_both_streams_into_one(a: list[int], b: list[int], max_pending: int) -> None:
    left, right, both = (PendingLabels("churn", max_pending=max_pending) for _ in range(3))
    take_all(left, a)
    take_all(right, b)
    take_all(both, a + b)
    assert left.merge(right) == []
    assert left.snapshots == both.snapshots
    assert [ts for ts, _ in left.snapshots] == sorted(ts for ts, _ in left.snapshots)
    assert len(left) <= max_pending
    assert left.last_bucket == max((t // DAY for t in a + b), default=None)
    assert left.next_due() == both.next_due()


@settings(max_examples=150, deadline=None)
@given(
    a=st.lists(st.tuples(st.integers(0, 7), st.sampled_from(["take", "purchase"])), max_size=10),
    b=st.lists(st.tuples(st.integers(0, 7), st.sampled_from(["take", "purchase"])), max_size=10),
    hours=st.lists(st.integers(0, 23), min_size=20, max_size=20),
    tail=st.lists(st.tuples(st.integers(16, 40), st.sampled_from(["take", "purchase"])), max_size=10),
    task=st.sampled_from(["propensity", "churn"]),
)
def test_merge_labels_like_one_customer(a, b, hours, tail, task) -> None:
    """Two identities (A on even days, B on odd days) merged before any horizon ends label exactly like
    one customer who did both: the merge labels A's snapshots with B's purchases and vice versa."""
    hour = itertools.cycle(hours)
    a_events = sorted(((2 * d * DAY + next(hour) * 3_600_000, k) for d, k in a), key=lambda e: (e[0], e[1] == "take"))
    b_events = sorted(((2 * d + 1) * DAY + next(hour) * 3_600_000, k) for d, k in b)
    b_events.sort(key=lambda e: (e[0], e[1] == "take"))
    tail_events = sorted(((d * DAY, k) for d, k in tail), key=lambda e: (e[0], e[1] == "take"))
    horizon_days = 20  # every event before the merge (day < 16) is inside every snapshot's horizon
    merged, other, one = (PendingLabels.for_task(task, horizon_days, max_pending=100) for _ in range(3))
    _, left_examples = replay(merged, a_events, finish=False)
    _, right_examples = replay(other, b_events, finish=False)
    examples = left_examples + right_examples + merged.merge(other)
    _, rest = replay(merged, tail_events)
    _, expected = replay(one, sorted(a_events + b_events, key=lambda e: (e[0], e[1] == "take")) + tail_events)
    assert sorted((e.snapshot_ts, e.label) for e in examples + rest) == sorted(
        (e.snapshot_ts, e.label) for e in expected
    )


def test_merge_respects_the_bound_and_rejects_other_settings() -> None:
    left, right = PendingLabels("propensity", max_pending=3), PendingLabels("propensity", max_pending=3)
    take_all(left, [0, 2 * DAY, 4 * DAY])
    take_all(right, [DAY, 3 * DAY, 5 * DAY])
    left.merge(right)
    assert [ts // DAY for ts, _ in left.snapshots] == [0, 1, 2]
    assert left.dropped == 3
    with pytest.raises(ValueError, match="different tasks"):
        left.merge(PendingLabels("churn"))


@settings(max_examples=50, deadline=None)
@given(events=events_strategy(), task=st.sampled_from(["propensity", "churn"]))
def test_pending_labels_pickle(events: list[Event], task: str) -> None:
    pending = PendingLabels(task)
    replay(pending, events, finish=False)
    restored = pickle.loads(pickle.dumps(pending))
    assert restored == pending
    assert replay(restored, [(50 * DAY, "purchase")]) == replay(pending, [(50 * DAY, "purchase")])


# --- progressive validation --------------------------------------------------------------------


def brute_auc(pairs: list[tuple[float, bool]]) -> float | None:
    pos = [p for p, y in pairs if y]
    neg = [p for p, y in pairs if not y]
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=100, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]), st.booleans()), max_size=60),
    window=st.integers(1, 30),
)
def test_rolling_figures_match_a_recomputation(pairs: list[tuple[float, bool]], window: int) -> None:
    v = ProgressiveValidation(window=window, bins=4)
    for p, y in pairs:
        v.update(p, y)
    recent = pairs[-window:]
    assert v.n == len(pairs)
    assert list(v.pairs) == recent
    expected_auc = brute_auc(recent)
    assert v.roc_auc() == (None if expected_auc is None else pytest.approx(expected_auc))
    if recent:
        expected_loss = sum(-math.log(min(1 - 1e-15, max(1e-15, p if y else 1 - p))) for p, y in recent) / len(recent)
        assert v.log_loss() == pytest.approx(expected_loss, rel=1e-9, abs=1e-9)
        counts = [row["count"] for row in v.calibration()]
        assert sum(counts) == len(recent)
        gaps = 0.0
        for b in range(4):
            inside = [(p, y) for p, y in recent if min(3, int(p * 4)) == b]
            gaps += abs(sum(p for p, _ in inside) - sum(1 for _, y in inside if y))
        assert v.expected_calibration_error() == pytest.approx(gaps / len(recent), abs=1e-9)
    else:
        assert v.log_loss() is None and v.expected_calibration_error() is None


def test_calibrated_predictions_have_small_ece_and_biased_ones_large() -> None:
    rng = random.Random(7)
    calibrated, biased = ProgressiveValidation(), ProgressiveValidation()
    for _ in range(20_000):
        p = rng.random()
        y = rng.random() < p
        calibrated.update(p, y)
        biased.update(min(1.0, p + 0.3), y)
    assert calibrated.expected_calibration_error() < 0.03
    assert biased.expected_calibration_error() > 0.2
    assert len(calibrated.pairs) == 10_000
    summary = calibrated.summary()
    assert summary["n"] == 20_000 and summary["window"] == 10_000
    assert 0.7 < summary["roc_auc"] < 0.9
    assert len(summary["calibration"]) == 10
    assert pickle.loads(pickle.dumps(calibrated)) == calibrated


def test_validation_rejects_non_finite_predictions() -> None:
    with pytest.raises(ValueError, match="finite"):
        ProgressiveValidation().update(float("nan"), True)
    assert roc_auc([(0.3, True)]) is None


# --- snapshots ---------------------------------------------------------------------------------

KEY = b"test-model-key-0123456789"
OTHER_KEY = b"someone-elses-key-987654"


def trained(name: str = "logistic") -> OnlineModel:
    model = OnlineModel(name, {"grace_period": 30} if name == "hoeffding_adaptive_tree" else None)
    for x, y in datasets.Phishing().take(100):
        model.learn(x, y)
    return model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dump_and_load_round_trip(name: str) -> None:
    model = trained(name)
    data = dump_model(model, mac_key=KEY)
    header = read_header(data)
    assert header["format"] == 2 and header["river"] == river.__version__
    assert header["model"] == name and header["n_updates"] == 100
    assert header["params"] == model.params and len(header["mac"]) == 64
    restored = load_model(data, mac_key=KEY)
    assert restored.n_updates == 100
    for x, _ in datasets.Phishing().take(20):
        assert restored.predict(x) == model.predict(x)


def test_load_refuses_incompatible_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    data = dump_model(trained(), mac_key=KEY)
    with pytest.raises(ValueError, match="bad magic"):
        load_model(b"\x80\x04" + data, mac_key=KEY)
    future = data.replace(b'"format":2', b'"format":3')
    with pytest.raises(ValueError, match="format 3 is not supported"):
        load_model(future, mac_key=KEY)
    with pytest.raises(ValueError, match="signature does not match"):
        load_model(data[:-10], mac_key=KEY)  # truncated
    with pytest.raises(ValueError, match="signature does not match"):
        load_model(data, mac_key=OTHER_KEY)
    for no_key in (None, b""):
        with pytest.raises(ValueError, match="no model key"):
            load_model(data, mac_key=no_key)
    with pytest.raises(ValueError, match="no model key"):
        dump_model(trained(), mac_key=None)
    monkeypatch.setattr(snapshot_module.river, "__version__", "9.9.9")
    with pytest.raises(ValueError, match=r"written by river 0\.23"):
        load_model(data, mac_key=KEY)
    assert load_model(data, mac_key=KEY, allow_other_river=True).n_updates == 100


def test_a_forged_snapshot_is_refused_before_its_pickle_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = pickle.dumps(RunsCode(marker))
    genuine = read_header(dump_model(trained(), mac_key=KEY))
    unsigned = {k: v for k, v in genuine.items() if k != "mac"}
    forgeries = {
        "unsigned": (snapshot_of(unsigned, payload), "not signed"),
        "the mac of a genuine snapshot": (snapshot_of(genuine, payload), "signature does not match"),
        "signed with another key": (dump_model(RunsCode(marker), mac_key=OTHER_KEY), "signature does not match"),
        "a mac that is not text": (snapshot_of({**unsigned, "mac": 12345}, payload), "not signed"),
        "a mac that is not ASCII": (snapshot_of({**unsigned, "mac": "é" * 64}, payload), "signature does not match"),
        "format 1 (checksum only)": (
            snapshot_of({**unsigned, "format": 1, "sha256": hashlib.sha256(payload).hexdigest()}, payload),
            "format 1 is not supported",
        ),
    }
    for name, (forged, refusal) in forgeries.items():
        with pytest.raises(ValueError, match=refusal):
            load_model(forged, mac_key=KEY)
        assert not marker.exists(), name
    with pytest.raises(ValueError, match="no model key"):  # even one signed with the job's key, without a key
        load_model(dump_model(RunsCode(marker), mac_key=KEY), mac_key=None)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: loaded unchecked, it runs
    assert marker.exists()


SIGNED = dump_model(OnlineModel().learn({"x": 1.0}, True), mac_key=KEY)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(SIGNED) * 8 - 1))
def test_a_flipped_bit_anywhere_is_refused(bit: int) -> None:
    flipped = bytearray(SIGNED)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ValueError):
        load_model(bytes(flipped), mac_key=KEY)


def test_registry_versions_are_monotonic_in_a_dict_store() -> None:
    store = DictStore()
    registry = ModelRegistry(store, prefix="p", mac_key=KEY)
    assert registry.latest_version("churn") is None
    with pytest.raises(LookupError):
        registry.load("churn")
    model = OnlineModel()
    versions = []
    for _ in range(3):
        model.learn({"x": 1.0}, True)
        versions.append(registry.publish("churn", model))
    assert versions == [1, 2, 3]
    assert store.get("p:model:churn:latest") == b"3"
    assert registry.load("churn").n_updates == 3
    assert registry.load("churn", 1).n_updates == 1
    store.set("p:model:churn:v4", b"left over by a crashed publisher")
    assert registry.publish("churn", model) == 5  # never overwrites a version
    assert registry.latest_version("propensity") is None


def test_registry_on_a_real_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    registry = ModelRegistry(client, prefix="segtest", mac_key=KEY)
    model = trained()
    assert registry.publish("propensity", model) == 1
    assert registry.publish("propensity", model) == 2
    assert client.get("segtest:model:propensity:latest") == b"2"
    assert read_header(client.get("segtest:model:propensity:v1"))["n_updates"] == 100
    x = next(iter(datasets.Phishing()))[0]
    assert ModelRegistry(client, prefix="segtest", mac_key=KEY).load("propensity").predict(x) == model.predict(x)
    with pytest.raises(ValueError, match="signature does not match"):
        ModelRegistry(client, prefix="segtest", mac_key=OTHER_KEY).load("propensity")
    with pytest.raises(ValueError, match="no model key"):
        ModelRegistry(client, prefix="segtest").publish("propensity", model)
    assert client.get("segtest:model:propensity:latest") == b"2"


# --- Models: the glue --------------------------------------------------------------------------


def test_models_observe_expire_learn_and_score() -> None:
    assert Models().new_pending()["churn"].snapshot_every_ms == 7 * DAY  # weekly by default: 13 pending at most
    models = Models(ModelSettings(propensity_days=14, churn_days=30, churn_snapshot_every_ms=DAY))
    pending = models.new_pending()
    assert pending["churn"].horizon_ms == 30 * DAY and pending["propensity"].horizon_ms == 14 * DAY
    assert models.observe(pending, {"orders": 1.0}, "page_view", 0) == []
    assert models.observe(pending, {"orders": 1.0}, "page_view", 3_600_000) == []  # same day: no new snapshot
    examples = models.observe(pending, {"orders": 2.0}, "purchase", 2 * DAY)
    assert sorted((e.task, e.label, e.snapshot_ts) for e in examples) == [("churn", False, 0), ("propensity", True, 0)]
    assert models.next_due(pending) == 2 * DAY + 14 * DAY + 1
    assert models.expire(pending, 16 * DAY) == []
    [late] = models.expire(pending, 16 * DAY + 1)
    assert (late.task, late.label) == ("propensity", False)
    [churned] = models.expire(pending, 33 * DAY)
    assert (churned.task, churned.label) == ("churn", True)
    assert models.learn([*examples, late, churned]) == 4
    summary = models.summary()
    assert summary["propensity"]["n_updates"] == 2 and summary["churn"]["n_updates"] == 2
    assert summary["propensity"]["validation"]["n"] == 2
    first = summary["churn"]["validation"]
    assert first["mean_predicted"] == pytest.approx(0.5, abs=0.01)  # predicted before learning
    scores = models.score({"orders": 2.0, "missing": None}, 40 * DAY)
    assert set(scores) == {"churn_score", "propensity_score", "ltv_score"}
    assert 0.0 <= scores["churn_score"] <= 1.0 and 0.0 <= scores["propensity_score"] <= 1.0
    assert scores["ltv_score"] == 0.0  # no value learnt yet


def test_models_learn_a_recency_signal_with_progressive_validation() -> None:
    models = Models(ModelSettings(model="logistic", params={"lr": 0.05}))
    rng = random.Random(3)
    examples = []
    for i in range(4000):
        recency = rng.uniform(0, 100)
        bought = rng.random() < (0.8 if recency < 30 else 0.1)
        examples.append(Example("propensity", {"recency_days": recency, "bias": None}, bought, i, i + 1))
    models.learn(examples)
    summary = models.summary()["propensity"]["validation"]
    assert summary["roc_auc"] > 0.75
    assert (
        models.score({"recency_days": 5}, 0)["propensity_score"]
        > 0.5
        > models.score({"recency_days": 90}, 0)["propensity_score"]
    )
    assert models.score({"recency_days": 5}, 0)["churn_score"] == 0.5  # churn never learnt


HOUR = 3_600_000


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["churn", "propensity"]), st.floats(0, 100), st.booleans(), st.integers(0, 2 * HOUR)),
        max_size=150,
    ),
    st.integers(1, 40),
)
def test_learning_in_runs_gives_the_model_and_validation_of_learning_each_at_once(
    rows: list[tuple[str, float, bool, int]], batch: int
) -> None:
    at_once = Models(ModelSettings(learn_batch=1))
    in_runs = Models(ModelSettings(learn_batch=batch, learn_wait_ms=HOUR))
    ts = 0
    for task, x, label, gap in rows:
        ts += gap
        example = Example(task, {"x": x}, label, ts - 1, ts)
        assert at_once.learn([example]) == in_runs.learn([example]) == 1
        assert not at_once.waiting
        assert len(in_runs.waiting) < batch  # learnt once learn_batch wait,
        assert not in_runs.waiting or ts - in_runs.waiting[0].label_ts < HOUR  # or the first waited an hour
    in_runs.flush()
    for task in TASKS:
        assert in_runs.validation[task].pairs == at_once.validation[task].pairs
        assert in_runs.models[task].n_updates == at_once.models[task].n_updates
    assert in_runs.score({"x": 3.0}, ts) == at_once.score({"x": 3.0}, ts)


def test_waiting_labels_are_learnt_when_scores_are_read_an_hour_later_and_by_the_summary() -> None:
    models = Models(ModelSettings(learn_batch=32, learn_wait_ms=HOUR))
    untrained = models.score({"x": 1.0}, 0)
    examples = [Example("propensity", {"x": 1.0}, True, 0, 10) for _ in range(5)]
    assert models.learn(examples) == 5 and len(models.waiting) == 5
    assert models.score({"x": 1.0}, 10 + HOUR - 1) == untrained  # the labels wait
    restored = pickle.loads(pickle.dumps(models))
    assert len(restored.waiting) == 5  # part of the state a checkpoint holds
    assert models.score({"x": 1.0}, 10 + HOUR)["propensity_score"] > untrained["propensity_score"]
    assert not models.waiting and models.models["propensity"].n_updates == 5
    assert restored.summary()["propensity"]["n_updates"] == 5 and not restored.waiting


def test_models_merge_and_pickle() -> None:
    models = Models(ModelSettings(model="hoeffding_adaptive_tree"))
    a, b = models.new_pending(), models.new_pending()
    models.observe(a, {"x": 1.0}, "page_view", 0)
    models.observe(b, {"x": 2.0}, "purchase", 2 * DAY)
    decided = models.merge(a, b)
    assert sorted((e.task, e.label) for e in decided) == [("churn", False), ("propensity", True)]
    assert [ts for ts, _ in a["churn"].snapshots] == [2 * DAY]
    restored = pickle.loads(pickle.dumps((models, a)))
    assert restored[1] == a
    assert restored[0].score({"x": 1.0}, 0) == models.score({"x": 1.0}, 0)


def test_online_models_import_no_engine_and_read_no_clock() -> None:
    root = Path(__file__).resolve().parent.parent / "online_models"
    for path in root.glob("*.py"):
        tree_ = ast.parse(path.read_text(encoding="utf-8"))
        imported = set()
        for node in ast.walk(tree_):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert not imported & {"apache_beam", "pyflink", "time", "datetime"}, path
