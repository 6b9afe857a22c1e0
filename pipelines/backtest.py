"""Backtest the job's scores on a purchase log: what the stream knew at a cutoff against what came after.

Shared by ``segstream backtest`` (:mod:`pipelines.backtest_cli`) and the bench scripts
(``bench/uci_scores.py``, ``bench/uci_models.py``):

- :func:`split_log` reads a log once through the job's own cleaning: the records with an event time
  before the cutoff go, as they were, to the file the job replays, and every purchase and refund
  (a repeated event id once) becomes an order row keyed by the job's customer key.
- :class:`History` holds a customer's orders; :func:`label_after` and :func:`spend_after` label it
  from what happened after a time, as the job's models do (a purchase in ``(t, t + days]``;
  net spend there, at least 0); :func:`features_at` gives RFM features from what came before.
- :func:`labelled` fixes the customers scored (an order before the cutoff and a profile) and their
  labels; every model is scored on exactly these customers.
- Scores: :func:`stream_scores` (the final profiles' ``churn_score``, ``propensity_score``,
  ``ltv_score``), :func:`rfm_baselines` (scikit-learn on RFM features at weekly reference dates
  before the cutoff, labels known by then), :func:`btyd_baselines` (BG/NBD and Gamma-Gamma of
  pymc-marketing, fitted on the orders before the cutoff).
- :func:`report` prints per task ROC AUC and calibration, or Spearman and MAE for lifetime value.

scikit-learn, pandas and pymc-marketing are imported only by the baselines (the ``backtest`` extra).

>>> h = History()
>>> h.add_order(0, 10.0); h.add_order(5 * DAY_MS, 20.0); h.add_refund(6 * DAY_MS, 5.0)
>>> label_after(h, DAY_MS, "propensity", 14), label_after(h, DAY_MS, "churn", 3)
(True, True)
>>> spend_after(h, DAY_MS, 14), features_at(h, DAY_MS)["tenure_days"]
(15.0, 1.0)
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from online_models import DAY_MS, ProgressiveValidation, roc_auc
from pipelines.job import clean_record
from pipelines.sources import RawRecord
from transforms.cleaning import Cleaner
from transforms.dead_letters import DeadLetter
from transforms.events import Event

TASKS = ("propensity", "churn")  # classification; "ltv" is the regression
SCORE_NAMES = {"propensity": "propensity_score", "churn": "churn_score", "ltv": "ltv_score"}
Row = tuple[int, str, str, float]  # (time, customer, "order" | "refund", amount)


@dataclass(slots=True)
class History:
    """A customer's order times (in time order) with prefix sums of their amounts, and refunds likewise."""

    ts: list[int] = field(default_factory=list)
    spend: list[float] = field(default_factory=lambda: [0.0])
    refunds: list[int] = field(default_factory=list)
    refunded: list[float] = field(default_factory=lambda: [0.0])

    def add_order(self, ts: int, amount: float) -> None:
        self.ts.append(ts)
        self.spend.append(self.spend[-1] + amount)

    def add_refund(self, ts: int, amount: float) -> None:
        self.refunds.append(ts)
        self.refunded.append(self.refunded[-1] + amount)


@dataclass(frozen=True)
class Horizons:
    """The label horizon of each task, in days."""

    propensity: float
    churn: float
    ltv: float

    def days(self, task: str) -> float:
        return {"propensity": self.propensity, "churn": self.churn, "ltv": self.ltv}[task]


def features_at(h: History, t: int) -> dict[str, float | None] | None:
    """RFM features from the orders before ``t`` (recency, tenure, frequency and spend, overall and
    recent, average order, rhythm, refunds); None for a customer without an order yet."""
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


def label_after(h: History, t: int, task: str, days: float) -> bool:
    """``task``'s label at ``t``: propensity, an order in ``(t, t + days]``; churn, none there."""
    bought = bisect.bisect_right(h.ts, t + round(days * DAY_MS)) > bisect.bisect_right(h.ts, t)
    return bought if task == "propensity" else not bought


def spend_after(h: History, t: int, days: float) -> float:
    """Net spend in ``(t, t + days]``: orders less refunds, at least 0 (the job's lifetime value)."""
    end = t + round(days * DAY_MS)

    def within(times: list[int], sums: list[float]) -> float:
        return sums[bisect.bisect_right(times, end)] - sums[bisect.bisect_right(times, t)]

    return max(0.0, within(h.ts, h.spend) - within(h.refunds, h.refunded))


