"""Online churn and propensity models against a batch baseline on the real UCI Online Retail data.

The UCI file (read-only, never copied) becomes events through the project's adapter
(``transforms.adapters.uci_online_retail.iter_events``) and the job's cleaning; purchase lines
are grouped into orders (one per customer and invoice), cancellations (``refund``) likewise
(:mod:`pipelines.backtest`, shared with ``segstream backtest``). Per customer, RFM-style features
at time ``t`` use only orders before ``t`` (:func:`pipelines.backtest.features_at`): recency,
tenure, order counts (all, 30 and 90 days), spend (all, 90 days), average order value, mean gap
between orders and recency over that gap (missing with a single order), refunds in 90 days.

Labels after the cutoff (default 2011-09-01T00:00Z): **propensity** = an order within 14 days after
it; **churn** = no order within 90 days after it. Every customer with an order before the cutoff is
scored with its features at the cutoff; the table reports the exact ROC AUC of each model.

* **online**: replay the orders in time order up to the cutoff; at every midnight each known
  customer's :class:`~online_models.labels.PendingLabels` takes a snapshot (propensity: one a day;
  churn: one every ``--churn-snapshot-days``, default 7, to bound the pendings of 90 days) and due
  snapshots are labelled (the event-time timer); orders label what they decide as they arrive.
  Each label is predicted (progressive validation) and then learnt, once, in order, by
  :class:`~online_models.pipelines.OnlineModel` (``--models``, default: ``logistic`` with River's
  default SGD rate 0.01, ``logistic`` with ``lr`` 0.0005, ``naive_bayes``). The progressive AUC is
  optimistic here: a purchase labels up to 14 nearly identical daily snapshots of one customer at
  once, and each is predicted after learning the previous one.
* **batch**: examples at weekly reference dates ``d`` from ``cutoff - horizon`` back to 2011-01-01
  (features at ``d``, label from ``(d, d + horizon]``), so no label reads past the cutoff; trained
  by scikit-learn's ``LogisticRegression`` (mean imputation, standard scaling; ``pip install -c
  constraints.txt -e '.[bench]'``) and by River's ``StandardScaler | LogisticRegression`` over
  ``--epochs`` shuffled passes.

Run from the repository root::

    python bench/uci_models.py
    python bench/uci_models.py --cutoff 2011-10-01 --models logistic 'logistic:{"lr": 0.002}' hoeffding_adaptive_tree
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import UTC, datetime
from pathlib import Path

from online_models import DAY_MS, OnlineModel, PendingLabels, ProgressiveValidation, roc_auc
from pipelines.backtest import (
    History,
    Row,
    features_at,
    histories,
    label_after,
    sklearn_scores,
    split_log,
    training_examples,
)
from pipelines.sources import RawRecord
from transforms.adapters.uci_online_retail import iter_events
from transforms.cleaning import Cleaner, CleaningConfig

DATA = Path("/work/shared/data/uci_online_retail.csv.gz")
HORIZON_DAYS = {"propensity": 14, "churn": 90}


def load_rows(path: Path, cutoff: int, now_ms: int) -> tuple[list[Row], int]:
    """Order and refund rows of the UCI file through the job's cleaning; the number of lines read."""
    records = (RawRecord(str(path), str(n), event) for n, event in enumerate(iter_events(path), start=1))
    log = split_log(records, Cleaner(CleaningConfig(email_salt="bench")), now_ms, cutoff)
    return log.rows, log.records


def replay_online(
    rows: list[Row],
    cutoff: int,
    model_name: str,
    churn_every_days: int,
    params: dict | None = None,
) -> tuple[dict[str, OnlineModel], dict[str, ProgressiveValidation], dict[str, int], dict[str, int]]:
    """Replay orders before ``cutoff`` with daily snapshots and delayed labels; the models at the cutoff."""
    tasks = tuple(HORIZON_DAYS)
    every = {"propensity": DAY_MS, "churn": churn_every_days * DAY_MS}
    models = {task: OnlineModel(model_name, params) for task in tasks}
    validation = {task: ProgressiveValidation() for task in tasks}
    learnt = dict.fromkeys(tasks, 0)
    peak_pending = dict.fromkeys(tasks, 0)
    seen: dict[str, History] = {}
    pending: dict[str, dict[str, PendingLabels]] = {}

    def learn(examples) -> None:
        for e in examples:
            model = models[e.task]
            validation[e.task].update(model.predict(e.features), e.label)
            model.learn(e.features, e.label)
            learnt[e.task] += 1

    i = 0
    day = rows[0][0] // DAY_MS * DAY_MS + DAY_MS
    while day <= cutoff:
        while i < len(rows) and rows[i][0] < day:  # the day's orders, in event time
            ts, user, kind, amount = rows[i]
            i += 1
            h = seen.setdefault(user, History())
            if kind == "refund":
                h.add_refund(ts, amount)
                continue
            mine = pending.setdefault(
                user, {t: PendingLabels.for_task(t, HORIZON_DAYS[t], snapshot_every_ms=every[t]) for t in tasks}
            )
            for labels in mine.values():
                learn(labels.due(ts))
                learn(labels.on_purchase(ts))
            h.add_order(ts, amount)
        for user, mine in pending.items():  # midnight: timers, then snapshots as of midnight
            features = features_at(seen[user], day)
            for task, labels in mine.items():
                learn(labels.due(day))
                if features is not None:
                    labels.take(day, features)
                peak_pending[task] = max(peak_pending[task], len(labels))
        day += DAY_MS
    return models, validation, learnt, peak_pending


