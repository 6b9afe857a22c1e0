"""Where the core engine spends its time per event: one ``CoreEngine`` run under cProfile.

The run is the one ``bench/throughput.py`` times as "core engine end to end" (embedded Redis, file
outputs in a temp dir). Printed: the top functions by cumulative and by total (self) time, then the
heaviest functions and modules by self time per input event. cProfile slows cheap, frequent calls
the most, so read the figures as shares of the run rather than as absolute costs.

Run from the repository root (the package must be installed, e.g. ``pip install -e .``)::

    python bench/profile_core.py                          # 100,000 generated events, top 25
    python bench/profile_core.py --events 20000 --top 40
    python bench/profile_core.py --source /tmp/uci.jsonl.gz
    python bench/profile_core.py --save /tmp/core.prof    # then: python -m pstats /tmp/core.prof
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from throughput import (  # the sibling script (bench/ is on sys.path when run)
    check_source_arg,
    generate_events,
    make_spec,
)

from pipelines.core_engine import CoreEngine
from pipelines.metrics import METRICS
from pipelines.redis_store import start_embedded
from transforms.config import load_config

REPO = Path(__file__).resolve().parent.parent

# (file, line, function) -> (primitive calls, total calls, self seconds, cumulative seconds, callers)
StatsTable = dict[tuple[str, int, str], tuple[int, int, float, float, dict]]

# Steps of the core engine's per-event path: cumulative time of (file, function, only when called from
# this file or None). No step's functions call another step's, so the shares add up.
STEPS: list[tuple[str, list[tuple[str, str, str | None]]]] = [
    (
        "read + JSON decode (sources)",
        [("pipelines/sources.py", "_jsonl", None), ("pipelines/sources.py", "_avro", None)],
    ),
    ("cleaning (job.clean_record)", [("pipelines/job.py", "clean_record", None)]),
    ("admit (late check, timer)", [("transforms/customer.py", "admit", None)]),
    ("keyed logic: dedup, features, rules (on_timer)", [("transforms/customer.py", "on_timer", None)]),
    ("profile dicts (CustomerLogic.profile)", [("transforms/customer.py", "profile", None)]),
    (
        "to_dict for the JSONL files (dataclasses.asdict)",
        [
            ("transforms/changes.py", "to_dict", "pipelines/outputs.py"),
            ("transforms/dead_letters.py", "to_dict", "pipelines/outputs.py"),
        ],
    ),
    ("JSONL writes (JsonLinesWriter.write: json.dumps)", [("pipelines/outputs.py", "write", None)]),
    ("Redis writes (RedisSink.write: to_dict, json, scripts)", [("pipelines/redis_store.py", "write", None)]),
    (
        "metrics (prometheus_client inc/labels)",
        [("prometheus_client/metrics.py", "inc", None), ("prometheus_client/metrics.py", "labels", None)],
    ),
]


def short_path(file: str) -> str:
    """``site-packages/x/y.py`` -> ``x/y.py``; repository files relative to it; built-ins as they are."""
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1]
    path = Path(file)
    if path.is_absolute() and path.is_relative_to(REPO):
        return str(path.relative_to(REPO))
    if "/lib/python3" in file:
        return "stdlib/" + file.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return file


def module_of(file: str) -> str:
    """The group a function's self time is added to: a package, a repository module, or built-ins."""
    if file == "~":
        return "built-ins (C functions)"
    short = short_path(file)
    if short.startswith(("pipelines/", "transforms/")):
        return short
    return short.split("/", 1)[0] if "/" in short else short


def profile_run(source: Path, workdir: Path) -> tuple[cProfile.Profile, float, int]:
    """Run the core engine once over ``source`` under cProfile; return the profile, seconds and events."""
    url, server = start_embedded(workdir / "redis")
    try:
        spec = make_spec(source, load_config(None), url, workdir / "core")
        engine = CoreEngine(spec)
        before = METRICS.snapshot()
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        engine.run()
        profiler.disable()
        seconds = time.perf_counter() - started
    finally:
        server.shutdown()
    events = METRICS.snapshot().minus(before).totals["events_in"]
    return profiler, seconds, events


def print_top(stats: pstats.Stats, key: str, top: int) -> None:
    print(f"\n=== top {top} by {key} ===")
    stats.sort_stats(key).print_stats(top)