def order_rows(events: Iterable[Event]) -> list[Row]:
    """Cleaned purchases grouped into orders (one per customer and ``order_id``, at its first line,
    worth the sum of its lines) and refunds likewise, in time order; a repeated event id counts once."""
    seen: set[str] = set()
    totals: dict[tuple[str, str, str], list] = {}
    for event in events:
        if event.type not in ("purchase", "refund") or event.event_id in seen:
            continue
        seen.add(event.event_id)
        kind = "order" if event.type == "purchase" else "refund"
        entry = totals.setdefault((event.customer_key, kind, event.order_id or ""), [event.ts, 0.0])
        entry[0] = min(entry[0], event.ts)
        entry[1] += event.amount or 0.0
    rows = [(ts, customer, kind, amount) for (customer, kind, _), (ts, amount) in totals.items()]
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return rows


def histories(rows: Iterable[Row]) -> dict[str, History]:
    """Each customer's :class:`History` from time-ordered order rows."""
    result: dict[str, History] = {}
    for ts, customer, kind, amount in rows:
        h = result.setdefault(customer, History())
        (h.add_order if kind == "order" else h.add_refund)(ts, amount)
    return result


@dataclass
class Log:
    """What :func:`split_log` read: order rows, the last accepted event time, record counts."""

    rows: list[Row]
    last_ts: int | None
    records: int
    before: int  # records written for the replay (accepted, event time before the cutoff)
    rejected: int  # records cleaning rejects (the job would dead-letter them)


def split_log(
    records: Iterable[RawRecord], cleaner: Cleaner, now_ms: int, cutoff: int, before: BinaryIO | None = None
) -> Log:
    """Clean ``records`` once (the job's cleaning at processing time ``now_ms``): purchases and refunds
    of the whole log become order rows; accepted records with an event time before ``cutoff`` are
    written to ``before`` (JSONL, as they were: the job's input)."""
    log = Log([], None, 0, 0, 0)

    def accepted() -> Iterator[Event]:
        for record in records:
            log.records += 1
            event = clean_record(cleaner, record, now_ms)
            if isinstance(event, DeadLetter):
                log.rejected += 1
                continue
            if event.ts < cutoff and before is not None:
                before.write(orjson.dumps(record.payload) + b"\n")
                log.before += 1
            log.last_ts = event.ts if log.last_ts is None else max(log.last_ts, event.ts)
            yield event

    log.rows = order_rows(accepted())
    return log


@dataclass
class Labelled:
    """The customers scored and what happened after the cutoff: one label list per task, in order."""

    customers: list[str]
    labels: dict[str, list[bool]]
    spend: list[float]  # net spend within the ltv horizon


def labelled(by_customer: dict[str, History], cutoff: int, horizons: Horizons, scored: Container[str]) -> Labelled:
    """Every customer with an order before ``cutoff`` who is in ``scored`` (has a profile), labelled."""
    customers = sorted(c for c, h in by_customer.items() if h.ts and h.ts[0] < cutoff and c in scored)
    hs = [by_customer[c] for c in customers]
    labels = {task: [label_after(h, cutoff, task, horizons.days(task)) for h in hs] for task in TASKS}
    return Labelled(customers, labels, [spend_after(h, cutoff, horizons.ltv) for h in hs])


@dataclass(frozen=True)
class Scores:
    """One model's scores of the customers of a :class:`Labelled`, in order, or why there are none."""

    task: str
    model: str
    values: list[float] | None
    missing: str = ""


def stream_scores(profiles: dict[str, dict], customers: list[str], name: str) -> list[Scores]:
    """The final profiles' scores of every task; a score that a profile lacks is "not in profiles"."""
    result = []
    for task, key in SCORE_NAMES.items():
        values = [profiles[c].get(key) for c in customers]
        complete = all(isinstance(v, int | float) for v in values)
        result.append(
            Scores(task, f"{name} `{key}`", values if complete else None, "" if complete else "not in profiles")
        )
    return result


