"""The ``segstream`` command line: run, demo, import."""

from __future__ import annotations

import gzip
import json
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from pipelines.core_engine import CoreEngine
from pipelines.job import JobSpec
from pipelines.metrics import METRICS
from pipelines.outputs import OutputPaths, truncate
from pipelines.redis_store import RedisSink, RedisUnavailable, shared_client, start_embedded
from pipelines.redis_stream import StreamReader, StreamSpec, is_stream_source
from pipelines.sources import SourceError, check_source
from transforms.adapters import ADAPTERS
from transforms.config import SALT_ENV, ConfigError, JobConfig, load_config
from transforms.dead_letters import Rejection
from transforms.timestamps import parse_event_time

ENGINES = ("beam", "core")


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


def _check_source(source: str) -> None:
    """Fail fast on a source that cannot be read, before anything starts."""
    try:
        if is_stream_source(source):
            StreamSpec.parse(source)
        else:
            check_source(Path(source))
    except (SourceError, ValueError) as error:
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
            return start_embedded(state_dir)
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


def execute(spec: JobSpec, engine: str) -> dict[str, Any]:
    """Run ``spec`` on ``engine``; return the run summary (also written to Redis and --summary-out)."""
    outputs = spec.outputs
    truncate(outputs.changes, outputs.profiles, outputs.dead_letters)
    before = METRICS.snapshot()
    started = time.perf_counter()
    if is_stream_source(spec.source):
        _run_live(spec, engine)
    elif engine == "beam":
        from pipelines.beam_replay import run_file

        run_file(spec)
    else:
        CoreEngine(spec).run()
    counts = METRICS.snapshot().minus(before)
    summary = counts.summary(time.perf_counter() - started, engine, spec.config.rules.version)
    RedisSink(shared_client(spec.redis_url), spec.redis_prefix).write_summary(summary)
    if outputs.summary is not None:
        outputs.summary.parent.mkdir(parents=True, exist_ok=True)
        outputs.summary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if not counts.balanced():
        raise click.ClickException(f"internal error: counts do not add up: {summary}")
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
        help="beam: Apache Beam DirectRunner. core: the plain-Python reference loop (fastest; files only).",
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
@click.option("--now", help="Processing clock for the 'too far in the future' check (default: wall clock).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on when stderr is a terminal).")
@click.option(
    "--metrics-port", type=int, default=9464, show_default=True, help="Live runs serve /metrics on this port."
)
@click.option("--metrics-address", default="127.0.0.1", show_default=True, help="Address /metrics binds to.")
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
    progress: bool | None,
    metrics_port: int,
    metrics_address: str,
) -> None:
    """Run the job over SOURCE and print the summary."""
    _check_source(source)
    config = _load_config(config_path)
    now_ms = _timestamp(now, "--now") or int(datetime.now(UTC).timestamp() * 1000)
    as_of_ms = _timestamp(as_of, "--as-of")
    url, _server = _redis(redis_url, state_dir)
    spec = JobSpec(
        source=source,
        config=config,
        redis_url=url,
        outputs=OutputPaths(changes_out, profiles_out, dead_letter_out, summary_out),
        now_ms=now_ms,
        as_of=as_of_ms,
        progress=sys.stderr.isatty() if progress is None else progress,
        redis_prefix=redis_prefix,
        metrics_port=metrics_port,
        metrics_address=metrics_address,
        chunk_events=chunk_events,
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
    """Run a built-in sample stream through the job into the embedded Redis (no network, no data files)."""
    from transforms.sample_stream import sample_lines

    config = _load_config(config_path)
    state_dir.mkdir(parents=True, exist_ok=True)
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
    )
    summary = execute(spec, engine)
    print_summary(summary)
    click.echo(
        f"outputs in {state_dir}/ (changes.jsonl, profiles.jsonl, dead_letters.jsonl, summary.json); "
        f"Redis keys under '{redis_prefix}:'"
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


if __name__ == "__main__":
    main()
