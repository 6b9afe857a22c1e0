"""The ``segstream`` command line: run, demo, import, and webhook delivery (webhook-receiver, deliver, deliveries)."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import os
import signal
import sqlite3
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from pipelines.backtest_cli import backtest, generate_cohort
from pipelines.core_engine import CoreEngine
from pipelines.customer_store import STATE_FILE, applied_before, input_digest, promote_state
from pipelines.delivery import Deliveries
from pipelines.delivery_queue import DeliveryQueue, load_routes
from pipelines.job import JobSpec
from pipelines.metrics import METRICS
from pipelines.model_publisher import KEY_ENV, KEY_FILE_ENV, model_key
from pipelines.outputs import OutputPaths, truncate
from pipelines.redis_store import RedisSink, RedisUnavailable, shared_client, start_embedded, stop_embedded
from pipelines.redis_stream import StreamReader, StreamSpec, is_live_source, is_stream_source
from pipelines.snapshot_store import StateFileError
from pipelines.sources import SourceError, check_source
from pipelines.watermarked import Counts
from pipelines.webhook_receiver import MAX_BODY_BYTES, MAX_TOLERANCE_S, WebhookReceiver
from transforms.adapters import ADAPTERS
from transforms.config import SALT_ENV, ConfigError, JobConfig, load_config
from transforms.dead_letters import Rejection
from transforms.subscribers import check_secret, make_subscriber, read_secrets, with_command_line
from transforms.timestamps import parse_event_time

ENGINES = ("beam", "core", "flink")


class UserError(click.ClickException):
    """A mistake of the user's: one clear line, exit status 2, no traceback."""

    exit_code = 2


