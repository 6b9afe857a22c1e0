"""What identity stitching costs a replay, and how well it stitches, on generated data with truth.

One generated stream (``segstream generate``'s generator: devices, logins, emails, shared family
computers, placeholders, duplicates, late events) runs through each engine end to end twice in
this process, with embedded Redis and file outputs: stitching off (the baseline: every event is its
own key's customer) and stitching on (``identity.stitch``). Printed: events per second of each, the
ratio (on / off) per engine, and the stitching score of each run with stitching against the truth
(:mod:`transforms.stitch_score`). On Beam and Flink the run with stitching includes the reader's
resolution and, on Flink, the plan's pass over the input (:mod:`pipelines.stitched`).

Run from the repository root::

    python bench/stitching.py                          # 5,000 persons over 14 days (~175,000 lines)
    python bench/stitching.py --persons 1000 --repeat 3
    python bench/stitching.py --persons 1000 --engines core,beam,flink
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from throughput import best_of, make_spec, stage_engine, warm_page_cache

from pipelines.redis_store import start_embedded
from transforms.config import load_config
from transforms.generator import GeneratorConfig, StreamGenerator, truth_for_salt
from transforms.identity import IdentityConfig
from transforms.stitch_score import score_stitching


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=5000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs per setting")
    parser.add_argument("--engines", default="core", help="comma-separated, in this order: core,beam,flink")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segstream-bench-stitch-") as tmp:
        work = Path(tmp)
        generator = StreamGenerator(GeneratorConfig(persons=args.persons, days=args.days, seed=args.seed))
        source = work / "stream.jsonl"
        with source.open("w", encoding="utf-8") as handle:
            lines = 0
            for line in generator.lines():
                handle.write(line + "\n")
                lines += 1
        base = load_config(None)
        truth = truth_for_salt(generator.truth(), base.cleaning.email_salt)
        warm_page_cache(source)
        engines = [engine for engine in ("core", "beam", "flink") if engine in args.engines.split(",")]
        print(f"{lines:,} lines of {args.persons:,} persons over {args.days} days")
        print("| engine | stitching | events/s | µs per event | vs off |")
        print("|---|---|---:|---:|---:|")
        url, server = start_embedded(work / "redis")
        try:
            for engine in engines:
                stages = {}
                for name, identity in (("off", None), ("on", IdentityConfig())):
                    config = dataclasses.replace(base, identity=identity)
                    spec = make_spec(source, config, url, work / engine / name)
                    stages[name] = best_of(
                        args.repeat, lambda spec=spec, engine=engine: stage_engine(engine, spec, lines, None)
                    )
                off = stages["off"].events_per_second
                for name, stage in stages.items():
                    rate = stage.events_per_second
                    print(f"| {engine} | {name} | {rate:,.0f} | {stage.us_per_event:.1f} | {rate / off:.2f}x |")
                print(f"| {engine} | adds | {100 * (off / stages['on'].events_per_second - 1):.1f}% to the time | | |")
                profiles = [json.loads(line) for line in (work / engine / "on" / "profiles.jsonl").open()]
                print(f"| {engine} | score | {json.dumps(score_stitching(profiles, truth))} | | |")
        finally:
            server.shutdown()


if __name__ == "__main__":
    main()
