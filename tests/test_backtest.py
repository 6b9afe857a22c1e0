"""`segstream backtest` (pipelines/backtest.py, pipelines/backtest_cli.py) and the buy-till-you-die
cohort generator (transforms/cohort.py, `segstream generate-cohort`)."""

from __future__ import annotations

import gzip
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from scipy.special import hyp2f1

from pipelines.backtest import Horizons, histories, labelled, split_log
from pipelines.cli import main
from pipelines.sources import read_records
from transforms.cleaning import Cleaner, CleaningConfig
from transforms.cohort import CohortConfig, cohort_lines
from transforms.config import SALT_ENV

DEFAULT_CONFIG = Path(__file__).parents[1] / "transforms" / "default_config.yaml"
CUTOFF = "2026-01-01T00:00:00Z"  # nine months after the default cohort's acquisition quarter
DAY_S = 86_400
HORIZONS = {"propensity": 14, "churn": 90, "ltv": 90}  # the packaged configuration's


def seconds(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def purchases_by_customer(path: Path) -> dict[str, list[tuple[float, float]]]:
    """(time in seconds, amount) of every purchase per user, read straight from the file."""
    orders: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with gzip.open(path, "rt") if path.name.endswith(".gz") else path.open() as handle:
        for event in map(json.loads, handle):
            if event["type"] == "purchase":
                orders[event["user_id"]].append((seconds(event["ts"]), event["amount"]))
    return orders


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture(autouse=True)
def salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SALT_ENV, "test-salt")  # no warning about the built-in salt: errors are the only line


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cohort") / "cohort.jsonl"
    result = invoke("generate-cohort", str(path), "--customers", "300", "--seed", "5")
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def run(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, Path]:
    """One backtest of the cohort on the core engine, its work directory kept."""
    work = tmp_path_factory.mktemp("work")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SALT_ENV, "test-salt")
        result = invoke("backtest", "--source", str(cohort), "--cutoff", CUTOFF, "--work-dir", str(work))
    assert result.exit_code == 0, result.output
    return result, work


def tables(output: str) -> dict[str, list[list[str]]]:
    """The cells of each row of each task's table."""
    rows: dict[str, list[list[str]]] = {}
    task = None
    for line in output.splitlines():
        head = line.split(":")[0]
        if head in HORIZONS:
            task = head
            rows[task] = []
        elif task and line.startswith("| ") and not line.startswith("| model"):
            rows[task].append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_every_row_of_the_classification_tables_has_an_auc_in_0_1(run: tuple[Result, Path]) -> None:
    result, _ = run
    found = tables(result.stdout)
    for task in ("propensity", "churn"):
        models = [row[0] for row in found[task]]
        assert any(m.startswith("segstream") for m in models) and any("BG/NBD" in m for m in models), models
        assert any("LogisticRegression" in m for m in models) and any("HistGradientBoosting" in m for m in models)
        for model, _, auc, ece, mean_score, base_rate in found[task]:
            assert 0 <= float(auc) <= 1, (task, model, auc)
            assert 0 <= float(ece) <= 1 and 0 <= float(mean_score) <= 1 and 0 < float(base_rate) < 1


def test_every_model_is_scored_on_the_same_customers_and_labels(run: tuple[Result, Path], cohort: Path) -> None:
    """All rows of a task share the customers and base rate, and these are what the file says."""
    result, _ = run
    cutoff = seconds(CUTOFF)
    orders = purchases_by_customer(cohort)
    before = [times for times in orders.values() if min(t for t, _ in times) < cutoff]

    def bought_within(times: list[tuple[float, float]], days: int) -> bool:
        return any(cutoff < t <= cutoff + days * DAY_S for t, _ in times)

    expected = {
        "propensity": sum(bought_within(t, 14) for t in before) / len(before),
        "churn": sum(not bought_within(t, 90) for t in before) / len(before),
    }
    spend = sum(a for times in before for t, a in times if cutoff < t <= cutoff + 90 * DAY_S) / len(before)
    found = tables(result.stdout)
    for task, rate in expected.items():
        assert {(row[1], row[5]) for row in found[task]} == {(f"{len(before):,}", f"{rate:.3f}")}, task
    for row in found["ltv"]:
        assert row[1] in (f"{len(before):,}", "not in profiles") and row[-1] in ("", f"{spend:,.2f}"), row


def test_labels_of_each_customer_follow_the_purchases_after_the_cutoff(cohort: Path) -> None:
    cutoff_ms = int(seconds(CUTOFF) * 1000)
    log = split_log(
        read_records(cohort, 1 << 16), Cleaner(CleaningConfig(email_salt="s")), int(time.time() * 1000), cutoff_ms
    )
    by_customer = histories(log.rows)
    truth = labelled(by_customer, cutoff_ms, Horizons(**HORIZONS), set(by_customer))
    orders = purchases_by_customer(cohort)
    cutoff = cutoff_ms / 1000
    for i, customer in enumerate(truth.customers):
        times = [t for t, _ in orders[customer.removeprefix("user:")]]
        assert truth.labels["propensity"][i] == any(cutoff < t <= cutoff + 14 * DAY_S for t in times)
        assert truth.labels["churn"][i] == (not any(cutoff < t <= cutoff + 90 * DAY_S for t in times))
    assert len(truth.customers) == sum(1 for times in orders.values() if min(t for t, _ in times) < cutoff)