def _timestamp(value: str | None, option: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_event_time(value)
    except Rejection:
        raise UserError(f"{option}: {value!r} is not RFC 3339 with an offset nor epoch milliseconds") from None


def _check_source(source: str, engine: str = "beam") -> None:
    """Fail fast on a source that cannot be read, before anything starts."""
    try:
        if engine == "flink" and not is_stream_source(source):
            from pipelines.flink_job import check_source as check_flink_source

            check_flink_source(source)
        elif is_stream_source(source):
            StreamSpec.parse(source)
        else:
            check_source(Path(source))
    except (SourceError, ValueError) as error:
        raise UserError(str(error)) from None


def _not_applied(source: Path, state_file: Path) -> str:
    """--resume: the input's digest, unless the saved state already holds that input (its run ended
    after saving it): then one line."""
    digest = input_digest(source)
    try:
        applied = applied_before(state_file, digest)
    except StateFileError as error:
        raise UserError(str(error)) from None
    if applied is not None:
        raise UserError(
            f"--resume: {source} was already applied to {state_file} (at {applied} UTC); "
            "running it again would count its events twice"
        )
    return digest


def _flink_conf(pairs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    from pipelines.flink_env import parse_conf  # engine-free: no pyflink import

    try:
        return tuple(parse_conf(pairs).items())
    except ValueError as error:
        raise UserError(str(error)) from None


def _load_config(path: Path | None) -> JobConfig:
    try:
        config = load_config(path)
    except ConfigError as error:
        raise UserError(str(error)) from None
    if config.default_salt:
        click.echo(f"warning: emails are hashed with the built-in salt; set {SALT_ENV} in production", err=True)
    return config


def _redis(url: str | None, state_dir: Path) -> tuple[str, Any]:
    try:
        if url is None:
            url, server = start_embedded(state_dir)
            click.get_current_context().call_on_close(lambda: stop_embedded(server))
            return url, server
        shared_client(url)
        return url, None
    except RedisUnavailable as error:
        raise UserError(str(error)) from None


def _run_live(spec: JobSpec, engine: str) -> None:
    """Consume a live stream until SIGINT/SIGTERM, serving /metrics meanwhile."""
    if engine != "beam":
        raise UserError("live sources (redis-stream://) run on --engine beam")
    stream = StreamSpec.parse(spec.source)
    try:
        StreamReader(stream)  # checks the server and creates the consumer group
    except RedisUnavailable as error:
        raise UserError(str(error)) from None
    from pipelines.beam_streaming import STOP, run_stream

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: STOP.set())
    if spec.metrics_port is not None:
        METRICS.serve(spec.metrics_port, spec.metrics_address)
    click.echo(f"consuming {stream.stream} as {stream.group}/{stream.consumer}; Ctrl-C drains and stops", err=True)
    METRICS.live = True
    run_stream(spec, uuid.uuid4().hex)


def check_stitching(source: str) -> None:
    """Identity stitching plans its components over the whole input first (:mod:`pipelines.stitched`)."""
    if is_live_source(source):
        raise UserError(f"{source}: identity.stitch needs a bounded input (a file replay), not a live source")


def execute(spec: JobSpec, engine: str) -> dict[str, Any]:
    """Run ``spec`` on ``engine``; return the run summary (also written to Redis and --summary-out)."""
    if spec.config.identity is not None:
        check_stitching(spec.source)
    digest = _not_applied(Path(spec.source), spec.state_file) if spec.state_file is not None else None
    outputs = spec.outputs
    truncate(outputs.changes, outputs.profiles, outputs.dead_letters)
    before = METRICS.snapshot()
    METRICS.models = {}
    flink_counts: Counts = Counter()
    started = time.perf_counter()
    try:
        with Deliveries(spec.config.webhooks, spec.redis_url, spec.redis_prefix) as deliveries:
            if is_stream_source(spec.source):
                _run_live(spec, engine)
            elif engine == "beam":
                from pipelines.beam_replay import run_file

                run_file(spec)
            elif engine == "flink":
                from pipelines.flink_job import run_flink

                flink_counts = run_flink(spec)
            else:
                CoreEngine(spec).run()
            seconds = time.perf_counter() - started  # the delivery drain after the input is not counted
    except (RedisUnavailable, StateFileError) as error:
        raise UserError(str(error)) from None
    except (OSError, sqlite3.Error) as error:  # a full disk, say: one line, and where the state stands
        kept = f"; {spec.state_file} is as the last run that ended well left it" if spec.state_file else ""
        raise click.ClickException(f"the run stopped: {type(error).__name__}: {error}{kept}") from None
    for line in deliveries.report.lines():
        click.echo(line)
    counts = METRICS.snapshot().minus(before)
    # On Flink each worker has models of its own: the summary counts what they learnt together.
    learnt = {key[1]: n for key, n in flink_counts.items() if key[0] == "model_updates"} if engine == "flink" else None
    summary = counts.summary(seconds, engine, spec.config.rules.version, METRICS.models or None, learnt)
    RedisSink(shared_client(spec.redis_url), spec.redis_prefix).write_summary(summary)
    if outputs.summary is not None:
        outputs.summary.parent.mkdir(parents=True, exist_ok=True)
        outputs.summary.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if not counts.balanced():
        raise click.ClickException(f"internal error: counts do not add up: {summary}")
    if spec.state_file is not None:
        # The last step: a run stopped before it leaves the saved state as it was.
        promote_state(spec.state_file, digest)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """The human-readable table of a run."""
    rows = [
        ("events in", summary["events_in"]),
        ("accepted", summary["accepted"]),
        ("duplicates", summary["duplicates"]),
        ("dead letters", sum(summary["dead_letters"].values())),
    ]
    rows += [(f"  {reason}", n) for reason, n in summary["dead_letters"].items()]
    rows.append(("customers", summary["customers"]))
    for segment, directions in summary["segment_changes"].items():
        rows.append((f"{segment} entered / exited", f"{directions['entered']} / {directions['exited']}"))
    rows.append(("seconds", summary["seconds"]))
    rows.append(("events per second", f"{summary['events_per_second']:,.0f}"))
    width = max(len(label) for label, _ in rows)
    click.echo(f"segstream run on {summary['engine']} (rules {summary['rules_version']})")
    for label, value in rows:
        click.echo(f"  {label:<{width}}  {value}")


_common = [
    click.option(
        "--engine",
        type=click.Choice(ENGINES),
        default="beam",
        show_default=True,
        help="beam: Apache Beam DirectRunner. core: the plain-Python reference loop (fastest; files only). "
        "flink: PyFlink DataStream job (local mini-cluster, or the cluster of `flink run`).",
    ),
    click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        help="YAML job configuration (segment rules, cleaning, stream). Default: the packaged one.",
    ),
    click.option("--redis-url", help="Redis server URL (redis://, rediss://, unix://). Default: embedded Redis."),
    click.option(
        "--state-dir",
        type=click.Path(path_type=Path),
        default=Path(".segstream"),
        show_default=True,
        help="Directory of the embedded Redis.",
    ),
    click.option("--redis-prefix", default="segstream", show_default=True, help="Prefix of every Redis key."),
    click.option("--changes-out", type=click.Path(path_type=Path), help="JSONL file of segment-change events."),
    click.option("--profiles-out", type=click.Path(path_type=Path), help="JSONL file of final customer profiles."),
    click.option("--dead-letter-out", type=click.Path(path_type=Path), help="JSONL file of dead letters."),
    click.option("--summary-out", type=click.Path(path_type=Path), help="JSON file of the run summary."),
]


