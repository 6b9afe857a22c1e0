"""What identity stitching costs a replay, and how well it stitches, on generated data with truth.

One generated stream (``segstream generate``'s generator: devices, logins, emails, shared family
computers, placeholders, duplicates, late events) runs through the core engine end to end twice in
this process, with embedded Redis and file outputs: stitching off (the baseline: every event is its
own key's customer) and stitching on (``identity.stitch``). Printed: events per second of each, the
ratio (on / off), and the stitching score of the run with stitching against the truth
(:mod:`transforms.stitch_score`).

Run from the repository root::

    python bench/stitching.py                          # 5,000 persons over 14 days (~175,000 lines)
    python bench/stitching.py --persons 1000 --repeat 3
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
        url, server = start_embedded(work / "redis")
        try:
            stages = {}
            for name, identity in (("off", None), ("on", IdentityConfig())):
                config = dataclasses.replace(base, identity=identity)
                spec = make_spec(source, config, url, work / name)
                stages[name] = best_of(args.repeat, lambda spec=spec: stage_engine("core", spec, lines, None))
        finally:
            server.shutdown()
        profiles = [json.loads(line) for line in (work / "on" / "profiles.jsonl").open(encoding="utf-8")]
        score = score_stitching(profiles, truth)
    off, on = stages["off"].events_per_second, stages["on"].events_per_second
    print(f"{lines:,} lines of {args.persons:,} persons over {args.days} days")
    print("| stitching | events/s | µs per event | vs off |")
    print("|---|---:|---:|---:|")
    for name, stage in stages.items():
        rate = stage.events_per_second
        print(f"| {name} | {rate:,.0f} | {stage.us_per_event:.1f} | {rate / off:.2f}x |")
    print(f"stitching adds {100 * (off / on - 1):.1f}% to the replay's time")
    print("score against the truth:", json.dumps(score))


if __name__ == "__main__":
    main()
