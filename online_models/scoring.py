"""The churn and propensity models of the job, with their delayed labels and progressive validation.

:class:`Models` owns one :class:`~online_models.pipelines.OnlineModel` and one
:class:`~online_models.validation.ProgressiveValidation` per task (``churn``, ``propensity``). The
per-customer state is a ``dict[task, PendingLabels]`` made by :meth:`Models.new_pending`; the
caller keeps it (keyed state) and hands it back:

1. on every event of a customer, after updating its features: ``examples = models.observe(pending,
   features, event_type, now)`` (a purchase labels the snapshots it decides, then a snapshot is
   taken, at most one per ``snapshot_every_ms``);
2. when the watermark passes ``models.next_due(pending)`` (an event-time timer):
   ``examples += models.expire(pending, watermark)``;
3. ``models.learn(examples)``: each example is first predicted (progressive validation), then learnt;
4. ``models.score(features, now)`` for the profile.

>>> DAY = 86_400_000
>>> models = Models(ModelSettings(propensity_days=14, churn_days=90))
>>> pending = models.new_pending()
>>> models.observe(pending, {"orders": 1.0, "recency_days": 0.0}, "purchase", 0)
[]
>>> examples = models.observe(pending, {"orders": 2.0, "recency_days": 0.0}, "purchase", 5 * DAY)
>>> sorted((e.task, e.label) for e in examples)
[('churn', False), ('propensity', True)]
>>> models.next_due(pending) == 5 * DAY + 14 * DAY + 1
True
>>> sorted((e.task, e.label) for e in models.expire(pending, 20 * DAY))
[('propensity', False)]
>>> models.learn(examples)
2
>>> sorted(models.score({"orders": 2.0, "recency_days": 0.0}, 20 * DAY))
['churn_score', 'propensity_score']
>>> models.summary()["propensity"]["validation"]["n"]
1
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from online_models.labels import DAY_MS, TASKS, Example, PendingLabels
from online_models.pipelines import DEFAULT_MODEL, OnlineModel, clean_features
from online_models.validation import ProgressiveValidation

SCORE_KEYS = {"churn": "churn_score", "propensity": "propensity_score"}


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """What the configuration says about the models (all optional)."""

    model: str = DEFAULT_MODEL
    params: dict[str, Any] | None = None
    churn_days: float = 90
    propensity_days: float = 14
    snapshot_every_ms: int = DAY_MS  # propensity: at most one snapshot per customer and day
    churn_snapshot_every_ms: int = 7 * DAY_MS  # churn: one a week bounds 90 days of pendings to 13
    refresh_ms: int = 0  # extra score refreshes this often (0: only at label timers, every propensity_days)
    max_pending: int | None = None
    validation_window: int = 10_000
    calibration_bins: int = 10
    publish_every: int = 10_000  # a versioned snapshot goes to Redis after this many updates
    per_task_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def days(self, task: str) -> float:
        return self.churn_days if task == "churn" else self.propensity_days

    @property
    def churn_horizon_ms(self) -> int:
        return round(self.churn_days * DAY_MS)

    def snapshot_every(self, task: str) -> int:
        return self.churn_snapshot_every_ms if task == "churn" else self.snapshot_every_ms

    def __post_init__(self) -> None:
        for task in TASKS:
            if self.days(task) * DAY_MS < self.snapshot_every(task):
                key = "churn_snapshot_every" if task == "churn" else "snapshot_every"
                raise ValueError(f"models.{task}_days must be at least models.{key}")


class Models:
    """Both tasks' models and validation (see the module docstring for the calling protocol)."""

    def __init__(self, settings: ModelSettings | None = None):
        self.settings = settings or ModelSettings()
        s = self.settings
        self.models: dict[str, OnlineModel] = {
            task: OnlineModel(s.model, s.per_task_params.get(task, s.params)) for task in TASKS
        }
        self.validation: dict[str, ProgressiveValidation] = {
            task: ProgressiveValidation(s.validation_window, s.calibration_bins) for task in TASKS
        }

    @property
    def leading(self) -> str:
        """The task with the shorter horizon: its snapshots set the customers' timers."""
        return min(TASKS, key=self.settings.days)

    def new_pending(self) -> dict[str, PendingLabels]:
        """A new customer's empty pending labels, one per task."""
        s = self.settings
        return {
            task: PendingLabels.for_task(task, s.days(task), s.snapshot_every(task), s.max_pending) for task in TASKS
        }

    def score(self, features: Mapping[str, Any], now: int) -> dict[str, float]:
        """``churn_score`` and ``propensity_score`` for the features as of event time ``now``.

        ``now`` is not read by the models (the features carry recency); it is part of the call so
        that a time-aware model can be swapped in without changing callers.
        """
        return self.score_clean(clean_features(features))

    def score_clean(self, features: dict[str, float]) -> dict[str, float]:
        """:meth:`score` of features that are finite floats already (the job's hot path)."""
        return {SCORE_KEYS[task]: model.predict_clean(features) for task, model in self.models.items()}

    def observe(
        self,
        pending: dict[str, PendingLabels],
        features: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        event_type: str,
        now: int,
    ) -> list[Example]:
        """One event of the customer at event time ``now``: label what a purchase decides, then snapshot.

        ``features`` may be a function: it is called only when a snapshot is taken.
        """
        examples: list[Example] = []
        clean: dict[str, float] | None = None
        for task in TASKS:
            labels = pending[task]
            if event_type == "purchase":
                examples.extend(labels.on_purchase(now))
            if labels.wants(now):
                if clean is None:
                    clean = clean_features(features() if callable(features) else features)
                labels.take(now, clean)
        return examples

    def expire(self, pending: dict[str, PendingLabels], watermark: int) -> list[Example]:
        """Label the snapshots whose horizon ended before ``watermark`` (call from the timer)."""
        return [example for task in TASKS for example in pending[task].due(watermark)]

    def next_due(self, pending: dict[str, PendingLabels]) -> int | None:
        """When to fire the customer's timer next (event time), or None."""
        times = [t for t in (pending[task].next_due() for task in TASKS) if t is not None]
        return min(times) if times else None

    def revisits(self, pending: dict[str, PendingLabels], now: int) -> bool:
        """Whether the customer's timer at ``now`` (before :meth:`expire`) is a revisit, which
        snapshots a silent customer and recomputes the scores: a snapshot of the task with the shorter
        horizon falls due, or ``refresh_ms`` is set. Otherwise the timer only learns the other
        task's labels."""
        due = pending[self.leading].next_due()
        return bool(self.settings.refresh_ms) or (due is not None and due <= now)

    def wants_refresh(self, pending: dict[str, PendingLabels]) -> bool:
        """Whether a revisit (after :meth:`expire`) snapshots the silent customer: when no snapshot of
        the task with the shorter horizon waits any more (so a silent customer is revisited once per
        that horizon, not once per snapshot), and at every boundary of ``refresh_ms``."""
        return bool(self.settings.refresh_ms) or not pending[self.leading]

    def merge(self, pending: dict[str, PendingLabels], absorbed: dict[str, PendingLabels]) -> list[Example]:
        """Identity merge: move ``absorbed``'s pendings into ``pending``; returns the labels it decides."""
        return [example for task in TASKS for example in pending[task].merge(absorbed[task])]

    def learn(self, examples: Iterable[Example]) -> int:
        """Predict each example (recorded in progressive validation), then learn it; returns the count."""
        count = 0
        for example in examples:
            model, features = self.models[example.task], clean_features(example.features)
            self.validation[example.task].update(model.predict_clean(features), example.label)
            model.learn_clean(features, example.label)
            count += 1
        return count

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per task: model name, updates and the progressive-validation figures."""
        return {
            task: {
                "model": self.models[task].name,
                "n_updates": self.models[task].n_updates,
                "validation": self.validation[task].summary(),
            }
            for task in TASKS
        }
