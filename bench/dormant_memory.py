"""Memory of the core loop on an endless stream of new customers, models on against models off.

Each shopper stays a few hours and never comes back (``--customers`` arriving over ``--days``), so
a job whose memory holds only customers still inside their windows levels off once the first
windows expire, whatever the stream's length. The baseline is the same stream with the models off,
run in the same invocation; runs alternate (off, on, off, on, ...) in fresh processes, and the
table gives, per run, RSS and the customers held in memory at 25 / 50 / 75 / 100 % of the stream
(the end of input, which stores every customer, is not sampled), and the medians of the on/off
ratios.

Run from the repository root (the package installed)::

    python bench/dormant_memory.py --customers 16000 --days 120 --repeat 2
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from segments import DAY, MIB, generate, watch

from transforms.config import load_config

SHARES = (0.25, 0.5, 0.75, 1.0)


def watch_run(path: str, models: bool, interval: float) -> tuple[float, list[tuple[float, int, int]]]:
    """One run in this (fresh) process, the models on or off (:func:`segments.watch`)."""
    config = load_config(None)
    return watch(Path(path), config if models else dataclasses.replace(config, models=None), interval)


def at_shares(seconds: float, samples: list[tuple[float, int, int]]) -> list[tuple[int, int]]:
    """(RSS, customers held) of the last sample at or before each share of the run."""
    points = []
    for share in SHARES:
        before = [s for s in samples if s[0] <= share * seconds] or samples[:1]
        points.append((before[-1][1], before[-1][2]))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=16_000, help="new customers in the stream")
    parser.add_argument("--days", type=float, default=120.0, help="over how many days they arrive")
    parser.add_argument("--repeat", type=int, default=2, help="runs per setting, alternating")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    args = parser.parse_args()
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="segstream-bench-") as tmp:
        path = Path(tmp) / "events.jsonl"
        lines = generate(path, args.customers, int(args.days * DAY / args.customers))
        print(f"{lines:,} lines, {args.customers:,} customers over {args.days:g} days")
        runs: dict[bool, list[list[tuple[int, int]]]] = {False: [], True: []}
        print("| models | run | s | " + " | ".join(f"RSS MiB / held at {s:.0%}" for s in SHARES) + " |")
        print("|---|---:|---:|" + "---:|" * len(SHARES))
        for number in range(args.repeat):
            for models in (False, True):
                with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                    seconds, samples = pool.submit(watch_run, str(path), models, args.interval).result()
                points = at_shares(seconds, samples)
                runs[models].append(points)
                cells = " | ".join(f"{rss / MIB:,.0f} / {held:,}" for rss, held in points)
                print(f"| {'on' if models else 'off'} | {number + 1} | {seconds:.0f} | {cells} |")
    for index, share in enumerate(SHARES):
        rss = statistics.median(on[index][0] / off[index][0] for off, on in zip(runs[False], runs[True], strict=True))
        held = statistics.median(
            on[index][1] / max(1, off[index][1]) for off, on in zip(runs[False], runs[True], strict=True)
        )
        print(f"at {share:.0%}: RSS on/off {rss:.2f}x, customers held on/off {held:.2f}x (medians)")
    for models in (False, True):
        growth = statistics.median((r[-1][0] - r[1][0]) / MIB for r in runs[models])
        print(
            f"models {'on' if models else 'off'}: RSS growth from 50 % to 100 % of the run {growth:+.0f} MiB (median)"
        )


if __name__ == "__main__":
    main()