_webhook_options = [
    click.option(
        "--webhook",
        "webhook_urls",
        multiple=True,
        metavar="URL",
        help="Deliver segment changes to this URL as signed Standard Webhooks (repeatable; adds to the "
        "config's webhooks.subscribers).",
    ),
    click.option(
        "--webhook-secret",
        "webhook_secrets",
        multiple=True,
        metavar="whsec_...",
        envvar="SEGSTREAM_WEBHOOK_SECRET",
        help="Signing secret of the --webhook subscribers (repeatable: each request is signed with every "
        "one, for rotation). Env: SEGSTREAM_WEBHOOK_SECRET. Visible in the process list: prefer "
        "--webhook-secret-file.",
    ),
    click.option(
        "--webhook-secret-file",
        type=click.Path(path_type=Path),
        envvar="SEGSTREAM_WEBHOOK_SECRET_FILE",
        help="File of the --webhook subscribers' signing secrets, one per line (instead of --webhook-secret). "
        "Env: SEGSTREAM_WEBHOOK_SECRET_FILE.",
    ),
]


def webhook_options(func: Any) -> Any:
    for option in reversed(_webhook_options):
        func = option(func)
    return func


def _signing_secrets(secrets: tuple[str, ...], secret_file: Path | None, option: str) -> list[str]:
    """The secrets of ``option`` (repeated, or its environment variable), or those of the file of
    ``option``-file, checked; a UserError when both are given or the file is unreadable or empty."""
    try:
        if secret_file is None:
            return [check_secret(secret, option) for secret in secrets]
        if secrets:
            raise UserError(f"{option}-file and {option} (or their SEGSTREAM_WEBHOOK_SECRET[_FILE]) exclude each other")
        return [check_secret(secret, f"{option}-file") for secret in read_secrets(secret_file, f"{option}-file")]
    except ValueError as error:  # WebhookConfigError too
        raise UserError(str(error)) from None


def _with_webhooks(
    config: JobConfig, urls: tuple[str, ...], secrets: tuple[str, ...], secret_file: Path | None
) -> JobConfig:
    """``config`` with the ``--webhook`` subscribers added."""
    checked = _signing_secrets(secrets, secret_file, "--webhook-secret")
    try:
        return dataclasses.replace(config, webhooks=with_command_line(config.webhooks, urls, checked))
    except ValueError as error:  # WebhookConfigError
        raise UserError(str(error)) from None


