"""What the online models cost the whole job: events per second with the models on against off.

A clickstream from the project's generator (``segstream generate``: sessions, logins, purchases,
duplicates, late and dirty events) goes through the real job (``segstream run --engine core``)
``--repeat`` times with the models off and on, alternating so that a busy spell of the machine
hits both alike; the fastest run of each counts. Printed: events per second, their ratio and the
labels the models learnt. For the UCI transactions (few events per customer, the worst case) see
``bench/uci_scores.py``, which prints the same ratio.

Run from the repository root::

    python bench/models_cost.py                      # 2,000 persons over 30 days
    python bench/models_cost.py --persons 5000 --days 90 --repeat 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import run_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, alternating; the fastest counts")
    parser.add_argument("--models-yaml", default="", help="extra lines under models: (e.g. '  refresh: 1d')")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="models-cost-"))
    source = work / "stream.jsonl"
    subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "generate", str(source), "--truth", str(work / "truth.json"),
         "--persons", str(args.persons), "--days", str(args.days)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.repeat):
        for models in (False, True):
            runs[models].append(run_job(source, work, models, args.models_yaml)[0])
    off, on = (max(runs[m], key=lambda s: s["events_per_second"]) for m in (False, True))
    ratio = on["events_per_second"] / off["events_per_second"]
    print(f"generated clickstream: {off['events_in']:,} events, {args.persons:,} persons, {args.days} days\n")
    print("| job (core engine) | events/s | vs models off |\n|---|---:|---:|")
    print(f"| models off (baseline) | {off['events_per_second']:,.0f} | 1.00x |")
    print(f"| models on | {on['events_per_second']:,.0f} | {ratio:.2f}x (cost {1 - ratio:.0%}) |")
    updates = {task: figures["n_updates"] for task, figures in (on.get("models") or {}).items()}
    print(f"labels learnt: {', '.join(f'{task} {n:,}' for task, n in updates.items())}")


if __name__ == "__main__":
    main()