def river_epochs_scores(train: list[tuple[dict, bool]], test: list[dict], epochs: int, seed: int) -> list[float]:
    model = OnlineModel("logistic")
    rng = random.Random(seed)
    order = list(train)
    for _ in range(epochs):
        rng.shuffle(order)
        for x, y in order:
            model.learn(x, y)
    return [model.predict(x) for x in test]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cutoff", default="2011-09-01", help="UTC date; labels come from after it")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["logistic", 'logistic:{"lr": 0.0005}', "naive_bayes"],
        help="online models to replay: NAME or NAME:JSON-PARAMS",
    )
    parser.add_argument("--churn-snapshot-days", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=10, help="passes of the River batch baseline")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    cutoff = int(datetime.fromisoformat(args.cutoff).replace(tzinfo=UTC).timestamp() * 1000)
    batch_start = int(datetime(2011, 1, 1, tzinfo=UTC).timestamp() * 1000)

    started = time.perf_counter()
    rows, lines = load_rows(args.data, cutoff, int(time.time() * 1000))
    by_customer = histories(rows)
    print(
        f"{lines:,} lines -> {sum(r[2] == 'order' for r in rows):,} orders, {sum(r[2] == 'refund' for r in rows):,} "
        f"refunds of {len(by_customer):,} customers ({time.perf_counter() - started:.0f} s)"
    )
    test_users = sorted(u for u, h in by_customer.items() if features_at(h, cutoff) is not None)
    test_x = [features_at(by_customer[u], cutoff) for u in test_users]
    truth = {
        task: [label_after(by_customer[u], cutoff, task, days) for u in test_users]
        for task, days in HORIZON_DAYS.items()
    }  # reads after the cutoff: test labels only
    print(
        f"cutoff {args.cutoff}: {len(test_users):,} customers scored; positive rate "
        + ", ".join(f"{t} {sum(y) / len(y):.3f}" for t, y in truth.items())
    )

    table: list[tuple[str, str, float | None, str]] = []
    for spec in args.models:
        name, _, raw = spec.partition(":")
        params = json.loads(raw) if raw else None
        started = time.perf_counter()
        models, validation, learnt, peak = replay_online(rows, cutoff, name, args.churn_snapshot_days, params)
        seconds = time.perf_counter() - started
        for task in HORIZON_DAYS:
            scores = [models[task].predict(x) for x in test_x]
            pv = validation[task].summary()
            note = (
                f"{learnt[task]:,} labels learnt, peak {peak[task]} pending, progressive AUC "
                f"{pv['roc_auc']:.3f} (last {pv['window']:,}), ECE {pv['expected_calibration_error']:.3f}; "
                f"replay {seconds:.0f} s"
            )
            label = f"online {name}" + (f" {json.dumps(params)}" if params else "")
            table.append((task, label, roc_auc(list(zip(scores, truth[task], strict=True))), note))
    for task in HORIZON_DAYS:
        train = training_examples(by_customer, cutoff, task, HORIZON_DAYS[task], batch_start)
        auc = roc_auc(list(zip(sklearn_scores(train, test_x), truth[task], strict=True)))
        table.append((task, "batch sklearn LogisticRegression", auc, f"{len(train):,} examples"))
        started = time.perf_counter()
        rv = river_epochs_scores(train, test_x, args.epochs, args.seed)
        table.append(
            (
                task,
                f"batch River LogisticRegression, {args.epochs} epochs",
                roc_auc(list(zip(rv, truth[task], strict=True))),
                f"{len(train):,} examples, {time.perf_counter() - started:.0f} s",
            )
        )
    print("\n| task | model | AUC at cutoff | notes |\n|---|---|---:|---|")
    for task, model, auc, note in sorted(table, key=lambda r: r[0], reverse=True):
        print(f"| {task} | {model} | {'n/a' if auc is None else f'{auc:.3f}'} | {note} |")


if __name__ == "__main__":
    main()