def _model_key_or_warning(config: JobConfig) -> None:
    """A UserError for a model key that is set but unusable; a warning when the models run without one."""
    try:
        key = model_key()
    except ValueError as error:
        raise UserError(str(error)) from None
    if key is None and config.models is not None:
        click.echo(
            f"warning: without {KEY_FILE_ENV} or {KEY_ENV} model snapshots are neither published to Redis nor "
            "loaded from it",
            err=True,
        )


def _with_horizons(config: JobConfig, churn_days: float | None, propensity_days: float | None) -> JobConfig:
    """``config`` with the label horizons of ``--churn-days`` / ``--propensity-days``."""
    given = {k: v for k, v in (("churn_days", churn_days), ("propensity_days", propensity_days)) if v is not None}
    if not given:
        return config
    if config.models is None:
        raise UserError("--churn-days and --propensity-days need the models: set models.enabled to true")
    try:
        models = dataclasses.replace(config.models, **given)
    except ValueError as error:
        raise UserError(f"--churn-days / --propensity-days: {error} (lower it in the config)") from None
    return dataclasses.replace(config, models=models)


def common_options(func: Any) -> Any:
    for option in reversed(_common):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """segstream: real-time customer segmentation over clickstream and transaction events."""


@main.command()
@click.option(
    "--source",
    required=True,
    help="Input: a .jsonl, .jsonl.gz or .avro file, or redis-stream://HOST:PORT/STREAM[?group=G] (live: "
    "runs until SIGINT/SIGTERM, then drains, acknowledges and exits 0).",
)
@common_options
@click.option(
    "--chunk-events",
    type=click.IntRange(min=1),
    default=250_000,
    show_default=True,
    help="Beam replays a file in pipelines of this many records; memory holds one chunk plus customer state.",
)
@click.option(
    "--as-of", help="After the input ends, advance event time to this time (RFC 3339 or epoch ms), firing timers."
)
@click.option(
    "--now",
    help="Processing clock for the 'too far in the future' check (default: the wall clock, at the start of a "
    "replay and at each record of a live run).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="File replays (core and beam): continue from the customers the previous --resume run saved in "
    "--state-dir, and save them there again; a changed rule set first re-evaluates every saved customer.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on when stderr is a terminal).")
@click.option(
    "--metrics-port", type=int, default=9464, show_default=True, help="Live runs serve /metrics on this port."
)
@click.option("--metrics-address", default="127.0.0.1", show_default=True, help="Address /metrics binds to.")
@click.option(
    "--flink-conf",
    multiple=True,
    metavar="KEY=VALUE",
    help="--engine flink: a Flink configuration setting, e.g. parallelism.default=2, "
    "execution.checkpointing.interval=10s, state.backend.type=rocksdb, python.execution-mode=process, "
    "execution.state-recovery.path=SAVEPOINT (repeatable; defaults in the README).",
)
@click.option(
    "--receipts-out",
    type=click.Path(path_type=Path),
    help="JSONL file the deletion receipts of forget events are appended to (Beam and Flink: at the end of the run).",
)
@click.option(
    "--churn-days",
    type=click.FloatRange(min=1, min_open=False),
    help="Churn label horizon: churned = no purchase for this many days (default: models.churn_days, 90).",
)
@click.option(
    "--propensity-days",
    type=click.FloatRange(min=1, min_open=False),
    help="Propensity label horizon: a purchase within this many days (default: models.propensity_days, 14).",
)
@webhook_options
def run(
    source: str,
    engine: str,
    config_path: Path | None,
    redis_url: str | None,
    state_dir: Path,
    redis_prefix: str,
    changes_out: Path | None,
    profiles_out: Path | None,
    dead_letter_out: Path | None,
    summary_out: Path | None,
    chunk_events: int,
    as_of: str | None,
    now: str | None,
    resume: bool,
    progress: bool | None,
    metrics_port: int,
    metrics_address: str,
    flink_conf: tuple[str, ...],
    receipts_out: Path | None,
    churn_days: float | None,
    propensity_days: float | None,
    webhook_urls: tuple[str, ...],
    webhook_secrets: tuple[str, ...],
    webhook_secret_file: Path | None,
) -> None:
    """Run the job over SOURCE and print the summary."""
    _check_source(source, engine)
    if resume and (engine not in ("core", "beam") or is_stream_source(source)):
        raise UserError("--resume continues file replays on --engine core or beam")
    engine_conf = _flink_conf(flink_conf)
    config = _with_webhooks(_load_config(config_path), webhook_urls, webhook_secrets, webhook_secret_file)
    config = _with_horizons(config, churn_days, propensity_days)
    now_ms = _timestamp(now, "--now") or int(datetime.now(UTC).timestamp() * 1000)
    as_of_ms = _timestamp(as_of, "--as-of")
    url, _server = _redis(redis_url, state_dir)
    _model_key_or_warning(config)
    spec = JobSpec(
        source=source,
        config=config,
        redis_url=url,
        outputs=OutputPaths(changes_out, profiles_out, dead_letter_out, summary_out, receipts_out),
        now_ms=now_ms,
        as_of=as_of_ms,
        progress=sys.stderr.isatty() if progress is None else progress,
        redis_prefix=redis_prefix,
        metrics_port=metrics_port,
        metrics_address=metrics_address,
        chunk_events=chunk_events,
        engine_conf=engine_conf,
        wall_clock=now is None and is_live_source(source),
        state_file=state_dir / STATE_FILE if resume else None,
    )
    print_summary(execute(spec, engine))


