"""``segstream backtest`` and ``segstream generate-cohort`` (registered by :mod:`pipelines.cli`).

``backtest`` replays a purchase log up to a cutoff through the real job (as ``segstream run
--as-of CUTOFF`` on the events before it, on any engine), labels every customer with an order before
the cutoff from what they did after it and prints the stream's scores beside batch baselines
(:mod:`pipelines.backtest`). ``generate-cohort`` writes a buy-till-you-die cohort to backtest on
(:mod:`transforms.cohort`). :mod:`pipelines.cli` imports this module to register both, so the
commands import its helpers when they run.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from pipelines.backtest import (
    Horizons,
    btyd_baselines,
    histories,
    labelled,
    report,
    rfm_baselines,
    split_log,
    stream_scores,
)
from pipelines.job import JobSpec
from pipelines.outputs import OutputPaths
from pipelines.redis_stream import is_stream_source
from pipelines.sources import read_records
from transforms.cleaning import Cleaner
from transforms.cohort import COHORT_START_MS, DAY, CohortConfig, cohort_lines, purchase_plan
from transforms.config import JobConfig

EXTRA = "backtest"
_EXTRA_MODULES = ("sklearn", "pymc_marketing.clv")


def _require_extra() -> None:
    """Import what the baselines need; a one-line error naming the extra when something is missing."""
    from pipelines.cli import UserError

    for name in _EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(
                f"segstream backtest needs the '{EXTRA}' extra ({name} is missing): "
                f"pip install -c constraints.txt -e '.[{EXTRA}]'"
            ) from None


def _horizons(config: JobConfig, horizon: float | None, days: dict[str, float | None]) -> tuple[JobConfig, Horizons]:
    """The label horizon of each task (its option, else ``--horizon``, else the config's) and the
    configuration whose models are trained for them."""
    from pipelines.cli import UserError

    models = config.models
    if models is None:
        raise UserError("backtest compares the models' scores: set models.enabled to true in --config")
    chosen = {f"{task}_days": days[task] or horizon or getattr(models, f"{task}_days") for task in days}
    try:
        models = dataclasses.replace(models, **chosen)
    except ValueError as error:
        raise UserError(f"horizons: {error}") from None
    return dataclasses.replace(config, models=models), Horizons(**{t: chosen[f"{t}_days"] for t in days})


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, UTC).isoformat().replace("+00:00", "Z")


_days = click.FloatRange(min=1)


@click.command()
@click.option(
    "--source", required=True, help="The purchase log: a .jsonl, .jsonl.gz or .avro file of the input contract."
)
@click.option("--cutoff", required=True, help="Score as of this time (RFC 3339 with an offset, or epoch ms).")
@click.option(
    "--horizon",
    type=_days,
    help="Label horizon in days of every task (churn, propensity, ltv), unless its own option is given. "
    "Default: the config's models.churn_days, propensity_days, ltv_days (90, 14, 90).",
)
@click.option("--churn-days", type=_days, help="Churned = no purchase within this many days after the cutoff.")
@click.option("--propensity-days", type=_days, help="Propensity = a purchase within this many days after the cutoff.")
@click.option("--ltv-days", type=_days, help="Lifetime value = the net spend within this many days after the cutoff.")
@click.option(
    "--engine",
    type=click.Choice(("core", "beam", "flink")),
    default="core",
    show_default=True,
    help="The engine the job replays the log on.",
)
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML job configuration (the models).")
@click.option(
    "--train-days",
    type=_days,
    default=240,
    show_default=True,
    help="The scikit-learn baselines learn from weekly reference dates in this many days before the cutoff.",
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep the replay here: the events before the cutoff, profiles, summary (default: a temporary directory).",
)
@click.option("--now", help="Processing clock for cleaning's 'too far in the future' check (default: the wall clock).")
def backtest(
    source: str,
    cutoff: str,
    horizon: float | None,
    churn_days: float | None,
    propensity_days: float | None,
    ltv_days: float | None,
    engine: str,
    config_path: Path | None,
    train_days: float,
    work_dir: Path | None,
    now: str | None,
) -> None:
    """Replay --source up to --cutoff through the job, label every customer from what came after and
    print the stream's scores beside batch baselines (scikit-learn on RFM features, BG/NBD, Gamma-Gamma)."""
    from pipelines.cli import UserError, _check_source, _load_config, _redis, _timestamp, execute

    cutoff_ms = _timestamp(cutoff, "--cutoff")
    assert cutoff_ms is not None
    now_ms = _timestamp(now, "--now") or int(time.time() * 1000)
    if is_stream_source(source):
        raise UserError(f"--source {source}: backtest replays a file, not a live stream")
    _check_source(source)
    days = {"propensity": propensity_days, "churn": churn_days, "ltv": ltv_days}
    config, horizons = _horizons(_load_config(config_path), horizon, days)
    if config.identity is not None:
        raise UserError("backtest labels customers by their events' keys: turn identity.stitch off in --config")
    config = dataclasses.replace(config, webhooks=dataclasses.replace(config.webhooks, subscribers=()))
    _require_extra()

    ctx = click.get_current_context()
    work = work_dir or Path(ctx.with_resource(tempfile.TemporaryDirectory(prefix="segstream-backtest-")))
    work.mkdir(parents=True, exist_ok=True)
    before = work / "events_before_cutoff.jsonl"
    with before.open("wb") as out:
        records = read_records(Path(source), config.cleaning.max_record_bytes)
        log = split_log(records, Cleaner(config.cleaning), now_ms, cutoff_ms, out)
    if log.last_ts is None:
        raise UserError(f"{source}: no event passes cleaning ({log.rejected:,} records rejected)")
    if cutoff_ms >= log.last_ts:
        raise UserError(f"--cutoff {cutoff} is not before the last event of {source} ({_when(log.last_ts)})")
    by_customer = histories(log.rows)
    if not any(h.ts and h.ts[0] < cutoff_ms for h in by_customer.values()):
        raise UserError(f"--cutoff {cutoff}: no customer of {source} has a purchase before it")
    longest = max(horizons.days(t) for t in ("propensity", "churn", "ltv"))
    if log.last_ts < cutoff_ms + longest * DAY:
        click.echo(
            f"warning: {source} ends {(log.last_ts - cutoff_ms) / DAY:.1f} days after the cutoff, within the "
            f"{longest:g}-day horizon: what happens after its end counts as nothing",
            err=True,
        )

    url, _server = _redis(None, work / "state")  # stopped when the command ends, before the directory goes
    outputs = OutputPaths(profiles=work / "profiles.jsonl", summary=work / "summary.json")
    spec = JobSpec(source=str(before), config=config, redis_url=url, outputs=outputs, now_ms=now_ms, as_of=cutoff_ms)
    summary = execute(spec, engine)
    with outputs.profiles.open(encoding="utf-8") as handle:  # type: ignore[union-attr]
        profiles = {p["customer_id"]: p for p in map(json.loads, handle)}
    truth = labelled(by_customer, cutoff_ms, horizons, profiles)
    left_out = sum(1 for c, h in by_customer.items() if h.ts and h.ts[0] < cutoff_ms and c not in profiles)

    click.echo(f"segstream backtest of {source} at {_when(cutoff_ms)}")
    click.echo(
        f"  replay: {log.before:,} of {log.records:,} records before the cutoff through the job on {engine} "
        f"({summary['events_per_second']:,.0f} events/s; {log.rejected:,} rejected by cleaning)"
    )
    click.echo(
        f"  scored: {len(truth.customers):,} customers with an order before the cutoff"
        + (f" ({left_out:,} without a profile left out)" if left_out else "")
    )
    click.echo(f"  baselines: scikit-learn on weekly RFM examples of the {train_days:g} days before the cutoff\n")
    rows = stream_scores(profiles, truth.customers, f"segstream ({engine} engine, in the stream)")
    rows += rfm_baselines(by_customer, truth.customers, cutoff_ms, horizons, train_days)
    rows += btyd_baselines(by_customer, truth.customers, cutoff_ms, horizons)
    click.echo(report(truth, rows, horizons))


_COHORT_OPTIONS = (  # CohortConfig fields: their defaults are the options'
    ("customers", "Customers in the cohort."),
    ("acquisition_days", "Days from --start in which customers make their first purchase (a quarter)."),
    ("days", "Days of event time from --start: the log's length."),
    ("seed", "Same seed, same bytes."),
    ("r", "BG/NBD: purchases a day ~ Gamma(shape r, rate alpha)."),
    ("alpha", "BG/NBD: purchases a day ~ Gamma(shape r, rate alpha)."),
    ("a", "BG/NBD: dropout probability after each repeat purchase ~ Beta(a, b)."),
    ("b", "BG/NBD: dropout probability after each repeat purchase ~ Beta(a, b)."),
    ("spend_p", "Gamma-Gamma: order value ~ Gamma(shape p, rate ν) ..."),
    ("spend_q", "... with ν ~ Gamma(shape q, rate gamma) per customer."),
    ("spend_gamma", "... with ν ~ Gamma(shape q, rate gamma) per customer."),
    ("currency", "ISO 4217 currency of the orders."),
)


def cohort_options(func: Any) -> Any:
    for name, text in reversed(_COHORT_OPTIONS):
        default = getattr(CohortConfig, name)
        func = click.option(
            f"--{name.replace('_', '-')}", type=type(default), default=default, show_default=True, help=text
        )(func)
    return func


@click.command(name="generate-cohort")
@click.argument("output_path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--start", help="First day of acquisition (RFC 3339 with an offset, or epoch ms). Default: 2025-01-01.")
@cohort_options
def generate_cohort(output_path: Path, start: str | None, **settings: float | int | str) -> None:
    """Write a cohort acquired in one quarter that buys till it dies (BG/NBD purchases, Gamma-Gamma order
    values) to OUTPUT_PATH (.jsonl or .jsonl.gz): purchase sessions of the input contract, for backtests."""
    from pipelines.cli import UserError, _timestamp

    start_ms = _timestamp(start, "--start")
    try:
        config = CohortConfig(start_ms=COHORT_START_MS if start_ms is None else start_ms, **settings)  # type: ignore[arg-type]
    except ValueError as error:
        raise UserError(str(error)) from None
    lines = 0
    try:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        with open(output_path, "wb") as raw:
            # mtime=0 and no name in the gzip header: the same seed gives the same bytes.
            gzipped = output_path.name.endswith(".gz")
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gzipped else raw as out:
                for line in cohort_lines(config):
                    out.write(line.encode() + b"\n")
                    lines += 1
    except OSError as error:
        raise UserError(f"cannot write {output_path}: {error.strerror}") from None
    acquired = config.start_ms + config.acquisition_days * DAY
    click.echo(
        f"{lines:,} lines ({sum(map(len, purchase_plan(config))):,} purchases) of {config.customers:,} customers "
        f"acquired {_when(config.start_ms)} to {_when(acquired)}, until {_when(config.end_ms)} -> {output_path}"
    )
