"""What the online models cost the whole job: events per second with the models on against off.

A clickstream from the project's generator (``segstream generate``: sessions, logins, purchases,
duplicates, late and dirty events) goes through the real job (``segstream run --engine core``)
``--repeat`` times with the models off and on, alternating so that a busy spell of the machine
hits both alike (``--together``: both runs of a pair at the same time, one per core). Printed:
events per second of the fastest run of each and their ratio, the ratio of each pair and their
median, and the labels the models learnt. For the UCI transactions (few events per customer, the
worst case) see ``bench/uci_scores.py``, which prints the same figures.

Run from the repository root::

    python bench/models_cost.py                      # 2,000 persons over 30 days
    python bench/models_cost.py --persons 5000 --days 90 --repeat 3 --together
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import on_off, run_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2, help="pairs of runs, models off then on")
    parser.add_argument("--together", action="store_true", help="the two runs of a pair at the same time")
    parser.add_argument("--models-yaml", default="", help="extra lines under models: (e.g. '  refresh: 1d')")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="models-cost-"))
    source = work / "stream.jsonl"
    subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "generate", str(source), "--truth", str(work / "truth.json"),
         "--persons", str(args.persons), "--days", str(args.days)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    runs = on_off(args.repeat, args.together, lambda models: run_job(source, work, models, args.models_yaml)[0])
    on = runs.fastest(True)
    print(f"generated clickstream: {on['events_in']:,} events, {args.persons:,} persons, {args.days} days\n")
    print(runs.report("core"))
    updates = {task: figures["n_updates"] for task, figures in (on.get("models") or {}).items()}
    print(f"labels learnt: {', '.join(f'{task} {n:,}' for task, n in updates.items())}")


if __name__ == "__main__":
    main()