@main.command()
@click.option("--customers", default=500, show_default=True, help="Shoppers in the sample stream.")
@common_options
def demo(
    customers: int,
    engine: str,
    config_path: Path | None,
    redis_url: str | None,
    state_dir: Path,
    redis_prefix: str,
    changes_out: Path | None,
    profiles_out: Path | None,
    dead_letter_out: Path | None,
    summary_out: Path | None,
) -> None:
    """Run a built-in sample stream through the job into the embedded Redis and a local webhook receiver
    (no network beyond 127.0.0.1, no data files)."""
    from transforms.sample_stream import sample_lines

    config = _load_config(config_path)
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    receiver = WebhookReceiver([secret], state_dir / "webhooks.jsonl")
    server = receiver.serve()
    subscriber = make_subscriber({"name": "demo-receiver", "url": server.url, "secrets": [secret]}, "demo")
    webhooks = dataclasses.replace(config.webhooks, subscribers=(*config.webhooks.subscribers, subscriber))
    config = dataclasses.replace(config, webhooks=webhooks)
    source = state_dir / "demo-events.jsonl"
    source.write_text("\n".join(sample_lines(customers)) + "\n", encoding="utf-8")
    url, _server = _redis(redis_url, state_dir)
    spec = JobSpec(
        source=str(source),
        config=config,
        redis_url=url,
        outputs=OutputPaths(
            changes_out or state_dir / "changes.jsonl",
            profiles_out or state_dir / "profiles.jsonl",
            dead_letter_out or state_dir / "dead_letters.jsonl",
            summary_out or state_dir / "summary.json",
        ),
        now_ms=int(datetime.now(UTC).timestamp() * 1000),
        redis_prefix=redis_prefix,
    )
    try:
        summary = execute(spec, engine)
    finally:
        server.stop()
        receiver.close()
    print_summary(summary)
    click.echo(
        f"webhook receiver at {server.url}: {receiver.accepted} accepted (signature verified), "
        f"{receiver.duplicates} repeats dropped, {receiver.rejected} rejected"
    )
    click.echo(
        f"outputs in {state_dir}/ (changes.jsonl, profiles.jsonl, dead_letters.jsonl, summary.json, "
        f"webhooks.jsonl); Redis keys under '{redis_prefix}:'"
    )


