"""The churn, propensity and lifetime-value models of the job, with their delayed labels and
progressive validation.

:class:`Models` owns one :class:`~online_models.pipelines.OnlineModel` and one
:class:`~online_models.validation.ProgressiveValidation` per classification task (``churn``,
``propensity``), and a :class:`~online_models.pipelines.SpendRegressor` with a
:class:`~online_models.validation.RegressionValidation` for ``ltv``. The per-customer state is a
``dict[task, PendingLabels | PendingSpend]`` made by :meth:`Models.new_pending`; the caller keeps it
(keyed state) and hands it back:

1. after a customer's events of one millisecond, its features updated: ``examples =
   models.observe(pending, features, event_type, now, spent)`` (a purchase labels the snapshots it
   decides, their net spend counts for the value snapshots, then a snapshot is taken, at most one
   per ``snapshot_every_ms``);
2. when the watermark passes ``models.next_due(pending)`` (an event-time timer):
   ``examples += models.expire(pending, watermark)``;
3. ``models.learn(examples)``: the examples wait, in order, until ``learn_batch`` of them are
   waiting or event time is ``learn_wait_ms`` past the first one's label (checked here and at
   :meth:`Models.score`); then each is first predicted (progressive validation), then learnt.
   :meth:`Models.flush` learns the waiting ones at once (before a model snapshot, a summary and the
   final profiles);
4. ``models.score(features, now)`` for the profile; of a customer silent since ``last_seen``,
   ``models.score_in_silence(features_at, last_seen, now)`` (churn never falls and propensity never
   rises as the silence grows; see there);
5. a silent customer: before its next event and at each revisit (a timer at
   ``models.next_revisit(last_seen, now)``), ``models.observe(pending, features_at_t, "silence", t)``
   for each ``t`` in ``models.silent_points(pending, last_seen, until)``, then at a revisit a
   snapshot now and new scores.

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
>>> models.learn(examples), models.flush()
(2, 2)
>>> sorted(models.score({"orders": 2.0, "recency_days": 0.0}, 20 * DAY))
['churn_score', 'ltv_score', 'propensity_score']
>>> models.summary()["propensity"]["validation"]["n"]
1
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from online_models.labels import DAY_MS, TASKS, Example, PendingLabels
from online_models.pipelines import DEFAULT_MODEL, OnlineModel, SpendRegressor, clean_features
from online_models.spend import LTV, PendingSpend
from online_models.validation import ProgressiveValidation, RegressionValidation

SCORE_KEYS = {"churn": "churn_score", "propensity": "propensity_score", LTV: "ltv_score"}
# As silence grows a score may only move this way: churn never falls, propensity and value never rise.
IN_SILENCE = {"churn_score": max, "propensity_score": min, "ltv_score": min}
ALL_TASKS = (*TASKS, LTV)
Pending = dict[str, PendingLabels | PendingSpend]


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """What the configuration says about the models (all optional)."""

    model: str = DEFAULT_MODEL
    params: dict[str, Any] | None = None
    churn_days: float = 90
    propensity_days: float = 14
    snapshot_every_ms: int = DAY_MS  # propensity: at most one snapshot per customer and day
    churn_snapshot_every_ms: int = 7 * DAY_MS  # churn: one a week bounds 90 days of pendings to 13
    refresh_ms: int = 0  # extra revisits this often while silent for less than churn_days (0: none)
    max_pending: int | None = None
    validation_window: int = 10_000
    calibration_bins: int = 10
    publish_every: int = 10_000  # a versioned snapshot goes to Redis after this many updates
    score_write_delta: float = 0.05  # a revisit writes the profile again when a score moved this much
    learn_batch: int = 32  # labels learnt together (1: each at once); a score may miss the waiting ones
    learn_wait_ms: int = 3_600_000  # in event time, the longest a label waits to be learnt
    ltv_days: float = 90  # lifetime value: the net spend within this long after a snapshot
    ltv_snapshot_every_ms: int = 7 * DAY_MS
    per_task_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def days(self, task: str) -> float:
        return {"churn": self.churn_days, "propensity": self.propensity_days, LTV: self.ltv_days}[task]

    @property
    def churn_horizon_ms(self) -> int:
        return round(self.churn_days * DAY_MS)

    def snapshot_every(self, task: str) -> int:
        every = {"churn": self.churn_snapshot_every_ms, LTV: self.ltv_snapshot_every_ms}
        return every.get(task, self.snapshot_every_ms)

    def __post_init__(self) -> None:
        delta = self.score_write_delta
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 <= delta <= 1:
            raise ValueError("models.score_write_delta must be a number from 0 to 1")
        for task in ALL_TASKS:
            if self.days(task) * DAY_MS < self.snapshot_every(task):
                key = {"churn": "churn_snapshot_every", LTV: "ltv_snapshot_every"}.get(task, "snapshot_every")
                raise ValueError(f"models.{task}_days must be at least models.{key}")


class Models:
    """Both tasks' models and validation (see the module docstring for the calling protocol)."""

    def __init__(self, settings: ModelSettings | None = None):
        self.settings = settings or ModelSettings()
        s = self.settings
        self.models: dict[str, OnlineModel | SpendRegressor] = {
            task: OnlineModel(s.model, s.per_task_params.get(task, s.params)) for task in TASKS
        }
        self.models[LTV] = SpendRegressor(s.per_task_params.get(LTV))
        self.validation: dict[str, ProgressiveValidation | RegressionValidation] = {
            task: ProgressiveValidation(s.validation_window, s.calibration_bins) for task in TASKS
        }
        self.validation[LTV] = RegressionValidation(s.validation_window)
        self.waiting: list[Example] = []  # labelled, not learnt yet (see learn)
        self.coverage = {task: SilenceCoverage() for task in ALL_TASKS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, also models saved before the silence coverage and the value model were kept."""
        self.__dict__.update(state)
        self.__dict__.setdefault("coverage", {task: SilenceCoverage() for task in ALL_TASKS})
        self.models.setdefault(LTV, SpendRegressor(self.settings.per_task_params.get(LTV)))
        self.validation.setdefault(LTV, RegressionValidation(self.settings.validation_window))
        self.coverage.setdefault(LTV, SilenceCoverage())

    def new_pending(self) -> Pending:
        """A new customer's empty pending labels, one per task."""
        s = self.settings
        pending: Pending = {
            task: PendingLabels.for_task(task, s.days(task), s.snapshot_every(task), s.max_pending) for task in TASKS
        }
        pending[LTV] = self._new_spend()
        return pending

    def _new_spend(self) -> PendingSpend:
        s = self.settings
        return PendingSpend(round(s.ltv_days * DAY_MS), s.ltv_snapshot_every_ms, s.max_pending)

    def _spend(self, pending: Pending) -> PendingSpend:
        """The pending values of ``pending`` (added to a customer saved before the value model)."""
        spend = pending.get(LTV)
        if not isinstance(spend, PendingSpend):
            spend = pending[LTV] = self._new_spend()
        return spend

    def score(self, features: Mapping[str, Any], now: int) -> dict[str, float]:
        """``churn_score`` and ``propensity_score`` for the features as of event time ``now``.

        ``now`` is not read by the models (the features carry recency); it is part of the call so
        that a time-aware model can be swapped in without changing callers.
        """
        return self.score_clean(clean_features(features), now)

    def score_clean(self, features: dict[str, float], now: int) -> dict[str, float]:
        """:meth:`score` of features that are finite floats already (the job's hot path). The
        labels that waited ``learn_wait_ms`` of event time by ``now`` are learnt first."""
        if self._waited(now):
            self.flush()
        return {SCORE_KEYS[task]: model.predict_clean(features) for task, model in self.models.items()}

    def score_in_silence(
        self, features_at: Callable[[int], dict[str, float]], last_seen: int, now: int
    ) -> dict[str, float]:
        """The scores of a customer silent since ``last_seen``, as of ``now``: monotone in the
        silence for every model, churn never falling and propensity never rising.

        ``features_at(t)`` gives the customer's cleaned features as of ``t`` (the same history, a
        silence of ``t - last_seen``); ``now`` is at or after ``last_seen``. The models are read at
        the silence points ``last_seen + k *`` :attr:`silence_step` for ``k`` = 0, 1, 2, 4, 8, ...;
        each point's scores are held to the earlier points' (the highest churn and lowest
        propensity so far), and between two points the scores go linearly from one held value to
        the next. So a score moves only one way as the silence grows, and is the model's own at a
        silence of 0 (a customer's event).

        Why: the models learn from labels whose horizon has passed, so no label has seen more than
        about one horizon of silence; beyond it a model extrapolates, and a linear one reading
        recencies and their logs can do so the wrong way (a customer silent for 300 days scored less
        likely to churn than one silent for 150). Holding the scores to the shorter silences keeps
        the order that the labelled range taught.

        >>> models = Models(ModelSettings(learn_batch=1))
        >>> for days in (1.0, 5.0, 10.0, 30.0, 60.0, 80.0):  # churn taught up to 80 days of silence
        ...     _ = models.learn([Example("churn", {"days_since_seen": days}, days > 20, 0, 0)])
        >>> silence = lambda t: {"days_since_seen": t / DAY_MS}
        >>> churn = [models.score_in_silence(silence, 0, d * DAY_MS)["churn_score"] for d in (0, 7, 15, 60, 300)]
        >>> churn == sorted(churn) and churn[0] < churn[-1]
        True
        """
        if self._waited(now):
            self.flush()
        for coverage in self.coverage.values():
            coverage.scored(now - last_seen)
        held: dict[str, float] | None = None
        start = last_seen
        for point in self._silence_points(last_seen):
            features = features_at(point)
            scores = {SCORE_KEYS[task]: model.predict_clean(features) for task, model in self.models.items()}
            if held is not None:
                scores = {name: IN_SILENCE[name](value, held[name]) for name, value in scores.items()}
            if point == now:
                return scores
            if point > now:  # between the last point and this one (now >= last_seen: held is set)
                share = (now - start) / (point - start)
                assert held is not None
                return {name: held[name] + (value - held[name]) * share for name, value in scores.items()}
            held, start = scores, point
        raise AssertionError("unreachable: the silence points grow without end")

    def _silence_points(self, last_seen: int) -> Iterator[int]:
        """``last_seen``, then ``last_seen + k * silence_step`` for ``k`` = 1, 2, 4, 8, ..."""
        yield last_seen
        step = self.silence_step
        while True:
            yield last_seen + step
            step *= 2

    def observe(
        self,
        pending: Pending,
        features: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        event_type: str,
        now: int,
        spent: float = 0.0,
    ) -> list[Example]:
        """One event of the customer at event time ``now``: label what a purchase decides (``spent``:
        the net spend of the events at ``now``, for the value model), then snapshot.

        ``features`` may be a function: it is called only when a snapshot is taken.
        """
        examples: list[Example] = []
        clean: dict[str, float] | None = None
        spend = self._spend(pending)
        spend.on_spend(now, spent)
        for task in ALL_TASKS:
            labels = pending[task]
            if event_type == "purchase" and isinstance(labels, PendingLabels):
                examples.extend(labels.on_purchase(now))
            if labels.wants(now):
                if clean is None:
                    clean = clean_features(features() if callable(features) else features)
                labels.take(now, clean)
        return examples

    def expire(self, pending: Pending, watermark: int) -> list[Example]:
        """Label the snapshots whose horizon ended before ``watermark`` (call from the timer)."""
        self._spend(pending)
        return [example for task in ALL_TASKS for example in pending[task].due(watermark)]

    def next_due(self, pending: Pending) -> int | None:
        """When to fire the customer's timer next (event time), or None."""
        times = [t for t in (pending[task].next_due() for task in pending) if t is not None]
        return min(times) if times else None

    @cached_property  # read for every event of every customer
    def silence_step(self) -> int:
        """The silence between two snapshots of a silent customer: the propensity horizon + 1 ms (a
        snapshot falls due exactly when the next one is taken)."""
        return round(self.settings.propensity_days * DAY_MS) + 1

    def silent_points(self, pending: Pending, last_seen: int, until: int) -> range:
        """Where a customer silent since ``last_seen`` is snapshotted, up to ``until``: every
        :attr:`silence_step` of silence, from the first point in a later snapshot bucket than the
        last propensity snapshot (the points already taken are skipped).

        >>> DAY = 86_400_000
        >>> models = Models(ModelSettings(propensity_days=14))
        >>> pending = models.new_pending()
        >>> [(t - 1) // DAY for t in models.silent_points(pending, 0, 45 * DAY)]
        [14, 28, 42]
        >>> _ = models.observe(pending, {"x": 1.0}, "refresh", 28 * DAY + 2)
        >>> [(t - 1) // DAY for t in models.silent_points(pending, 0, 45 * DAY)]
        [42]
        """
        step = self.silence_step
        first = last_seen + step
        if first > until:  # the common case: not silent for a step
            return range(0)
        taken = pending["propensity"]
        if taken.last_bucket is not None:
            later = (taken.last_bucket + 1) * taken.snapshot_every_ms  # the first time in a later bucket
            if later > first:
                first = last_seen + -(-(later - last_seen) // step) * step
        return range(first, until + 1, step)

    def next_revisit(self, last_seen: int, now: int) -> int:
        """When a customer silent since ``last_seen`` is next revisited after ``now`` (its silent
        snapshots taken, its scores recomputed): after 1, 2, 4, 8, ... :attr:`silence_step` of
        silence; also at every ``refresh_ms`` boundary while the silence is shorter than
        ``churn_days``.

        >>> DAY = 86_400_000
        >>> models = Models(ModelSettings(propensity_days=14))
        >>> [(models.next_revisit(0, now) - 1) // DAY for now in (0, 14 * DAY + 1, 20 * DAY, 40 * DAY)]
        [14, 28, 28, 56]
        """
        s = self.settings
        step = self.silence_step
        revisit = last_seen + step
        while revisit <= now:
            step *= 2
            revisit = last_seen + step
        if s.refresh_ms and now < last_seen + s.churn_horizon_ms:
            revisit = min(revisit, (now // s.refresh_ms + 1) * s.refresh_ms)
        return revisit

    def merge(self, pending: Pending, absorbed: Pending) -> list[Example]:
        """Identity merge: move ``absorbed``'s pendings into ``pending``; returns the labels it decides."""
        self._spend(pending)
        self._spend(absorbed)
        return [example for task in ALL_TASKS for example in pending[task].merge(absorbed[task])]  # type: ignore[arg-type]

    def learn(self, examples: Iterable[Example]) -> int:
        """Take labelled examples to learn, in order: they wait until ``learn_batch`` are waiting or
        the latest label is ``learn_wait_ms`` after the first waiting one. Returns how many it took.

        Learning a run of labels together keeps the model's code and data in the CPU's caches; the
        model, and every prediction validation records, are the same as learning each at once.
        """
        waiting = self.waiting
        before = len(waiting)
        waiting.extend(examples)
        taken = len(waiting) - before
        if len(waiting) >= self.settings.learn_batch or (taken and self._waited(waiting[-1].label_ts)):
            self.flush()
        return taken

    def _waited(self, now: int) -> bool:
        """Whether the first waiting example has waited ``learn_wait_ms`` of event time by ``now``."""
        return bool(self.waiting) and now - self.waiting[0].label_ts >= self.settings.learn_wait_ms

    def flush(self) -> int:
        """Learn the waiting examples in order: each is first predicted (recorded in progressive
        validation), then learnt. Returns how many."""
        waiting, self.waiting = self.waiting, []
        for example in waiting:
            model, features = self.models[example.task], clean_features(example.features)
            self.validation[example.task].update(model.predict_clean(features), example.label)
            model.learn_clean(features, example.label)
            self.coverage[example.task].learnt(features)
        return len(waiting)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per task: model name, updates and the progressive-validation figures (the waiting
        examples are learnt first)."""
        self.flush()
        return {
            task: {
                "model": self.models[task].name,
                "n_updates": self.models[task].n_updates,
                "validation": self.validation[task].summary(),
                "silence": self.coverage[task].summary(),
            }
            for task in ALL_TASKS
        }


@dataclass(slots=True)
class SilenceCoverage:
    """Progressive validation's blind spot: it sees only snapshots whose label horizon has passed,
    so no more silence than the labels covered. This counts the scores computed at a longer silence
    than any learnt example had (``days_since_seen``), where the models extrapolate
    (:meth:`Models.score_in_silence` holds them to the covered range).

    >>> coverage = SilenceCoverage()
    >>> coverage.learnt({"days_since_seen": 30.0}); coverage.scored(10 * DAY_MS); coverage.scored(45 * DAY_MS)
    >>> coverage.summary()
    {'covered_days': 30.0, 'scored': 2, 'scored_beyond': 1}
    """

    covered_ms: float = 0.0  # the longest silence a learnt example had
    scored_count: int = 0
    beyond: int = 0

    def learnt(self, features: Mapping[str, float]) -> None:
        silence = features.get("days_since_seen")
        if silence is not None and silence * DAY_MS > self.covered_ms:
            self.covered_ms = silence * DAY_MS

    def scored(self, silence_ms: int) -> None:
        self.scored_count += 1
        if silence_ms > self.covered_ms:
            self.beyond += 1

    def summary(self) -> dict[str, Any]:
        return {
            "covered_days": round(self.covered_ms / DAY_MS, 2),
            "scored": self.scored_count,
            "scored_beyond": self.beyond,
        }
