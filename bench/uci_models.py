"""Online churn and propensity models against a batch baseline on the real UCI Online Retail data.

The UCI file (read-only, never copied) becomes events through the project's adapter
(``transforms.adapters.uci_online_retail.iter_events``); purchase lines with a customer, a valid
time and a positive amount are grouped into orders (one per invoice), cancellations (``refund``)
are counted. Per customer, RFM-style features at time ``t`` use only orders before ``t``: recency,
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
* **batch**: examples at weekly reference dates ``d`` from 2011-01-01 with ``d + horizon <=
  cutoff`` (features at ``d``, label from ``(d, d + horizon]``), so no label reads past the cutoff;
  trained by scikit-learn's ``LogisticRegression`` (mean imputation, standard scaling) when
  scikit-learn is importable (it is *not* a project dependency: ``pip install scikit-learn`` into
  the venv to get this row), and always by River's ``StandardScaler | LogisticRegression`` over
  ``--epochs`` shuffled passes.

Run from the repository root::

    python bench/uci_models.py
    python bench/uci_models.py --cutoff 2011-10-01 --models logistic 'logistic:{"lr": 0.002}' hoeffding_adaptive_tree
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from online_models import DAY_MS, OnlineModel, PendingLabels, ProgressiveValidation, roc_auc
from transforms.adapters.uci_online_retail import iter_events
from transforms.dead_letters import Rejection
from transforms.timestamps import parse_event_time

DATA = Path("/work/shared/data/uci_online_retail.csv.gz")
HORIZON_DAYS = {"propensity": 14, "churn": 90}


@dataclass(slots=True)
class History:
    """A customer's orders (time, amount; in time order) and refund times."""

    ts: list[int] = field(default_factory=list)
    spend: list[float] = field(default_factory=lambda: [0.0])  # prefix sums of order amounts
    refunds: list[int] = field(default_factory=list)

    def add_order(self, ts: int, amount: float) -> None:
        self.ts.append(ts)
        self.spend.append(self.spend[-1] + amount)


def features_at(h: History, t: int) -> dict[str, float | None] | None:
    """RFM-style features from the orders before ``t``; None for a customer with none yet."""
    n = bisect.bisect_left(h.ts, t)
    if n == 0:
        return None
    first, last = h.ts[0], h.ts[n - 1]
    n30 = n - bisect.bisect_left(h.ts, t - 30 * DAY_MS, 0, n)
    i90 = bisect.bisect_left(h.ts, t - 90 * DAY_MS, 0, n)
    recency = (t - last) / DAY_MS
    gap = (last - first) / (n - 1) / DAY_MS if n > 1 else None
    refunds = bisect.bisect_left(h.refunds, t) - bisect.bisect_left(h.refunds, t - 90 * DAY_MS)
    return {
        "recency_days": recency,
        "log_recency": math.log1p(recency),
        "tenure_days": (t - first) / DAY_MS,
        "log_orders": math.log1p(n),
        "orders_30d": float(n30),
        "orders_90d": float(n - i90),
        "log_spend": math.log1p(max(0.0, h.spend[n])),
        "log_spend_90d": math.log1p(max(0.0, h.spend[n] - h.spend[i90])),
        "log_avg_order": math.log1p(max(0.0, h.spend[n] / n)),
        "mean_gap_days": gap,
        "recency_over_gap": recency / max(gap, 1.0) if gap is not None else None,
        "refunds_90d": float(refunds),
    }


def label_after(h: History, t: int, task: str) -> bool:
    """The task's label for a snapshot at ``t`` from the orders in ``(t, t + horizon]``."""
    horizon = HORIZON_DAYS[task] * DAY_MS
    bought = bisect.bisect_right(h.ts, t + horizon) > bisect.bisect_right(h.ts, t)
    return bought if task == "propensity" else not bought