def step_seconds(table: StatsTable, file: str, name: str, via: str | None) -> float:
    """Cumulative seconds of ``file:name`` (only the calls made from the file ``via``, if given)."""
    seconds = 0.0
    for (f, _, n), row in table.items():
        if (short_path(f), n) != (file, name):
            continue
        if via is None:
            seconds += row[3]
        else:
            seconds += sum(stats[3] for caller, stats in row[4].items() if short_path(caller[0]) == via)
    return seconds


def print_steps(table: StatsTable, events: int, total: float) -> None:
    """Cumulative time of each step of the per-event path; the rest is the engine loop and glue."""
    print("\n=== per-event cost by step (cumulative time of the step's functions) ===")
    print(f"{'µs/event':>9} {'share':>6}  step")
    covered = 0.0
    for label, functions in STEPS:
        seconds = sum(step_seconds(table, *function) for function in functions)
        covered += seconds
        print(f"{seconds / events * 1e6:>9.2f} {seconds / total:>6.1%}  {label}")
    rest = total - covered
    print(f"{rest / events * 1e6:>9.2f} {rest / total:>6.1%}  the rest (engine loop, heap, sink buffering)")


def print_per_event(table: StatsTable, events: int, top: int) -> None:
    """The functions with the most self time, per input event."""
    print(f"\n=== top {top} functions by self time per event ===")
    print(f"{'self µs/ev':>10} {'cum µs/ev':>10} {'calls/ev':>9}  function")
    rows = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:top]
    for (file, line, name), (_, calls, self_s, cum_s, _) in rows:
        where = name if file == "~" else f"{short_path(file)}:{line}({name})"
        print(f"{self_s / events * 1e6:>10.2f} {cum_s / events * 1e6:>10.2f} {calls / events:>9.2f}  {where}")


def print_by_module(table: StatsTable, events: int, total: float, top: int) -> None:
    """Self time summed by package or repository module: where the per-event cost lives."""
    groups: defaultdict[str, float] = defaultdict(float)
    for (file, _, _), (_, _, self_s, _, _) in table.items():
        groups[module_of(file)] += self_s
    print(f"\n=== self time by package / module (top {top}) ===")
    print(f"{'µs/event':>9} {'share':>6}  module")
    for module, self_s in sorted(groups.items(), key=lambda item: item[1], reverse=True)[:top]:
        print(f"{self_s / events * 1e6:>9.2f} {self_s / total:>6.1%}  {module}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Profile one core-engine run (cProfile) and show the top costs.")
    parser.add_argument(
        "--events", type=int, default=100_000, help="generate about this many input lines (default: 100000)"
    )
    parser.add_argument("--source", type=Path, help="use this .jsonl/.jsonl.gz/.avro file instead of generating")
    parser.add_argument("--top", type=int, default=25, help="rows per listing (default: 25)")
    parser.add_argument("--save", type=Path, metavar="FILE", help="also dump the raw profile to FILE (pstats)")
    args = parser.parse_args(argv)
    if args.events <= 0 or args.top <= 0:
        parser.error("--events and --top must be positive")
    check_source_arg(parser, args.source)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="segstream-profile-") as tmp:
        workdir = Path(tmp)
        if args.source is not None:
            source = args.source
            print(f"input {source}")
        else:
            source, lines = generate_events(args.events, workdir)
            print(f"input: {lines:,} lines generated by sample_lines (asked for {args.events:,})")
        profiler, seconds, events = profile_run(source, workdir)
    if args.save is not None:
        profiler.dump_stats(args.save)
    stats = pstats.Stats(profiler)
    table: StatsTable = stats.stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in table.values())
    print(f"core engine under cProfile: {events:,} events in {seconds:.2f} s = {seconds / events * 1e6:.1f} µs/event")
    print_steps(table, events, total)
    print_by_module(table, events, total, args.top)
    print_per_event(table, events, args.top)
    stats.strip_dirs()
    print_top(stats, "cumulative", args.top)  # pstats' own listings
    print_top(stats, "tottime", args.top)
    if args.save is not None:
        print(f"raw profile written to {args.save}")


if __name__ == "__main__":
    main()
