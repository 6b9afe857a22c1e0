"""The job's own churn and propensity scores on the real UCI Online Retail file, against batch models.

The UCI file (read-only, never copied) becomes events with the project's adapter; the events before
``--cutoff`` go through the real job (``segstream run --engine core --as-of CUTOFF``; ``--engine``
picks another), with the models off (the baseline) and on. The profiles at the cutoff
carry ``churn_score``, ``propensity_score`` and ``ltv_score``. Every customer with an order before
the cutoff is labelled from the orders after it (propensity: an order within 14 days; churn: none
within 90 days; lifetime value: net spend within 90 days) and the job's scores are printed beside
the baselines of ``segstream backtest`` (:mod:`pipelines.backtest`: scikit-learn's logistic
regression and gradient boosting on weekly RFM examples before the cutoff, BG/NBD and Gamma-Gamma;
``pip install -c constraints.txt -e '.[backtest]'``) and River's logistic regression over shuffled
epochs. The job's events per second with the models on and off close the report: ``--repeat``
pairs of runs, off then on (``--together``: the two runs of a pair at the same time, one per core);
the fastest run of each and their ratio, then the ratio of each pair and their median.

Run from the repository root::

    python bench/uci_scores.py
    python bench/uci_scores.py --cutoff 2011-10-01 --work-dir /tmp/uci-scores
    python bench/uci_scores.py --repeat 5 --together
    python bench/uci_scores.py --engine flink     # the same on local Flink
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from timing import on_off, run_job
from uci_models import DATA, HORIZON_DAYS, river_epochs_scores

from online_models import DAY_MS
from pipelines.backtest import (
    Horizons,
    Scores,
    btyd_baselines,
    features_at,
    histories,
    labelled,
    report,
    rfm_baselines,
    split_log,
    stream_scores,
    training_examples,
)
from pipelines.sources import RawRecord
from transforms.adapters.uci_online_retail import iter_events
from transforms.cleaning import Cleaner, CleaningConfig


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
    records = (RawRecord(str(args.data), str(n), event) for n, event in enumerate(iter_events(args.data), start=1))
    with source.open("wb") as out:
        log = split_log(records, Cleaner(CleaningConfig(email_salt="bench")), int(time.time() * 1000), cutoff, out)
    profiles: dict[str, dict] = {}

    def job(models: bool) -> dict:
        summary, by_id = run_job(source, work, models, args.models_yaml, as_of=cutoff, engine=args.engine)
        if models:
            profiles.update(by_id)
        return summary

    runs = on_off(args.repeat, args.together, job)
    on = runs.fastest(True)
    by_customer = histories(log.rows)
    horizons = Horizons(**HORIZON_DAYS, ltv=90)  # the packaged configuration's
    truth = labelled(by_customer, cutoff, horizons, profiles)
    missing = sum(1 for c, h in by_customer.items() if h.ts and h.ts[0] < cutoff and c not in profiles)
    print(f"UCI Online Retail, cutoff {args.cutoff}: {log.before:,} lines before it, {len(truth.customers):,}")
    print(f"customers with an order before it and a profile (work dir {work})\n")
    rows = stream_scores(profiles, truth.customers, "segstream job (online, in the stream)")
    rows += rfm_baselines(by_customer, truth.customers, cutoff, horizons, train_days=240)
    test_x = [features_at(by_customer[c], cutoff) for c in truth.customers]
    for task, days in HORIZON_DAYS.items():
        train = training_examples(by_customer, cutoff, task, days, cutoff - 240 * DAY_MS)
        river = river_epochs_scores(train, test_x, args.epochs, seed=1)
        rows.append(Scores(task, f"batch River logistic, {args.epochs} epochs", river))
    rows += btyd_baselines(by_customer, truth.customers, cutoff, horizons)
    print(report(truth, rows, horizons))
    if missing:
        print(f"\n{missing} customers with an order had no profile (their lines were dead letters)")
    print(f"\n{runs.report(args.engine)}")
    for task, figures in (on.get("models") or {}).items():
        v = figures["validation"]
        if "roc_auc" in v:
            quality = "AUC n/a" if v["roc_auc"] is None else f"AUC {v['roc_auc']:.3f}"
        else:  # the lifetime value's regression
            quality = f"mean absolute error {v['mean_absolute_error']:,.2f}"
        print(f"progressive validation {task}: {figures['n_updates']:,} updates, {quality} (last {v['window']:,})")


if __name__ == "__main__":
    main()
