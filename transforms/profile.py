"""Everything the rules can read about a customer, by name, at an event time.

Names (``kind``: time features are epoch ms, the rest numbers):

- lifetime: ``count.<type>``, ``spend``, ``orders``, ``refunds``, ``cart_value``; times ``first_seen``,
  ``last_seen``, ``last.<type>`` (see :mod:`transforms.features`);
- windows: ``window.<name>.<metric>`` (see :mod:`transforms.windows`);
- ``engagement_score`` (see :mod:`transforms.engagement`);
- RFM: ``rfm.recency``, ``rfm.frequency``, ``rfm.monetary`` (quintile scores 1..5 against the
  current population of buyers, 0 before a first purchase; see :mod:`transforms.rfm`);
- model scores (with the models on): ``churn_score``, ``propensity_score`` (probabilities 0..1 of
  the online models in :mod:`online_models`, computed when read) and ``ltv_score`` (the expected
  net spend within ``models.ltv_days``); as a customer's silence grows churn never falls and
  propensity and value never rise: :meth:`online_models.Models.score_in_silence`.

>>> from transforms.windows import WindowSpec
>>> model = ProfileModel(ProfileConfig(windows=(WindowSpec("1d", 86_400_000, 3_600_000),)))
>>> model.kind("window.1d.sessions"), model.kind("last.purchase")
('number', 'time')
>>> model.kind("window.7d.sessions")
Traceback (most recent call last):
ValueError: unknown window '7d' in 'window.7d.sessions' (configured: 1d)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transforms.engagement import EngagementConfig, EngagementModel, Points
from transforms.events import Event
from transforms.features import NUMERIC_FEATURES, TIME_FEATURES, Features
from transforms.model_features import model_features
from transforms.rfm import RFM_FEATURES, Population, RfmKey
from transforms.windows import METRICS, Activity, WindowSet, WindowSpec

if TYPE_CHECKING:
    from online_models import Models

DAY = 86_400_000
SCORE_FEATURES = ("churn_score", "propensity_score", "ltv_score")
ONLY_FALL = METRICS - {"spend", "session_minutes"}  # window metrics that never rise without an event
_MISSING = object()
DEFAULT_WINDOWS = (
    WindowSpec("1h", 3_600_000, 300_000),
    WindowSpec("24h", DAY, 3_600_000),
    WindowSpec("7d", 7 * DAY, DAY),
    WindowSpec("30d", 30 * DAY, DAY),
)


@dataclass(frozen=True)
class ProfileConfig:
    windows: tuple[WindowSpec, ...] = DEFAULT_WINDOWS
    session_gap_ms: int = 30 * 60_000
    engagement: EngagementConfig = field(default_factory=EngagementConfig)
    rfm_refresh_ms: int = DAY  # RFM-based segments are evaluated again at least this often
    scores: bool = False  # the models are on: rules may read churn_score and propensity_score


@dataclass(slots=True)
class ProfileState:
    """A customer's features: lifetime, windowed, engagement points and RFM population keys."""

    features: Features = field(default_factory=Features)
    activity: Activity = field(default_factory=Activity)
    points: Points = field(default_factory=Points)
    rfm: RfmKey | None = None  # this customer's place in the population, once a buyer