def training_examples(
    by_customer: dict[str, History], cutoff: int, task: str, days: float, start: int
) -> list[tuple[dict, bool]]:
    """(features, label) at weekly reference dates ``d`` from ``cutoff - days`` back to ``start``
    (labels from ``(d, d + days]``, all known at the cutoff), for every customer with an order by then."""
    examples = []
    d = cutoff - round(days * DAY_MS)
    while d >= start:
        for h in by_customer.values():
            x = features_at(h, d)
            if x is not None:
                examples.append((x, label_after(h, d, task, days)))
        d -= 7 * DAY_MS
    return examples


def sklearn_scores(train: list[tuple[dict, bool]], test: list[dict], kind: str = "logistic") -> list[float]:
    """scikit-learn's ``logistic`` regression (mean imputation, scaling) or ``gradient_boosting``
    (histogram GBM, missing values native) probabilities of ``test`` after fitting ``train``."""
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    names = sorted(train[0][0])

    def matrix(xs: list[dict]) -> Any:
        return np.array([[np.nan if x.get(n) is None else x[n] for n in names] for x in xs], dtype=float)

    if kind == "gradient_boosting":
        model = HistGradientBoostingClassifier(random_state=0)
    else:
        model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=2000))
    # One thread: on a busy machine OpenMP threads spin against each other (gradient boosting on a few
    # thousand rows took 2.3 s with two threads on two shared cores, 0.24 s with one).
    with threadpool_limits(1):
        model.fit(matrix([x for x, _ in train]), np.array([y for _, y in train]))
        return model.predict_proba(matrix(test))[:, 1].tolist()


SKLEARN_MODELS = {"logistic": "LogisticRegression", "gradient_boosting": "HistGradientBoostingClassifier"}


def rfm_baselines(
    by_customer: dict[str, History], customers: list[str], cutoff: int, horizons: Horizons, train_days: float
) -> list[Scores]:
    """scikit-learn's classifiers per task, trained on weekly examples of the ``train_days`` before the
    cutoff (from the first order on) and scoring ``customers`` at the cutoff."""
    first = min((h.ts[0] for h in by_customer.values() if h.ts), default=cutoff)
    start = max(first, cutoff - round(train_days * DAY_MS))
    test = [features_at(by_customer[c], cutoff) for c in customers]
    result = []
    for task in TASKS:
        train = training_examples(by_customer, cutoff, task, horizons.days(task), start)
        for kind, name in SKLEARN_MODELS.items():
            model = f"scikit-learn {name} (RFM)"
            if len({y for _, y in train}) < 2:
                why = "no training window" if not train else "one class in training"
                result.append(Scores(task, model, None, f"n/a ({why} before the cutoff)"))
            else:
                result.append(Scores(task, model, sklearn_scores(train, test, kind)))
    return result


