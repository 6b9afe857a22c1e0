"""Cost of the per-customer core: feature update and rule evaluation per event, state size, memory.

Three measurements, each against a baseline run in the same process:

1. **Per event** (generated sample events, cleaned once, untimed): the baseline folds every event
   into the lifetime counters only (``Features.add``, what the foundation kept); then the whole
   profile update (``ProfileModel.add``: lifetime, windows, sessions, engagement, RFM); then the
   profile update plus evaluating every segment of the configuration (``RuleSet.evaluate``); then a
   full ``CustomerLogic.advance`` per event (dedup, profile update, the segments the event can affect
   and those whose timer is due, changes, expiry). Printed: microseconds per event and the ratio to the baseline.
2. **State bytes per customer**: the pickled ``CustomerState`` (what the engines store), right after
   the customers' activity (active) and once their windows have expired (dormant).
3. **Memory on an endless stream** (``--memory``): the core loop over a stream of new customers who
   each stay a few hours (``--customers`` over ``--days``), sampling RSS and the customers held in
   memory; dormant customers move to disk, so both should level off once the first windows expire.

Run from the repository root (the package installed, e.g. ``pip install -e .``)::

    python bench/segments.py                                   # 200,000 events: per event + state size
    python bench/segments.py --config examples/rfm_segments.yaml
    python bench/segments.py --memory --events 1000000 --customers 100000 --days 120
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psutil
from timing import best_seconds

from pipelines.core_engine import CoreEngine
from pipelines.job import JobSpec, clean_record
from pipelines.outputs import OutputPaths
from pipelines.redis_store import start_embedded
from pipelines.sources import read_records
from transforms.cleaning import Cleaner
from transforms.config import JobConfig, load_config
from transforms.customer import CustomerState
from transforms.events import Event
from transforms.features import Features

DAY = 86_400_000
MIB = 1024 * 1024
LINES_PER_CUSTOMER = 15.6


def write_stream(path: Path, customers: int, arrival_gap_ms: int) -> int:
    from transforms.sample_stream import sample_lines

    n = 0
    with path.open("w", encoding="utf-8") as out:
        for line in sample_lines(customers=customers, arrival_gap_ms=arrival_gap_ms):
            out.write(line + "\n")
            n += 1
    return n


def generate(path: Path, customers: int, arrival_gap_ms: int) -> int:
    """Write the stream in a child process, so its sort does not inflate this process's memory."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(write_stream, path, customers, arrival_gap_ms).result()


def load_events(path: Path, config: JobConfig) -> list[Event]:
    """The file's accepted events, cleaned once (untimed), in event-time order."""
    cleaner = Cleaner(config.cleaning)
    now = int(datetime.now(UTC).timestamp() * 1000)
    cleaned = (clean_record(cleaner, record, now) for record in read_records(path, config.cleaning.max_record_bytes))
    return sorted((e for e in cleaned if isinstance(e, Event)), key=lambda e: e.order_key)


def per_event(events: list[Event], config: JobConfig, repeat: int) -> list[CustomerState]:
    """Time the three stages; return the customer states of the last full run."""
    keys = [e.customer_key for e in events]
    states: list[CustomerState] = []

    def lifetime() -> None:
        features: dict[str, Features] = {}
        for key, event in zip(keys, events, strict=True):
            (features.get(key) or features.setdefault(key, Features())).add(event)

    def profile() -> None:
        model = config.logic().model
        profiles: dict[str, CustomerState] = {}
        for key, event in zip(keys, events, strict=True):
            state = profiles.get(key) or profiles.setdefault(key, CustomerState(key))
            model.add(state.profile, event)

    def evaluated() -> None:
        logic = config.logic()
        profiles: dict[str, CustomerState] = {}
        for key, event in zip(keys, events, strict=True):
            state = profiles.get(key) or profiles.setdefault(key, CustomerState(key))
            logic.model.add(state.profile, event)
            logic.rules.evaluate(logic.model.view(state.profile, event.ts), event.ts)

    def full() -> None:
        logic = config.logic()
        customers: dict[str, CustomerState] = {}
        for key, event in zip(keys, events, strict=True):
            state = customers.get(key) or customers.setdefault(key, logic.new_state(key))
            logic.advance(state, [event], event.ts)
        states[:] = customers.values()

    base = best_seconds(repeat, lifetime)
    rows = [
        ("lifetime counters only (baseline)", base),
        ("profile update (windows, sessions, engagement, RFM)", best_seconds(repeat, profile)),
        ("profile update + evaluating every segment", best_seconds(repeat, evaluated)),
        ("CustomerLogic.advance: dedup, profile, affected segments, changes, expiry", best_seconds(repeat, full)),
    ]
    print(f"\n{len(events):,} events, {len(set(keys)):,} customers, rules {config.rules.version} "
          f"({len(config.rules.segments)} segments), best of {repeat}")  # fmt: skip
    print("| stage | µs per event | vs baseline |\n|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds / len(events) * 1e6:.2f} | {seconds / base:.2f}x |")
    return states