class ProfileModel:
    """Behaviour over :class:`ProfileState`: fold events in, read features, render the profile."""

    def __init__(
        self, config: ProfileConfig, population: Population | None = None, models: Models | None = None
    ) -> None:
        self.config = config
        self.models = models
        self.windows = WindowSet(config.windows, config.session_gap_ms)
        self.engagement = EngagementModel(config.engagement)
        self.population = population if population is not None else Population()
        self._parsed: dict[str, tuple[str, str, str, bool]] = {}

    def kind(self, name: str) -> str:
        """``"time"`` or ``"number"``; ValueError naming the problem for an unknown feature."""
        if name in TIME_FEATURES:
            return "time"
        if name in NUMERIC_FEATURES or name in RFM_FEATURES or name == "engagement_score":
            return "number"
        if name in SCORE_FEATURES:
            if not self.config.scores:
                raise ValueError(f"{name!r} needs the models: set models.enabled to true")
            return "number"
        head, _, rest = name.partition(".")
        if head == "window":
            window, _, metric = rest.partition(".")
            if window not in self.windows.specs:
                known = ", ".join(self.windows.specs) or "none"
                raise ValueError(f"unknown window {window!r} in {name!r} (configured: {known})")
            if metric not in METRICS:
                raise ValueError(f"unknown window metric {metric!r} in {name!r} (known: {', '.join(sorted(METRICS))})")
            return "number"
        raise ValueError(f"unknown feature {name!r}")

    def parse(self, name: str) -> tuple[str, str, str, bool]:
        """``(head, window, metric, only_falls)`` of a feature name, parsed once."""
        parsed = self._parsed.get(name)
        if parsed is None:
            head, _, rest = name.partition(".")
            if head == "window":
                window, _, metric = rest.partition(".")
                parsed = (head, window, metric, metric in ONLY_FALL)
            elif head == "rfm":
                parsed = (head, "", rest, False)
            elif name in SCORE_FEATURES:
                parsed = ("score", "", name, False)
            else:
                parsed = (name if name == "engagement_score" else "lifetime", "", "", name == "engagement_score")
            self._parsed[name] = parsed
        return parsed

    def touches(self, kind: str, name: str) -> bool:
        """Whether applying an event of type ``kind`` may change feature ``name`` (else a rule that
        reads only untouched features need not be evaluated again for that event)."""
        head, _, rest = name.partition(".")
        if head in ("count", "last"):
            return rest == kind
        if name in ("spend", "orders", "refunds"):
            return kind in ("purchase", "refund")
        if name == "cart_value":
            return kind in ("add_to_cart", "remove_from_cart", "purchase")
        if name == "engagement_score":
            return self.config.engagement.weights.get(kind, 0.0) > 0.0
        if head == "window":
            metric = rest.partition(".")[2]
            if metric.startswith("count."):
                return metric == f"count.{kind}"
            if metric in ("spend", "orders"):
                return kind in ("purchase", "refund")
            if metric == "cart_value":
                return kind == "add_to_cart"
        return True  # first_seen, last_seen, other window metrics; RFM ranks move with the population

    def add(self, state: ProfileState, event: Event) -> None:
        state.features.add(event)
        self.windows.add(state.activity, event)
        self.engagement.add(state.points, event.type, event.ts)
        if event.type in ("purchase", "refund"):
            state.rfm = self.population.move(state.rfm, state.features)

    def merge(self, into: ProfileState, other: ProfileState) -> ProfileState:
        """Fold ``other`` (an absorbed customer's profile) into ``into``: the result equals one
        profile fed both customers' events; ``other`` leaves the RFM population."""
        self.population.move(other.rfm, Features())
        other.rfm = None
        into.features.merge(other.features)
        self.windows.merge(into.activity, other.activity)
        self.engagement.merge(into.points, other.points)
        into.rfm = self.population.move(into.rfm, into.features)
        return into

    def next_score_refresh(self, state: ProfileState, now: int) -> int | None:
        """When the scores are next recomputed with no new event: the customer's next revisit
        (:meth:`online_models.Models.next_revisit`; None with the models off or no event yet)."""
        last = state.features.last_seen
        if self.models is None or last is None:
            return None
        return self.models.next_revisit(last, now)

    def view(self, state: ProfileState, now: int) -> FeatureView:
        return FeatureView(self, state, now)

    def prune(self, state: ProfileState, horizon: int) -> None:
        self.windows.prune(state.activity, horizon)

    def scores(
        self, state: ProfileState, now: int, features: dict[str, float] | None = None
    ) -> dict[str, float | None]:
        """``churn_score`` and ``propensity_score`` as of ``now`` (None with the models off or before
        the customer's first event), monotone in the customer's silence
        (:meth:`online_models.Models.score_in_silence`); ``features``: its :func:`model_features`
        at ``now``, if known."""
        last = state.features.last_seen
        if self.models is None or last is None:
            return dict.fromkeys(SCORE_FEATURES)

        def features_at(t: int) -> dict[str, float]:
            return features if features is not None and t == now else model_features(self, state, t)

        scores = self.models.score_in_silence(features_at, last, max(now, last))
        return {name: round(value, 2 if name == "ltv_score" else 6) for name, value in scores.items()}

    def render(
        self, state: ProfileState, now: int | None, scores: dict[str, float | None] | None = None
    ) -> dict[str, Any]:
        """The readable part of a profile (Redis and ``--profiles-out``); ``scores``: :meth:`scores`
        as of ``now``, if known."""
        at = now if now is not None else 0
        return {
            "features": state.features.to_dict(),
            "windows": {name: self.windows.result(state.activity, name, at) for name in self.windows.specs},
            "engagement_score": round(self.engagement.score(state.points, at), 2),
            "rfm": self.population.scores(state.rfm),
            **(self.scores(state, at) if scores is None else scores),
        }


class FeatureView:
    """Feature values of one customer at ``now``, each computed once per view."""

    __slots__ = ("_cache", "model", "now", "state")

    def __init__(self, model: ProfileModel, state: ProfileState, now: int) -> None:
        self.model, self.state, self.now = model, state, now
        self._cache: dict[str, float] = {}

    def value(self, name: str) -> float | int | None:
        cached = self._cache.get(name, _MISSING)
        if cached is _MISSING:
            cached = self._cache[name] = self._compute(name)
        return cached  # type: ignore[return-value]

    def _compute(self, name: str) -> float | int | None:
        head, window, metric, _ = self.model.parse(name)
        if head == "window":
            return self.model.windows.value(self.state.activity, window, metric, self.now)
        if head == "engagement_score":
            return self.model.engagement.score(self.state.points, self.now)
        if head == "rfm":
            return self.model.population.scores(self.state.rfm)[metric]
        if head == "score":
            if "scores" not in self._cache:
                self._cache["scores"] = self.model.scores(self.state, self.now)  # type: ignore[assignment]
            return self._cache["scores"][name]  # type: ignore[index]
        return self.state.features.value(name)

    def next_change(self, name: str, op: str, threshold: float, holds: bool) -> int | None:
        """When ``name op threshold`` (now ``holds``) may next flip with no new event (None: never)."""
        head, window, _, only_falls = self.model.parse(name)
        if head == "rfm":  # ranks move with the population: look again at the next refresh boundary
            refresh = self.model.config.rfm_refresh_ms
            return (self.now // refresh + 1) * refresh if self.state.rfm is not None else None
        if head == "score":  # scores move with time and the models: look again at the next refresh
            return self.model.next_score_refresh(self.state, self.now)
        if head not in ("window", "engagement_score"):
            return None
        # With no new event these only fall: "> x" can only flip while it holds, "< x" while it does not.
        if only_falls and ((op in (">", ">=") and not holds) or (op in ("<", "<=") and holds)):
            return None
        if head == "engagement_score":
            return self.model.engagement.falls_below(self.state.points, threshold, self.now)
        key = "next:" + window
        cached = self._cache.get(key, _MISSING)
        if cached is _MISSING:
            cached = self._cache[key] = self.model.windows.next_change(self.state.activity, self.now, window)
        return cached  # type: ignore[return-value]
