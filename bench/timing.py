"""Timing helpers shared by the bench scripts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
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