def load_orders(path: Path) -> tuple[list[tuple[int, str, str, float]], int]:
    """(ts, customer, kind, amount) per order or refund, in time order; and the number of lines read."""
    orders: dict[tuple[str, str], list] = {}
    refunds: dict[tuple[str, str], int] = {}
    lines = 0
    for event in iter_events(path):
        lines += 1
        user, amount = event.get("user_id"), event.get("amount")
        if user is None or not isinstance(amount, int | float):
            continue
        try:
            ts = parse_event_time(event["ts"])
        except Rejection:  # a dirty timestamp drops the line, as cleaning would
            continue
        key = (user, event["order_id"])
        if event["type"] == "refund":
            refunds.setdefault(key, ts)
        elif amount > 0:
            entry = orders.setdefault(key, [ts, 0.0])
            entry[1] += amount
    rows = [(ts, user, "order", amount) for (user, _), (ts, amount) in orders.items()]
    rows += [(ts, user, "refund", 0.0) for (user, _), ts in refunds.items()]
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return rows, lines


def full_histories(rows: list[tuple[int, str, str, float]]) -> dict[str, History]:
    histories: dict[str, History] = {}
    for ts, user, kind, amount in rows:
        h = histories.setdefault(user, History())
        if kind == "order":
            h.add_order(ts, amount)
        else:
            h.refunds.append(ts)
    return histories


def replay_online(
    rows: list[tuple[int, str, str, float]],
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
    histories: dict[str, History] = {}
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
            h = histories.setdefault(user, History())
            if kind == "refund":
                h.refunds.append(ts)
                continue
            mine = pending.setdefault(
                user, {t: PendingLabels.for_task(t, HORIZON_DAYS[t], snapshot_every_ms=every[t]) for t in tasks}
            )
            for labels in mine.values():
                learn(labels.due(ts))
                learn(labels.on_purchase(ts))
            h.add_order(ts, amount)
        for user, mine in pending.items():  # midnight: timers, then snapshots as of midnight
            features = features_at(histories[user], day)
            for task, labels in mine.items():
                learn(labels.due(day))
                if features is not None:
                    labels.take(day, features)
                peak_pending[task] = max(peak_pending[task], len(labels))
        day += DAY_MS
    return models, validation, learnt, peak_pending


def batch_examples(histories: dict[str, History], cutoff: int, task: str, start: int) -> list[tuple[dict, bool]]:
    horizon = HORIZON_DAYS[task] * DAY_MS
    examples = []
    d = start
    while d + horizon <= cutoff:
        for h in histories.values():
            x = features_at(h, d)
            if x is not None:
                examples.append((x, label_after(h, d, task)))
        d += 7 * DAY_MS
    return examples


def sklearn_scores(train: list[tuple[dict, bool]], test: list[dict], kind: str = "logistic") -> list[float] | None:
    """scikit-learn's batch ``logistic`` regression or ``gradient_boosting`` (histogram GBM) scores
    of ``test`` after fitting ``train``; None when scikit-learn is not installed."""
    try:
        import numpy as np
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        return None
    names = sorted(train[0][0])

    def matrix(xs: list[dict]):
        return np.array([[np.nan if x.get(n) is None else x[n] for n in names] for x in xs], dtype=float)

    if kind == "gradient_boosting":  # missing values handled natively
        model = HistGradientBoostingClassifier(random_state=0)
    else:
        model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(matrix([x for x, _ in train]), np.array([y for _, y in train]))
    return list(model.predict_proba(matrix(test))[:, 1])


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
    rows, lines = load_orders(args.data)
    histories = full_histories(rows)
    print(
        f"{lines:,} lines -> {sum(r[2] == 'order' for r in rows):,} orders, {sum(r[2] == 'refund' for r in rows):,} "
        f"refunds of {len(histories):,} customers ({time.perf_counter() - started:.0f} s)"
    )
    test_users = sorted(u for u, h in histories.items() if features_at(h, cutoff) is not None)
    test_x = [features_at(histories[u], cutoff) for u in test_users]
    truth = {
        task: [label_after(histories[u], cutoff, task) for u in test_users] for task in HORIZON_DAYS
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
        train = batch_examples(histories, cutoff, task, batch_start)
        started = time.perf_counter()
        sk = sklearn_scores(train, test_x)
        if sk is not None:
            auc = roc_auc(list(zip(sk, truth[task], strict=True)))
            table.append((task, "batch sklearn LogisticRegression", auc, f"{len(train):,} examples"))
        else:
            table.append((task, "batch sklearn LogisticRegression", None, "scikit-learn not installed"))
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