def test_the_stream_row_reads_the_final_profiles_as_of_the_cutoff(run: tuple[Result, Path]) -> None:
    result, work = run
    with (work / "profiles.jsonl").open() as handle:
        profiles = [p for p in map(json.loads, handle) if p["features"]["orders"] >= 1]
    cutoff_ms = int(seconds(CUTOFF) * 1000)
    assert profiles and all(p["as_of"] == cutoff_ms for p in profiles)
    found = tables(result.stdout)
    for task, key in (("propensity", "propensity_score"), ("churn", "churn_score")):
        (stream,) = [row for row in found[task] if row[0].startswith("segstream")]
        assert float(stream[4]) == pytest.approx(statistics.fmean(p[key] for p in profiles), abs=5e-4)
    (ltv,) = [row for row in found["ltv"] if row[0].startswith("segstream")]
    if all("ltv_score" in p for p in profiles):
        mean = statistics.fmean(p["ltv_score"] for p in profiles)
        assert float(ltv[4].replace(",", "")) == pytest.approx(mean, rel=1e-9, abs=5e-3)
    else:
        assert ltv[1] == "not in profiles"


def test_the_btyd_lifetime_value_ranks_customers(run: tuple[Result, Path]) -> None:
    (row,) = [r for r in tables(run[0].stdout)["ltv"] if r[0].startswith("BG/NBD")]
    assert 0 < float(row[2]) <= 1 and float(row[3].replace(",", "")) >= 0  # Spearman, mean absolute error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cutoff", "yesterday"], "--cutoff: 'yesterday' is not RFC 3339"),
        (["--cutoff", "2027-01-01T00:00:00Z"], "is not before the last event"),
        (["--cutoff", "2024-06-01T00:00:00Z"], "has a purchase before it"),
        (["--cutoff", CUTOFF, "--horizon", "3"], "horizons: models.churn_days must be at least"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cohort: Path, args: list[str], message: str) -> None:
    result = invoke("backtest", "--source", str(cohort), *args)
    assert result.exit_code == 2 and result.output.startswith("Error: ") and message in result.output, result.output
    assert result.output.count("\n") == 1


def test_a_missing_source_or_live_one_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for source, message in ((tmp_path / "none.jsonl", "no such file"), ("redis-stream://127.0.0.1:1/s", "live")):
        result = invoke("backtest", "--source", str(source), "--cutoff", CUTOFF)
        assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output


def test_models_off_is_one_line_and_exit_2(cohort: Path, tmp_path: Path) -> None:
    config = tmp_path / "off.yaml"
    config.write_text(DEFAULT_CONFIG.read_text() + "\nmodels:\n  enabled: false\n")
    result = invoke("backtest", "--source", str(cohort), "--cutoff", CUTOFF, "--config", str(config))
    assert result.exit_code == 2 and "set models.enabled to true" in result.output, result.output


def test_a_missing_extra_is_named(cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymc_marketing.clv", None)  # what an import of a missing package raises
    result = invoke("backtest", "--source", str(cohort), "--cutoff", CUTOFF)
    assert result.exit_code == 2 and "needs the 'backtest' extra" in result.output and "[backtest]" in result.output


def test_the_cohort_is_the_same_for_a_seed_and_another_for_another(tmp_path: Path) -> None:
    files = {name: tmp_path / f"{name}.jsonl.gz" for name in ("a", "b", "c")}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert invoke("generate-cohort", str(files[name]), "--customers", "50", "--seed", seed).exit_code == 0
    assert files["a"].read_bytes() == files["b"].read_bytes() != files["c"].read_bytes()


def expected_repeat_purchases(t: float, r: float, alpha: float, a: float, b: float) -> float:
    """BG/NBD E[X(t)] (Fader, Hardie and Lee 2005, eq. 9): repeat purchases within ``t`` days of the first."""
    return (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, t / (alpha + t)))


@pytest.mark.parametrize("params", [{}, {"r": 0.6, "alpha": 30.0, "a": 1.5, "b": 4.0, "spend_q": 3.0}])
def test_the_cohort_buys_as_its_btyd_parameters_say(tmp_path: Path, params: dict[str, float]) -> None:
    config = CohortConfig(customers=4000, seed=11, **params)
    path = tmp_path / "cohort.jsonl"
    path.write_text("\n".join(cohort_lines(config)) + "\n")
    orders = purchases_by_customer(path)
    start = config.start_ms / 1000
    firsts = {u: min(times) for u, times in orders.items()}
    assert len(orders) == config.customers
    assert all(start <= t < start + config.acquisition_days * DAY_S for t, _ in firsts.values())
    within = 270  # every customer is observed this long after the first purchase
    repeats = [sum(1 for t, _ in orders[u] if firsts[u][0] < t <= firsts[u][0] + within * DAY_S) for u in orders]
    expected = expected_repeat_purchases(within, config.r, config.alpha, config.a, config.b)
    error = statistics.stdev(repeats) / math.sqrt(len(repeats))
    assert abs(statistics.fmean(repeats) - expected) < 4 * error, (statistics.fmean(repeats), expected)
    first_values = [amount for _, amount in firsts.values()]  # one per customer: independent draws
    mean_value = config.spend_p * config.spend_gamma / (config.spend_q - 1)
    error = statistics.stdev(first_values) / math.sqrt(len(first_values))
    assert abs(statistics.fmean(first_values) - mean_value) < 4 * error, (statistics.fmean(first_values), mean_value)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--customers", "0"], "--customers must be"), (["--spend-q", "1"], "--spend-q must be above 1")],
)
def test_bad_cohort_settings_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = invoke("generate-cohort", str(tmp_path / "c.jsonl"), *args)
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output