def state_sizes(states: list[CustomerState], config: JobConfig) -> None:
    logic = config.logic()

    def describe(label: str) -> None:
        sizes = sorted(len(pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)) for s in states)
        p99 = sizes[min(len(sizes) - 1, int(len(sizes) * 0.99))]
        print(
            f"| {label} | {statistics.mean(sizes):,.0f} | {statistics.median(sizes):,.0f} | {p99:,} | {sizes[-1]:,} |"
        )

    print("\nPickled CustomerState bytes\n| customers | mean | median | p99 | max |\n|---|---:|---:|---:|---:|")
    describe("active (right after their events)")
    end = max(s.clock or 0 for s in states) + logic.model.windows.longest + 2 * DAY
    for state in states:
        logic.advance(state, [], end)
    describe("dormant (windows expired)")


class Watched(CoreEngine):
    """The core loop, noting when the stream ends (the end of input then stores every customer)."""

    started = 0.0
    stream_seconds = 0.0

    def _finish(self, end: int) -> None:
        self.stream_seconds = time.perf_counter() - self.started
        super()._finish(end)


def watch(path: Path, config: JobConfig, interval: float) -> tuple[float, list[tuple[float, int, int]]]:
    """One core-loop run over ``path`` with embedded Redis: the stream's seconds (without the end of
    input) and samples of (time, RSS, customers held in memory) every ``interval`` seconds."""
    with tempfile.TemporaryDirectory(prefix="segstream-bench-") as tmp:
        redis_url, server = start_embedded(Path(tmp) / "state")
        out = Path(tmp) / "out"
        spec = JobSpec(
            source=str(path),
            config=config,
            redis_url=redis_url,
            outputs=OutputPaths(out / "changes.jsonl", out / "profiles.jsonl", out / "dead.jsonl"),
            now_ms=int(datetime.now(UTC).timestamp() * 1000),
        )
        out.mkdir()
        engine = Watched(spec)
        me = psutil.Process()
        samples: list[tuple[float, int, int]] = []
        stop = threading.Event()
        started = engine.started = time.perf_counter()

        def sample() -> None:
            while not stop.wait(interval):
                samples.append((time.perf_counter() - started, me.memory_info().rss, len(engine.states)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        engine.run()
        stop.set()
        sampler.join()
        del server
    return engine.stream_seconds, samples


def memory(path: Path, lines: int, config: JobConfig, interval: float) -> None:
    seconds, samples = watch(path, config, interval)
    print(f"\nCore loop over {lines:,} lines: {seconds:.0f} s, {lines / seconds:,.0f} lines/s")
    print("| time | share of run | RSS MiB | customers in memory |\n|---:|---:|---:|---:|")
    step = max(1, len(samples) // 10)
    for at, rss, held in samples[::step]:
        print(f"| {at:.0f} s | {at / seconds:.0%} | {rss / MIB:,.0f} | {held:,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="about this many generated lines")
    parser.add_argument("--config", type=Path, help="job configuration (default: the packaged one)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs per stage")
    parser.add_argument("--memory", action="store_true", help="also run the endless-stream memory test")
    parser.add_argument("--customers", type=int, default=100_000, help="customers in the memory test")
    parser.add_argument("--days", type=float, default=120.0, help="over how many days they arrive")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between memory samples")
    args = parser.parse_args()
    config = load_config(args.config)
    with tempfile.TemporaryDirectory(prefix="segstream-bench-") as tmp:
        path = Path(tmp) / "events.jsonl"
        generate(path, max(1, round(args.events / LINES_PER_CUSTOMER)), 0)
        states = per_event(load_events(path, config), config, args.repeat)
        state_sizes(states, config)
        if args.memory:
            gap = int(args.days * DAY / args.customers)
            lines = generate(path, args.customers, gap)
            memory(path, lines, config, args.interval)


if __name__ == "__main__":
    main()
