"""Throughput of the PyFlink job against the plain core loop (and Beam) on the same replay.

Every engine runs ``pipelines.cli.execute`` on the same generated file (``sample_lines``), one
after the other in this process, against one embedded Redis (flushed between runs), with every
file output. Flink runs locally (a mini-cluster in a JVM that PyFlink starts, Python in thread mode,
checkpoints every 10 s): its time includes starting the JVM and the job, measured on its own
with a one-event input and reported, so the steady rate (seconds minus start-up) can be read too.
The outputs are compared (changes and final profiles must be identical).

Run from the repository root::

    python bench/flink_throughput.py                     # about 80,000 events: core, Flink
    python bench/flink_throughput.py --customers 20000 --beam
    python bench/flink_throughput.py --flink-conf parallelism.default=2
    python bench/flink_throughput.py --flink-conf segstream.batch-size=1   # no batches
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from pipelines.cli import execute
from pipelines.flink_env import parse_conf
from pipelines.job import JobSpec
from pipelines.outputs import OutputPaths
from pipelines.redis_store import start_embedded
from transforms.config import load_config
from transforms.profile import SCORE_FEATURES
from transforms.sample_stream import sample_lines


def run(engine: str, source: Path, out: Path, redis_url: str, conf: dict[str, str]) -> dict[str, Any]:
    redis.Redis.from_url(redis_url).flushall()
    spec = JobSpec(
        source=str(source),
        config=load_config(None),
        redis_url=redis_url,
        outputs=OutputPaths(out / "changes.jsonl", out / "profiles.jsonl", out / "dead_letters.jsonl"),
        now_ms=int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000),
        engine_conf=tuple(conf.items()),
    )
    started = time.perf_counter()
    summary = execute(spec, engine)
    summary["wall"] = time.perf_counter() - started
    return summary


def sorted_lines(path: Path) -> list[str]:
    """The file's records, sorted, less the model scores: each engine's models learn in its own
    processing order (the parity suite compares the same way)."""
    records = (json.loads(line) for line in path.read_text().splitlines())
    return sorted(
        json.dumps({k: v for k, v in record.items() if k not in SCORE_FEATURES}, sort_keys=True) for record in records
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=5000, help="shoppers (~15.6 lines each)")
    parser.add_argument("--beam", action="store_true", help="also run the Beam replay")
    parser.add_argument("--flink-conf", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    conf = parse_conf(args.flink_conf)
    with tempfile.TemporaryDirectory(prefix="segstream-bench-") as tmp:
        root = Path(tmp)
        url, _server = start_embedded(root / "redis")
        source, tiny = root / "events.jsonl", root / "one.jsonl"
        source.write_text("\n".join(sample_lines(args.customers)) + "\n")
        tiny.write_text(next(iter(sample_lines(1))) + "\n")
        # Beam before Flink: PyFlink's client registers Beam operations that break later Beam pipelines.
        engines = ["core", *(["beam"] if args.beam else []), "flink"]
        results = {engine: run(engine, source, root / engine, url, conf) for engine in engines[:-1]}
        startup = run("flink", tiny, root / "tiny", url, conf)["wall"]
        results["flink"] = run("flink", source, root / "flink", url, conf)
        core_rate = results["core"]["events_in"] / results["core"]["wall"]
        print(f"input: {results['core']['events_in']:,} records, {args.customers:,} customers")
        print(f"flink start-up (one-event job): {startup:.1f} s\n")
        print("| engine | seconds | events/s | vs core | events/s without start-up | vs core |")
        print("|---|---:|---:|---:|---:|---:|")
        for engine, summary in results.items():
            rate = summary["events_in"] / summary["wall"]
            steady = summary["events_in"] / max(summary["wall"] - (startup if engine == "flink" else 0), 1e-9)
            print(
                f"| {engine} | {summary['wall']:.1f} | {rate:,.0f} | {rate / core_rate:.2f}x "
                f"| {steady:,.0f} | {steady / core_rate:.2f}x |"
            )
        for engine in engines[1:]:
            same = all(
                sorted_lines(root / "core" / name) == sorted_lines(root / engine / name)
                for name in ("changes.jsonl", "profiles.jsonl")
            )
            print(f"\n{engine}: changes and final profiles (less the scores) identical to the core loop's: {same}")


if __name__ == "__main__":
    main()
