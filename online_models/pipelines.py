"""River model pipelines chosen by name, and the :class:`OnlineModel` wrapper the job uses.

The configuration names a model (``models.name``) and may give its parameters (``models.params``,
plain YAML values). :func:`build_model` turns the pair into a fresh River binary classifier:

=============================  =====================================================================
name                           pipeline
=============================  =====================================================================
``logistic`` (default)         ``preprocessing.StandardScaler() | linear_model.LogisticRegression(**params)``;
                               ``lr`` in params (default :data:`DEFAULT_LR`) becomes ``optimizer=optim.SGD(lr)``
``hoeffding_adaptive_tree``    ``tree.HoeffdingAdaptiveTreeClassifier(**params)`` (``seed`` 42 unless given)
``naive_bayes``                ``naive_bayes.GaussianNB(**params)``
``adaptive_random_forest``     ``forest.ARFClassifier(**params)`` (``n_models`` 5, ``seed`` 42 unless given)
=============================  =====================================================================

Features are a flat ``dict[str, float]``. :func:`clean_features` keeps the finite numbers (``bool``
becomes 0/1) and drops everything else (``None``, NaN, infinities, strings): River models treat
an absent feature as "no information" (after ``StandardScaler`` that is the running mean, i.e. a
zero contribution), which is the right reading of a value the caller could not compute.

>>> model = OnlineModel()
>>> model.predict({"recency_days": 3.0, "orders_90d": None})
0.5
>>> for _ in range(20):
...     model = model.learn({"recency_days": 1.0, "orders_90d": 5.0}, True)
...     model = model.learn({"recency_days": 60.0, "orders_90d": 0.0}, False)
>>> model.n_updates
40
>>> model.predict({"recency_days": 1.0, "orders_90d": 5.0}) > 0.5 > model.predict({"recency_days": 60.0})
True
>>> model.clone().n_updates
0
>>> build_model("svm")
Traceback (most recent call last):
...
ValueError: unknown model 'svm'; known models: adaptive_random_forest, hoeffding_adaptive_tree, logistic, naive_bayes
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from river import base, compose, forest, linear_model, naive_bayes, optim, preprocessing, tree
from river.utils.math import sigmoid

DEFAULT_MODEL = "logistic"
DEFAULT_LR = 0.001  # River's default 0.01 overshoots on heavy-tailed features (bench/uci_scores.py)


def _logistic(params: dict[str, Any]) -> base.Classifier:
    lr = params.pop("lr", DEFAULT_LR)
    if not isinstance(lr, int | float) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"model 'logistic': lr must be a positive number, got {lr!r}")
    params.setdefault("optimizer", optim.SGD(float(lr)))
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(**params)


def _hoeffding_adaptive_tree(params: dict[str, Any]) -> base.Classifier:
    params.setdefault("seed", 42)
    return tree.HoeffdingAdaptiveTreeClassifier(**params)


def _naive_bayes(params: dict[str, Any]) -> base.Classifier:
    return naive_bayes.GaussianNB(**params)


def _adaptive_random_forest(params: dict[str, Any]) -> base.Classifier:
    params.setdefault("n_models", 5)
    params.setdefault("seed", 42)
    return forest.ARFClassifier(**params)


MODELS: dict[str, Callable[[dict[str, Any]], base.Classifier]] = {
    "logistic": _logistic,
    "hoeffding_adaptive_tree": _hoeffding_adaptive_tree,
    "naive_bayes": _naive_bayes,
    "adaptive_random_forest": _adaptive_random_forest,
}


def build_model(name: str, params: Mapping[str, Any] | None = None) -> base.Classifier:
    """A fresh River binary classifier for the configured ``name`` and ``params``.

    ``params`` are keyword arguments of the pipeline's final classifier (see the module table);
    they are copied, never mutated. An unknown name, or parameters the classifier does not take,
    raise :class:`ValueError` naming what is known.

    >>> build_model("logistic", {"lr": 0.05, "l2": 0.001})["LogisticRegression"].l2
    0.001
    >>> build_model("hoeffding_adaptive_tree").seed
    42
    >>> build_model("logistic", {"nope": 1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: model 'logistic': bad params {'nope': 1}: ...
    """
    factory = MODELS.get(name)
    if factory is None:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    given = dict(params or {})
    try:
        return factory(copy.deepcopy(given))
    except TypeError as error:
        raise ValueError(f"model {name!r}: bad params {given!r}: {error}") from None


def clean_features(features: Mapping[str, Any] | None) -> dict[str, float]:
    """The finite numeric features as floats; ``None``, NaN, infinities and non-numbers are dropped.

    >>> clean_features({"a": 1, "b": None, "c": float("nan"), "d": True, "e": "x", "f": 2.5})
    {'a': 1.0, 'd': 1.0, 'f': 2.5}
    """
    if not features:
        return {}
    clean = {key: value for key, value in features.items() if type(value) is float and value - value == 0.0}
    if len(clean) == len(features):  # the job's case: every value a finite float already
        return clean
    clean = {}
    for key, value in features.items():
        if isinstance(value, bool):
            clean[key] = 1.0 if value else 0.0
        elif isinstance(value, int | float):
            number = float(value)
            if math.isfinite(number):
                clean[key] = number
        elif hasattr(value, "__float__") and not isinstance(value, str | bytes):  # numpy scalars
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                clean[key] = number
    return clean


def scaled_logistic_parts(
    model: base.Classifier,
) -> tuple[preprocessing.StandardScaler, linear_model.LogisticRegression] | None:
    """The scaler and the regression of a ``StandardScaler() | LogisticRegression()`` pipeline with
    zero-initialised weights (the ``logistic`` model), else None."""
    if not isinstance(model, compose.Pipeline) or len(model.steps) != 2:
        return None
    scaler, regression = model.steps.values()
    if (
        type(scaler) is preprocessing.StandardScaler
        and scaler.with_std
        and type(regression) is linear_model.LogisticRegression
        and isinstance(regression.initializer, optim.initializers.Zeros)
    ):
        return scaler, regression
    return None


def learns_by_sgd(parts: tuple[preprocessing.StandardScaler, linear_model.LogisticRegression] | None) -> bool:
    """Whether :meth:`OnlineModel.learn_clean` may update these parts itself: plain SGD without L1
    (the ``logistic`` model's optimiser), the update River's ``learn_one`` makes."""
    return parts is not None and type(parts[1].optimizer) is optim.SGD and not parts[1].l1


def linear_coefficients(
    scaler: preprocessing.StandardScaler, regression: linear_model.LogisticRegression | linear_model.LinearRegression
) -> dict[str, tuple[float, float]]:
    """Per feature ``(c, c * mean)`` with ``c = weight / std``: the logit of ``scaler | regression``
    is then ``intercept + sum(c * x - c * mean)`` over the features given. A feature the scaler has
    no variance for scales to 0 (River's ``safe_div``), one without weight adds nothing (zero
    initialiser): neither is listed."""
    coefficients = {}
    for name, weight in regression._weights.items():
        variance = scaler.vars.get(name, 0.0)
        if weight and variance:
            c = weight / variance**0.5
            coefficients[name] = (c, c * scaler.means[name])
    return coefficients


class OnlineModel(base.Classifier):
    """A binary River classifier chosen by name, fed with cleaned flat features.

    Follows River's estimator contract: the constructor only stores its parameters (``name``,
    ``params``, kept exactly as given), ``clone()`` returns an untrained model with the same
    parameters, ``learn_one`` / ``predict_proba_one`` take River's ``dict`` features. Missing or
    non-finite feature values are dropped (:func:`clean_features`). ``predict_proba_one`` always
    returns both classes; before the model has seen both, the missing class gets the rest of the
    mass and an empty prediction is ``{False: 0.5, True: 0.5}``.

    The job's helpers: :meth:`predict` returns P(label is True) as a float, :meth:`learn` counts
    updates in ``n_updates`` (recorded in model snapshots).

    Parameters
    ----------
    name
        A key of :data:`MODELS`.
    params
        Keyword arguments of the final classifier (see :func:`build_model`).

    >>> OnlineModel("naive_bayes").predict_proba_one({"x": 1.0})
    {False: 0.5, True: 0.5}
    """

    def __init__(self, name: str = DEFAULT_MODEL, params: dict | None = None):
        self.name = name
        self.params = params
        self.model = build_model(name, params)
        self.n_updates = 0
        self._linear = scaled_logistic_parts(self.model)
        self._sgd = learns_by_sgd(self._linear)
        self._coefficients: dict[str, tuple[float, float]] = {}
        self._coefficients_at: int | None = None  # n_updates when the coefficients were read

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, also snapshots of versions without the fast path's attributes."""
        self.__dict__.update(state)
        self.__dict__.setdefault("_linear", scaled_logistic_parts(self.model))
        self.__dict__.setdefault("_sgd", learns_by_sgd(self._linear))
        self.__dict__.setdefault("_coefficients", {})
        self.__dict__.setdefault("_coefficients_at", None)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"name": "hoeffding_adaptive_tree", "params": {"grace_period": 50}}
        yield {"name": "naive_bayes"}
        yield {"name": "adaptive_random_forest", "params": {"n_models": 3}}

    def learn_one(self, x: dict, y: base.typing.ClfTarget, **kwargs: Any) -> None:
        self.learn_clean(clean_features(x), bool(y))

    def learn_clean(self, x: dict[str, float], y: bool) -> None:
        """:meth:`learn_one` of features :func:`clean_features` already cleaned (the job's hot path).

        The default pipeline learns without River's pipeline machinery (:meth:`_learn_sgd`: the
        same update, about four times faster) and keeps the fast path's coefficients current."""
        if self._sgd and not compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT:
            current = self._coefficients_at == self.n_updates
            self._learn_sgd(x, y, self._coefficients if current else None)
            self.n_updates += 1
            if current:
                self._coefficients_at = self.n_updates
        else:
            self.model.learn_one(x, y)
            self.n_updates += 1

    def _learn_sgd(self, x: dict[str, float], y: bool, coefficients: dict[str, tuple[float, float]] | None) -> None:
        """``StandardScaler() | LogisticRegression(optim.SGD)``'s ``learn_one``, operation for
        operation as River computes it (the same floats; tested): the scaler learns ``x``, scales it,
        then one gradient step on the weights of ``x``'s features and on the intercept. The
        ``coefficients`` of :func:`linear_coefficients`, if given, are brought up to date: an update
        moves only those of ``x``'s features."""
        assert self._linear is not None
        scaler, regression = self._linear
        counts, means, variances = scaler.counts, scaler.means, scaler.vars
        scaled: dict[str, float] = {}
        stats = []  # per feature of x, in order: (mean, variance, std)
        for name, value in x.items():  # StandardScaler.learn_one, then transform_one
            n = counts[name] + 1
            counts[name] = n
            old = means[name]
            mean = means[name] = old + (value - old) / n
            variance = variances[name]
            variance = variances[name] = variance + ((value - old) * (value - mean) - variance) / n
            std = variance**0.5
            scaled[name] = (value - mean) / std if std else 0.0
            stats.append((mean, variance, std))
        weights = regression._weights
        known = weights.to_dict()  # a plain copy reads faster than River's VectorDict
        z = 0.0  # River's dot product, in its order: the known weights (a new one is 0.0)
        for name, weight in known.items():
            value = scaled.get(name)
            if value is not None:
                z += weight * value
        gradient = regression.loss.gradient(y_true=y, y_pred=z + regression.intercept)
        gradient = float(max(min(gradient, regression.clip_gradient), -regression.clip_gradient))
        optimizer = regression.optimizer
        regression.intercept -= regression.intercept_lr.get(optimizer.n_iterations) * gradient
        lr, l2 = optimizer.learning_rate, regression.l2
        # New features join the weights in x's order, as in River.
        for (name, value), (mean, variance, std) in zip(scaled.items(), stats, strict=True):
            weight = known.get(name, 0.0)
            step = value * gradient + weight * l2 if l2 else value * gradient
            weight = weights[name] = weight - step * lr
            if coefficients is None:
                continue
            if weight and variance:
                c = weight / std
                coefficients[name] = (c, c * mean)
            else:
                coefficients.pop(name, None)
        optimizer.n_iterations += 1

    def predict_clean(self, x: dict[str, float]) -> float:
        """P(label is True) for features :func:`clean_features` already cleaned.

        The default pipeline is read directly (:func:`linear_coefficients`, recomputed after each
        update): the same number as River's ``predict_proba_one``, about six times faster.
        """
        linear = self._linear
        if linear is None:
            return self._proba(x)[True]
        if self._coefficients_at != self.n_updates:  # learnt since: read the model again
            self._coefficients, self._coefficients_at = linear_coefficients(*linear), self.n_updates
        coefficients, z = self._coefficients, linear[1].intercept
        for name, value in x.items():
            c = coefficients.get(name)
            if c is not None:
                z += c[0] * value - c[1]
        return float(sigmoid(z))

    def predict_proba_one(self, x: dict, **kwargs: Any) -> dict[bool, float]:
        return self._proba(clean_features(x))

    def _proba(self, x: dict[str, float]) -> dict[bool, float]:
        proba = self.model.predict_proba_one(x)
        total = sum(proba.values())
        if not total:
            return {False: 0.5, True: 0.5}
        p_true = min(1.0, max(0.0, proba.get(True, 0.0) / total))
        return {False: 1.0 - p_true, True: p_true}

    def predict_one(self, x: dict, **kwargs: Any) -> bool:
        return self.predict_proba_one(x)[True] > 0.5

    def predict(self, features: Mapping[str, Any]) -> float:
        """P(label is True) for ``features``."""
        return self.predict_proba_one(dict(features))[True]

    def learn(self, features: Mapping[str, Any], label: bool) -> OnlineModel:
        """Learn one labelled example; returns ``self`` for chaining."""
        self.learn_one(dict(features), label)
        return self


class SpendRegressor:
    """The lifetime-value model: future spend from the same flat features, learnt online.

    ``StandardScaler() | LinearRegression(optim.SGD(lr), clip_gradient=1)`` on ``log1p(spend)``
    (spend is heavy tailed); :meth:`predict_clean` returns the spend itself (``expm1`` of the
    prediction, held between 0 and the largest spend learnt: a linear model far outside what it
    learnt can predict any logarithm). Without the gradient clipped, the first
    updates over features the scaler has barely seen sent the weights to infinity (a mean
    ``ltv_score`` of 1e13 on a generated cohort); with it the ranking beat BG/NBD with Gamma-Gamma
    there (``bench/BACKTEST.md``). The log target makes the value a geometric rather than an
    arithmetic mean: it ranks customers, it underestimates totals. ``name`` and ``params`` follow
    :class:`OnlineModel` so that snapshots and restores treat both alike.

    >>> model = SpendRegressor()
    >>> for _ in range(200):
    ...     model.learn_clean({"orders": 5.0}, 100.0)
    ...     model.learn_clean({"orders": 1.0}, 0.0)
    >>> model.predict_clean({"orders": 5.0}) > 10 * max(1.0, model.predict_clean({"orders": 1.0}))
    True
    """

    name = "linear_log_spend"

    def __init__(self, params: dict | None = None):
        self.params = params
        lr = (params or {}).get("lr", 0.01)
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
            raise ValueError(f"ltv model: lr must be a positive number, got {lr!r}")
        self.model = preprocessing.StandardScaler() | linear_model.LinearRegression(
            optimizer=optim.SGD(float(lr)), clip_gradient=1.0
        )
        self.top = 0.0  # the largest log1p(spend) learnt: predictions stay within what was seen
        self.n_updates = 0
        self._coefficients: dict[str, tuple[float, float]] = {}
        self._coefficients_at = 0  # n_updates when the coefficients were read

    def learn_clean(self, x: dict[str, float], y: float) -> None:
        """Learn that ``x`` was followed by a spend of ``y`` (clamped at 0)."""
        target = math.log1p(max(0.0, float(y)))
        self.top = max(self.top, target)
        self.model.learn_one(x, target)
        self.n_updates += 1

    def predict_clean(self, x: dict[str, float]) -> float:
        """The expected spend after features ``x``, within the spends learnt (0 before any).

        Read from :func:`linear_coefficients` (recomputed after each update), as
        :meth:`OnlineModel.predict_clean` reads the logistic model: River's ``predict_one`` up to
        rounding, several times faster."""
        if not self.n_updates:
            return 0.0
        scaler, regression = self.model.steps.values()
        if self._coefficients_at != self.n_updates:
            self._coefficients, self._coefficients_at = linear_coefficients(scaler, regression), self.n_updates
        coefficients, value = self._coefficients, regression.intercept
        for name, feature in x.items():
            c = coefficients.get(name)
            if c is not None:
                value += c[0] * feature - c[1]
        return math.expm1(min(max(value, 0.0), self.top)) if math.isfinite(value) else 0.0
