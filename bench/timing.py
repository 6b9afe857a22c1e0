"""Timing helpers shared by the bench scripts."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).parents[1] / "transforms" / "default_config.yaml"


def best_seconds(repeat: int, run: Callable[[], None]) -> float:
    """The fastest of ``repeat`` runs of ``run``, in seconds (the least disturbed by a busy machine)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def run_job(
    source: Path, work: Path, models: bool, extra: str = "", as_of: int | None = None, engine: str = "core"
) -> tuple[dict, dict[str, dict]]:
    """``segstream run --engine ENGINE`` over ``source`` with the packaged configuration, the models
    on or off (``extra``: more lines under ``models:``); the run summary and the profiles by customer
    id."""
    out = work / ("on" if models else "off")
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config.yaml"
    settings = f"\nmodels:\n  enabled: {'true' if models else 'false'}\n{extra}"
    config.write_text(DEFAULT_CONFIG.read_text(encoding="utf-8") + settings, encoding="utf-8")
    command = [sys.executable, "-m", "pipelines.cli", "run", "--engine", engine, "--source", str(source),
               "--config", str(config), "--no-progress", "--state-dir", str(out / "state"),
               "--profiles-out", str(out / "profiles.jsonl"), "--summary-out", str(out / "summary.json")]  # fmt: skip
    if as_of is not None:
        command += ["--as-of", str(as_of)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    with (out / "profiles.jsonl").open(encoding="utf-8") as handle:
        profiles = {p["customer_id"]: p for p in map(json.loads, handle)}
    return summary, profiles


@dataclass
class OnOff:
    """Runs of the job with the models off and on: ``runs[models]`` are the summaries, pair by pair."""

    runs: dict[bool, list[dict]]

    def fastest(self, models: bool) -> dict:
        return max(self.runs[models], key=lambda s: s["events_per_second"])

    @property
    def ratios(self) -> list[float]:
        """Models on against off, per pair."""
        pairs = zip(self.runs[False], self.runs[True], strict=True)
        return [on["events_per_second"] / off["events_per_second"] for off, on in pairs]

    def report(self, engine: str) -> str:
        """A Markdown table: the fastest run of each, their ratio, and the ratios of the pairs."""
        off, on = self.fastest(False), self.fastest(True)
        ratio = on["events_per_second"] / off["events_per_second"]
        pairs = ", ".join(f"{r:.2f}x" for r in self.ratios)
        return (
            f"| job ({engine} engine) | events/s | vs models off |\n|---|---:|---:|\n"
            f"| models off (baseline) | {off['events_per_second']:,.0f} | 1.00x |\n"
            f"| models on | {on['events_per_second']:,.0f} | {ratio:.2f}x (cost {1 - ratio:.0%}) |\n\n"
            f"on/off per pair: {pairs}; median {statistics.median(self.ratios):.2f}x"
        )


def on_off(repeat: int, together: bool, job: Callable[[bool], dict]) -> OnOff:
    """``repeat`` pairs of ``job(models)`` runs (its summary), the models off then on; ``together``:
    the two runs of a pair at the same time, one per core, so that a change in the machine's speed
    hits both alike (on a shared machine it can swing a run by a third)."""
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(repeat):
        if together:
            with ThreadPoolExecutor(2) as pool:
                off, on = pool.map(job, (False, True))
        else:
            off, on = job(False), job(True)
        runs[False].append(off)
        runs[True].append(on)
    return OnOff(runs)