def btyd_baselines(
    by_customer: dict[str, History], customers: list[str], cutoff: int, horizons: Horizons
) -> list[Scores]:
    """BG/NBD (pymc-marketing's ``BetaGeoModel`` on daily purchase periods before the cutoff):
    P(a purchase within the propensity horizon), P(none within the churn horizon) and 1 - P(alive);
    with Gamma-Gamma (``GammaGammaModel``, on the customers with repeat purchases) the expected spend
    within the ltv horizon: expected purchases times expected order value. Both are fitted by
    maximum likelihood, as Fader, Hardie and Lee fit them: a MAP fit under flat priors (the BG/NBD's
    default priors assume a time scale: ``alpha`` around 10 periods)."""
    import pandas as pd
    import pytensor
    from pymc_extras.prior import Prior
    from pymc_marketing.clv import BetaGeoModel, GammaGammaModel
    from pymc_marketing.clv.utils import rfm_summary

    ids, times, amounts = [], [], []
    for c in customers:
        h = by_customer[c]
        for i in range(bisect.bisect_left(h.ts, cutoff)):
            ids.append(c)
            times.append(h.ts[i])
            amounts.append(h.spend[i + 1] - h.spend[i])
    transactions = pd.DataFrame({"customer_id": ids, "date": pd.to_datetime(times, unit="ms"), "amount": amounts})
    end = pd.to_datetime(cutoff, unit="ms")
    data = rfm_summary(transactions, "customer_id", "date", "amount", observation_period_end=end, time_unit="D")
    data = data.set_index("customer_id").loc[customers].reset_index()

    def per_customer(values: Any) -> list[float]:
        return values.mean(("chain", "draw")).sel(customer_id=customers).values.tolist()

    # FAST_COMPILE: these small graphs cost far more to compile to C (a minute) than to run.
    with warnings.catch_warnings(), pytensor.config.change_flags(mode="FAST_COMPILE"):
        warnings.simplefilter("ignore")
        flat = {name: Prior("HalfFlat") for name in ("r", "alpha", "a", "b")}
        bgnbd = BetaGeoModel(data=data[["customer_id", "frequency", "recency", "T"]], model_config=flat)
        bgnbd.fit(method="map", progressbar=False)
        propensity = [1 - p for p in per_customer(bgnbd.expected_probability_no_purchase(horizons.propensity, data))]
        result = [
            Scores("propensity", f"BG/NBD P(a purchase within {horizons.propensity:g} days)", propensity),
            Scores(
                "churn",
                f"BG/NBD P(no purchase within {horizons.churn:g} days)",
                per_customer(bgnbd.expected_probability_no_purchase(horizons.churn, data)),
            ),
            Scores(
                "churn", "BG/NBD 1 - P(alive)", [1 - p for p in per_customer(bgnbd.expected_probability_alive(data))]
            ),
        ]
        repeat = data[(data["frequency"] > 0) & (data["monetary_value"] > 0)]
        model = "BG/NBD x Gamma-Gamma expected spend"
        if len(repeat) < 2:
            return [*result, Scores("ltv", model, None, "n/a (fewer than 2 repeat customers before the cutoff)")]
        gamma_gamma = GammaGammaModel(data=repeat[["customer_id", "frequency", "monetary_value"]])
        gamma_gamma.fit(method="map", progressbar=False)
        purchases = per_customer(bgnbd.expected_purchases(data, future_t=horizons.ltv))
        order_value = per_customer(gamma_gamma.expected_customer_spend(data))
    return [*result, Scores("ltv", model, [n * v for n, v in zip(purchases, order_value, strict=True)])]


def calibration_error(scores: list[float], labels: list[bool]) -> float | None:
    """Expected calibration error over ten equal-width bins (:class:`online_models.ProgressiveValidation`)."""
    validation = ProgressiveValidation(window=max(1, len(scores)))
    for p, y in zip(scores, labels, strict=True):
        validation.update(p, y)
    return validation.expected_calibration_error()


def _cell(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def report(truth: Labelled, rows: list[Scores], horizons: Horizons) -> str:
    """Markdown tables per task: ROC AUC, expected calibration error and mean score against the base
    rate (propensity, churn); Spearman rank correlation and mean absolute error (ltv)."""
    from scipy.stats import spearmanr

    n = f"{len(truth.customers):,}"
    out = []
    for task in TASKS:
        labels = truth.labels[task]
        rate = sum(labels) / len(labels)
        what = "a purchase" if task == "propensity" else "no purchase"
        out += [
            f"{task}: {what} within {horizons.days(task):g} days after the cutoff",
            "| model | customers | ROC AUC | ECE | mean score | base rate |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in (r for r in rows if r.task == task):
            if row.values is None:
                out.append(f"| {row.model} | {row.missing} | | | | |")
                continue
            pairs = list(zip(row.values, labels, strict=True))
            cells = [roc_auc(pairs), calibration_error(row.values, labels), sum(row.values) / len(row.values), rate]
            out.append(f"| {row.model} | {n} | {' | '.join(map(_cell, cells))} |")
        out.append("")
    actual = truth.spend
    out += [
        f"ltv: net spend within {horizons.ltv:g} days after the cutoff",
        "| model | customers | Spearman | MAE | mean prediction | mean actual |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in (r for r in rows if r.task == "ltv"):
        if row.values is None:
            out.append(f"| {row.model} | {row.missing} | | | | |")
            continue
        varied = len(set(actual)) > 1 and len(set(row.values)) > 1  # else no rank correlation
        rho = float(spearmanr(row.values, actual).statistic) if varied else None
        mae = sum(abs(p - y) for p, y in zip(row.values, actual, strict=True)) / len(actual)
        means = [sum(row.values) / len(actual), sum(actual) / len(actual)]
        out.append(
            f"| {row.model} | {n} | {_cell(rho)} | {_cell(mae, 2)} | {_cell(means[0], 2)} | {_cell(means[1], 2)} |"
        )
    return "\n".join(out)