@main.command(name="import")
@click.argument("dataset", type=click.Choice(sorted(ADAPTERS)))
@click.argument("input_path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.argument("output_path", type=click.Path(path_type=Path, dir_okay=False))
def import_(dataset: str, input_path: Path, output_path: Path) -> None:
    """Convert a public DATASET file to input-contract JSONL (.jsonl or .jsonl.gz), one event per row."""
    output_path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if output_path.name.endswith(".gz") else open
    n = 0
    with opener(output_path, "wt", encoding="utf-8") as out:  # type: ignore[operator]
        for event in ADAPTERS[dataset](input_path):
            out.write(json.dumps(event, ensure_ascii=False) + "\n")
            n += 1
    click.echo(f"{n:,} events written to {output_path}")


@main.command()
@click.argument("output_path", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--truth",
    "truth_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="JSON file of the ground truth: the person of every identifier, shared ones, link groups, counts.",
)
@click.option("--persons", type=int, default=1000, show_default=True, help="Persons in the population.")
@click.option("--days", type=int, default=14, show_default=True, help="Days of event time.")
@click.option("--start", help="First day (RFC 3339 with an offset, or epoch ms). Default: 2025-06-01T00:00:00Z.")
@click.option("--seed", type=int, default=7, show_default=True, help="Same seed, same bytes.")
@click.option("--login-share", type=float, default=0.6, show_default=True, help="Persons with a user_id.")
@click.option("--email-share", type=float, default=0.6, show_default=True, help="Persons who give an email.")
@click.option(
    "--shared-device-share",
    type=float,
    default=0.05,
    show_default=True,
    help="Persons in households of 2-3 sharing a family computer.",
)
@click.option("--placeholder-rate", type=float, default=0.01, show_default=True, help="Events with a placeholder id.")
@click.option("--duplicate-rate", type=float, default=0.02, show_default=True, help="Events delivered twice.")
@click.option("--late-rate", type=float, default=0.01, show_default=True, help="Events delivered late.")
@click.option("--dirty-rate", type=float, default=0.005, show_default=True, help="Events replaced by a bad record.")
@click.option(
    "--email-salt",
    help="Key the truth's emails as the job stores them, HMAC-SHA256 with this salt (default: clear addresses).",
)
def generate(
    output_path: Path,
    truth_path: Path,
    persons: int,
    days: int,
    start: str | None,
    seed: int,
    login_share: float,
    email_share: float,
    shared_device_share: float,
    placeholder_rate: float,
    duplicate_rate: float,
    late_rate: float,
    dirty_rate: float,
    email_salt: str | None,
) -> None:
    """Write a realistic stream with ground truth to OUTPUT_PATH (.jsonl or .jsonl.gz) and --truth."""
    from transforms.generator import DEFAULT_START_MS, GeneratorConfig, StreamGenerator, truth_for_salt

    start_ms = _timestamp(start, "--start")
    try:
        config = GeneratorConfig(
            persons=persons,
            days=days,
            start_ms=DEFAULT_START_MS if start_ms is None else start_ms,
            seed=seed,
            login_share=login_share,
            email_share=email_share,
            shared_device_share=shared_device_share,
            placeholder_rate=placeholder_rate,
            duplicate_rate=duplicate_rate,
            late_rate=late_rate,
            dirty_rate=dirty_rate,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    if output_path.resolve() == truth_path.resolve():
        raise UserError("--truth must be another file than the stream")
    generator = StreamGenerator(config)
    for path in (output_path, truth_path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab"):
                pass
        except OSError as error:
            raise UserError(f"cannot write {path}: {error.strerror}") from None
    with open(output_path, "wb") as raw:
        # mtime=0 and no name in the gzip header: the same seed gives the same bytes.
        binary = (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if output_path.name.endswith(".gz") else raw
        )
        with binary:
            for line in generator.lines():
                binary.write(line.encode() + b"\n")
    truth = generator.truth()
    if email_salt is not None:
        truth = truth_for_salt(truth, email_salt)
    truth_path.write_text(json.dumps(truth, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    counts = truth["counts"]
    click.echo(
        f"{counts['lines']:,} lines ({counts['events']:,} events, {counts['duplicates']:,} duplicates, "
        f"{counts['late']:,} late, {sum(counts['dirty'].values()):,} dirty) of {counts['persons']:,} persons, "
        f"{sum(counts['identifiers'].values()):,} identifiers, {counts['shared_devices']:,} shared devices "
        f"-> {output_path}; truth -> {truth_path}"
    )


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


@main.command(name="webhook-receiver")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8099, show_default=True, help="Port to listen on (0: any free one).")
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    metavar="whsec_...",
    envvar="SEGSTREAM_WEBHOOK_SECRET",
    help="Secret a signature must match (repeatable: any may match). Env: SEGSTREAM_WEBHOOK_SECRET. Visible in "
    "the process list: prefer --secret-file.",
)
@click.option(
    "--secret-file",
    type=click.Path(path_type=Path),
    envvar="SEGSTREAM_WEBHOOK_SECRET_FILE",
    help="File of the secrets, one per line (instead of --secret). Env: SEGSTREAM_WEBHOOK_SECRET_FILE.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("webhooks.jsonl"),
    show_default=True,
    help="JSONL file of accepted deliveries (appended; its ids count as seen).",
)
@click.option(
    "--tolerance",
    type=click.IntRange(1, MAX_TOLERANCE_S),
    default=MAX_TOLERANCE_S,
    show_default=True,
    help="Seconds a webhook-timestamp may differ from this clock.",
)
@click.option(
    "--max-body",
    type=click.IntRange(min=1),
    default=MAX_BODY_BYTES,
    show_default=True,
    help="Largest request body read, in bytes; a larger Content-Length gets 413.",
)
def webhook_receiver(
    host: str,
    port: int,
    secrets: tuple[str, ...],
    secret_file: Path | None,
    out: Path,
    tolerance: int,
    max_body: int,
) -> None:
    """Receive signed webhooks until SIGINT/SIGTERM: verify, drop repeated webhook-ids, append to --out."""
    checked = _signing_secrets(secrets, secret_file, "--secret")
    if not checked:
        raise UserError("webhook-receiver needs --secret-file FILE or SEGSTREAM_WEBHOOK_SECRET_FILE (or --secret)")
    stop = _stop_on_signals()
    try:
        receiver = WebhookReceiver(checked, out, tolerance, max_body_bytes=max_body)
        server = receiver.serve(host, port)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port} or write {out}: {error.strerror}") from None
    click.echo(f"receiving on {server.url}; accepted deliveries go to {out}; Ctrl-C stops", err=True)
    while not stop.wait(0.2):
        pass
    server.stop()
    receiver.close()
    click.echo(f"accepted {receiver.accepted}, repeats dropped {receiver.duplicates}, rejected {receiver.rejected}")


_redis_options = [
    click.option("--redis-url", help="Redis server URL. Default: the embedded Redis in --state-dir."),
    click.option("--state-dir", type=click.Path(path_type=Path), default=Path(".segstream"), show_default=True),
    click.option("--redis-prefix", default="segstream", show_default=True, help="Prefix of every Redis key."),
]


def redis_options(func: Any) -> Any:
    for option in reversed(_redis_options):
        func = option(func)
    return func


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML with webhooks.subscribers.")
@webhook_options
@redis_options
@click.option("--until-empty", is_flag=True, help="Exit once every queue is empty (default: until SIGINT/SIGTERM).")
def deliver(
    config_path: Path | None,
    webhook_urls: tuple[str, ...],
    webhook_secrets: tuple[str, ...],
    webhook_secret_file: Path | None,
    redis_url: str | None,
    state_dir: Path,
    redis_prefix: str,
    until_empty: bool,
) -> None:
    """Deliver the queued segment changes to the subscribers (what a run left queued, replayed dead letters)."""
    try:
        config = _with_webhooks(load_config(config_path), webhook_urls, webhook_secrets, webhook_secret_file)
    except ConfigError as error:
        raise UserError(str(error)) from None
    if not config.webhooks.subscribers:
        raise UserError("no subscribers: give --config with webhooks.subscribers, or --webhook URL")
    url, _server = _redis(redis_url, state_dir)
    webhooks = dataclasses.replace(config.webhooks, drain_timeout_ms=0)
    stop = _stop_on_signals()
    try:
        with Deliveries(webhooks, url, redis_prefix, register_routes=False) as deliveries:
            deliveries.wait(stop, until_empty)
    except RedisUnavailable as error:
        raise UserError(str(error)) from None
    for line in deliveries.report.lines():
        click.echo(line)


@main.group()
def deliveries() -> None:
    """Webhook delivery queues and their dead letters in Redis."""


@deliveries.command()
@redis_options
def status(redis_url: str | None, state_dir: Path, redis_prefix: str) -> None:
    """Queued and dead-lettered deliveries per subscriber of the last run."""
    url, _server = _redis(redis_url, state_dir)
    client = shared_client(url)
    for route in load_routes(client, redis_prefix):
        depth = DeliveryQueue(client, redis_prefix, route.name).depth()
        click.echo(f"{route.name}: {depth.queued} queued, {depth.dead} dead letters")


@deliveries.command()
@redis_options
@click.option("--subscriber", "names", multiple=True, help="Only this subscriber (repeatable). Default: all.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many per subscriber, oldest first.")
def replay(
    redis_url: str | None, state_dir: Path, redis_prefix: str, names: tuple[str, ...], limit: int | None
) -> None:
    """Queue dead-lettered deliveries again, with their original webhook-id; `segstream deliver` or the
    next run sends them."""
    url, _server = _redis(redis_url, state_dir)
    client = shared_client(url)
    for name in names or [route.name for route in load_routes(client, redis_prefix)]:
        moved = DeliveryQueue(client, redis_prefix, name).replay(limit)
        click.echo(f"{name}: {moved} dead letters queued again")


@main.command()
@click.option(
    "--identifier",
    "identifiers",
    multiple=True,
    required=True,
    metavar="KIND:VALUE",
    help="An identifier of the customer to forget, KIND one of user, email, anon, device (repeatable); an "
    "email in clear is normalized and hashed with the configured salt.",
)
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML job configuration (the salt).")
@redis_options
@click.option(
    "--scrub",
    "scrub_paths",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A JSONL output (changes, dead letters, profiles) to rewrite without the customer's lines (repeatable).",
)
@click.option("--receipts-out", type=click.Path(path_type=Path), help="JSONL file the receipts are appended to.")
def forget(
    identifiers: tuple[str, ...],
    config_path: Path | None,
    redis_url: str | None,
    state_dir: Path,
    redis_prefix: str,
    scrub_paths: tuple[Path, ...],
    receipts_out: Path | None,
) -> None:
    """Erase customers (right to erasure) from Redis, the core engine's saved state in --state-dir and the
    --scrub files, leaving a deletion receipt each. A running job learns of it by a `forget` event."""
    from pipelines.forget import forget_customers, parse_identifier

    salt = _load_config(config_path).cleaning.email_salt
    try:
        parsed = [parse_identifier(identifier, salt) for identifier in identifiers]
    except ValueError as error:
        raise UserError(str(error)) from None
    url, _server = _redis(redis_url, state_dir)
    try:
        receipts = forget_customers(
            shared_client(url), redis_prefix, salt, parsed, state_dir / STATE_FILE, scrub_paths, receipts_out
        )
    except RedisUnavailable as error:
        raise UserError(str(error)) from None
    for receipt in receipts:
        METRICS.forgets.inc()
        removed = ", ".join(f"{kind} {n}" for kind, n in sorted(receipt.removed.items()))
        click.echo(f"forgot customer {receipt.customer_ref[:16]}: removed {removed}; receipt {receipt.receipt_id}")


main.add_command(backtest)
main.add_command(generate_cohort)


if __name__ == "__main__":
    main()
