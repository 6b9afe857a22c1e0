"""The flat features the churn and propensity models read, from a customer's profile at a time.

Recency (days since the last purchase, the last event, the first event), lifetime counts and
money (the raw RFM values: RFM ranks are left out, they follow the worker's processing order), the
longest configured window's activity and the engagement score, with the logs of the heavy-tailed
ones (``log.orders``, ``log.days_since_purchase``, ...) beside them. Values
the customer does not have yet (no purchase: no purchase recency, no average order) are left out,
which the models read as "no information" (:func:`online_models.clean_features`).

>>> from transforms.events import Event
>>> from transforms.profile import ProfileConfig, ProfileModel, ProfileState
>>> model, state = ProfileModel(ProfileConfig()), ProfileState()
>>> model.add(state, Event("e1", "purchase", 0, user_id="u", order_id="o", amount=30.0, currency="EUR"))
>>> features = model_features(model, state, 2 * DAY)
>>> features["days_since_purchase"], features["orders"], features["avg_order_value"]
(2.0, 1.0, 30.0)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from online_models import DAY_MS as DAY

if TYPE_CHECKING:
    from transforms.profile import ProfileModel, ProfileState

WINDOW_METRICS = ("events", "sessions", "orders", "spend")
LOG_SCALED = ("orders", "spend", "avg_order_value", "days_since_purchase", "days_since_seen", "days_per_order")
# (what is read, the feature's name): the names are made once, not for every snapshot
_COUNTS = tuple((kind, f"count.{kind}") for kind in ("product_view", "add_to_cart", "page_view"))
_LOGS = tuple((name, f"log.{name}") for name in LOG_SCALED)
_WINDOWS = tuple((metric, f"window.{metric}") for metric in WINDOW_METRICS)


def model_features(model: ProfileModel, state: ProfileState, now: int) -> dict[str, float]:
    """The model inputs of one customer as of event time ``now`` (epoch ms)."""
    f = state.features
    features: dict[str, float] = {
        "orders": float(f.orders),
        "spend": f.spend,
        "refunds": float(f.refunds),
        "cart_value": f.cart_value,
        "engagement_score": model.engagement.score(state.points, now),
    }
    counts = f.counts
    for kind, name in _COUNTS:
        features[name] = float(counts.get(kind, 0))
    if f.last_seen is not None and f.first_seen is not None:
        features["days_since_seen"] = max(0.0, (now - f.last_seen) / DAY)
        features["tenure_days"] = max(0.0, (now - f.first_seen) / DAY)
    last_purchase = f.last_at.get("purchase")
    if last_purchase is not None:
        features["days_since_purchase"] = max(0.0, (now - last_purchase) / DAY)
    if f.orders:
        features["avg_order_value"] = f.spend / f.orders
        if "tenure_days" in features:  # the customer's own rhythm: recency against it predicts churn
            days_per_order = max(1.0, features["tenure_days"] / f.orders)
            features["days_per_order"] = days_per_order
            if last_purchase is not None:
                features["purchase_recency_ratio"] = features["days_since_purchase"] / days_per_order
    for name, log_name in _LOGS:  # heavy tails: the logistic model reads their logs beside them
        value = features.get(name)
        if value is not None:
            features[log_name] = math.log1p(value if value > 0.0 else 0.0)
    windows = model.windows
    if windows.widest is not None:
        for metric, name in _WINDOWS:
            features[name] = float(windows.value(state.activity, windows.widest, metric, now))
    return features
