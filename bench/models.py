"""Cost of the online models: microseconds per update (learn) and per prediction, per model.

Feature dicts shaped like the job's (about 20 floats: windows, RFM, engagement, recency, with a few
missing values) are generated with a fixed seed; labels follow a noisy recency rule. For every model
the bench times, best of ``--repeat`` runs over ``--examples`` examples:

* the baseline: copying each feature dict (``dict(x)``), the least any per-event step does;
* ``predict``: :meth:`OnlineModel.predict` on a model trained on the examples first (untimed);
* ``predict_clean``: the job's path, on features cleaned beforehand (untimed); for the default
  ``logistic`` model it reads River's weights directly instead of going through the pipeline;
* ``learn``: :meth:`OnlineModel.learn` from scratch over the examples;
* ``predict + learn``: what progressive validation does per label (``Models.learn``);
* ``snapshot``: one ``dump_model`` of the trained model (ms, and its size).

Printed: microseconds per call and the ratio to the baseline measured in the same process.

Run from the repository root (the package installed, e.g. ``pip install -e .``)::

    python bench/models.py                       # logistic and hoeffding_adaptive_tree, 20,000 examples
    python bench/models.py --models logistic naive_bayes adaptive_random_forest --examples 5000
"""

from __future__ import annotations

import argparse
import random
import time

from timing import best_seconds

from online_models import OnlineModel, clean_features, dump_model
from online_models.validation import ProgressiveValidation

FEATURES = [
    "events_1h",
    "events_24h",
    "events_7d",
    "events_30d",
    "page_views_7d",
    "product_views_7d",
    "add_to_cart_7d",
    "sessions_7d",
    "engagement_score",
    "recency_days",
    "frequency_30d",
    "frequency_90d",
    "frequency_365d",
    "monetary_30d",
    "monetary_90d",
    "monetary_365d",
    "avg_order_value",
    "tenure_days",
    "refunds_90d",
    "days_since_last_session",
]


def examples(n: int, seed: int) -> list[tuple[dict[str, float | None], bool]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x: dict[str, float | None] = {name: rng.expovariate(0.2) for name in FEATURES}
        recency = x["recency_days"] = rng.uniform(0, 120)
        for name in rng.sample(FEATURES, 2):
            x[name] = None  # what the caller could not compute
        y = rng.random() < (0.7 if recency < 20 else 0.15)
        rows.append((x, y))
    return rows


def bench_model(name: str, rows: list[tuple[dict, bool]], repeat: int, base: float) -> list[tuple[str, float]]:
    n = len(rows)
    trained = OnlineModel(name)
    for x, y in rows:
        trained.learn(x, y)

    def predict() -> None:
        for x, _ in rows:
            trained.predict(x)

    cleaned = [clean_features(x) for x, _ in rows]

    def predict_clean() -> None:
        for x in cleaned:
            trained.predict_clean(x)

    def learn() -> None:
        model = OnlineModel(name)
        for x, y in rows:
            model.learn(x, y)

    def predict_learn() -> None:
        model = OnlineModel(name)
        validation = ProgressiveValidation()
        for x, y in rows:
            validation.update(model.predict(x), y)
            model.learn(x, y)

    results = [
        ("predict", best_seconds(repeat, predict) / n),
        ("predict_clean (the job's path)", best_seconds(repeat, predict_clean) / n),
        ("learn", best_seconds(repeat, learn) / n),
        ("predict + learn + validation", best_seconds(repeat, predict_learn) / n),
    ]
    started = time.perf_counter()
    blob = dump_model(trained, mac_key=b"bench-key-not-a-secret")
    dumped = time.perf_counter() - started
    print(f"\n**{name}** (snapshot: {len(blob):,} bytes in {dumped * 1e3:.1f} ms)")
    print("| call | µs per call | vs baseline |\n|---|---:|---:|")
    print(f"| baseline: dict(x) | {base * 1e6:.2f} | 1.00x |")
    for label, seconds in results:
        print(f"| {label} | {seconds * 1e6:.2f} | {seconds / base:.0f}x |")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000, help="examples per timed run")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--models", nargs="+", default=["logistic", "hoeffding_adaptive_tree"])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rows = examples(args.examples, args.seed)

    def baseline() -> None:
        for x, _ in rows:
            dict(x)

    base = best_seconds(args.repeat, baseline) / len(rows)
    print(f"{len(rows):,} examples of {len(FEATURES)} features (2 missing each), best of {args.repeat}")
    for name in args.models:
        bench_model(name, rows, args.repeat, base)


if __name__ == "__main__":
    main()
