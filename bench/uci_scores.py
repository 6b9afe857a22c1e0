"""The job's own churn and propensity scores on the real UCI Online Retail file, against batch models.

The UCI file (read-only, never copied) becomes events with the project's adapter; the events before
``--cutoff`` go through the real job (``segstream run --engine core --as-of CUTOFF``; ``--engine``
picks another), with the models off (the baseline) and on. The profiles at the cutoff
carry ``churn_score`` and ``propensity_score``. Every customer with an order before the cutoff is
labelled from the orders after it (propensity: an order within 14 days; churn: none within 90 days)
and the exact ROC AUC of the job's scores is printed beside batch models trained on the period
before the cutoff with the labels known by then (weekly reference dates, :mod:`bench.uci_models`):
scikit-learn's logistic regression and gradient boosting when scikit-learn is installed (``pip
install -e '.[bench]'``), and River's logistic regression over shuffled epochs. The job's events
per second with the models on and off close the report: ``--repeat`` pairs of runs, off then on
(``--together``: the two runs of a pair at the same time, one per core); the fastest run of each
and their ratio, then the ratio of each pair and their median.

Run from the repository root::

    python bench/uci_scores.py
    python bench/uci_scores.py --cutoff 2011-10-01 --work-dir /tmp/uci-scores
    python bench/uci_scores.py --repeat 5 --together
    python bench/uci_scores.py --engine flink     # the same on local Flink
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from timing import on_off, run_job
from uci_models import (
    DATA,
    HORIZON_DAYS,
    batch_examples,
    features_at,
    full_histories,
    label_after,
    load_orders,
    river_epochs_scores,
    sklearn_scores,
)

from online_models import DAY_MS, roc_auc
from transforms.adapters.uci_online_retail import iter_events
from transforms.dead_letters import Rejection
from transforms.timestamps import parse_event_time


def write_events_before(path: Path, out: Path, cutoff: int) -> int:
    """The adapter's events before ``cutoff`` (and dirty ones, which the job dead-letters) to ``out``."""
    n = 0
    with out.open("w", encoding="utf-8") as handle:
        for event in iter_events(path):
            try:
                if parse_event_time(event["ts"]) >= cutoff:
                    continue
            except (Rejection, KeyError):
                pass
            handle.write(json.dumps(event) + "\n")
            n += 1
    return n


def auc_of(scores: list[float], labels: list[bool]) -> float | None:
    return roc_auc(list(zip(scores, labels, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cutoff", default="2011-09-01", help="UTC date; labels come from after it")
    parser.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--models-yaml", default="", help="extra lines under models: (e.g. '  name: naive_bayes')")
    parser.add_argument("--epochs", type=int, default=5, help="River batch baseline: shuffled passes")
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs, models off then on")
    parser.add_argument("--together", action="store_true", help="the two runs of a pair at the same time")
    parser.add_argument("--engine", default="core", choices=("core", "beam", "flink"), help="the job's engine")
    args = parser.parse_args()
    cutoff = int(datetime.fromisoformat(args.cutoff).replace(tzinfo=UTC).timestamp() * 1000)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="uci-scores-"))
    work.mkdir(parents=True, exist_ok=True)
    source = work / "before_cutoff.jsonl"
    lines = write_events_before(args.data, source, cutoff)
    profiles: dict[str, dict] = {}

    def job(models: bool) -> dict:
        summary, by_customer = run_job(source, work, models, args.models_yaml, as_of=cutoff, engine=args.engine)
        if models:
            profiles.update(by_customer)
        return summary

    runs = on_off(args.repeat, args.together, job)
    on = runs.fastest(True)
    rows, _ = load_orders(args.data)
    histories = full_histories(rows)
    customers = sorted(u for u, h in histories.items() if h.ts and h.ts[0] < cutoff)
    print(f"UCI Online Retail, cutoff {args.cutoff}: {lines:,} lines before it, {len(customers):,} customers")
    print(f"with an order before it (work dir {work})\n")
    print("| model | propensity AUC | churn AUC |\n|---|---:|---:|")
    table: dict[str, dict[str, float | None]] = {}
    missing = sum(1 for u in customers if f"user:{u}" not in profiles)
    for task in HORIZON_DAYS:
        labels = [label_after(histories[u], cutoff, task) for u in customers]
        job = [(profiles[f"user:{u}"][f"{task}_score"], y) for u, y in zip(customers, labels, strict=True)
               if f"user:{u}" in profiles]  # fmt: skip
        table.setdefault("segstream job (online, in the stream)", {})[task] = roc_auc(job)
        train = batch_examples(histories, cutoff, task, cutoff - 240 * DAY_MS)
        test_x = [features_at(histories[u], cutoff) for u in customers]
        for kind in ("logistic", "gradient_boosting"):
            scores = sklearn_scores(train, test_x, kind)
            name = f"batch scikit-learn {kind.replace('_', ' ')}"
            table.setdefault(name, {})[task] = (
                None if scores is None else roc_auc(list(zip(scores, labels, strict=True)))
            )
        river = river_epochs_scores(train, test_x, args.epochs, seed=1)
        table.setdefault(f"batch River logistic, {args.epochs} epochs", {})[task] = roc_auc(
            list(zip(river, labels, strict=True))
        )
    for name, aucs in table.items():
        cells = " | ".join("n/a (no scikit-learn)" if aucs[t] is None else f"{aucs[t]:.3f}" for t in HORIZON_DAYS)
        print(f"| {name} | {cells} |")
    if missing:
        print(f"\n{missing} customers with an order had no profile (their lines were dead letters)")
    print(f"\n{runs.report(args.engine)}")
    for task, figures in (on.get("models") or {}).items():
        v = figures["validation"]
        auc = "n/a" if v["roc_auc"] is None else f"{v['roc_auc']:.3f}"
        print(f"progressive validation {task}: {figures['n_updates']:,} updates, AUC {auc} (last {v['window']:,})")


if __name__ == "__main__":
    main()
