"""The core loop's memory holds only customers still inside their windows, models on or off: a customer
whose only timer is the models' (a label falling due, a revisit) waits in the store with that timer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipelines.core_engine import CoreEngine
from tests.conftest import make_spec, read_jsonl
from transforms.config import load_config
from transforms.sample_stream import sample_lines

DAY = 86_400_000
START = 1_700_000_000_000  # 2023-11-14: two years of arrivals stay before the tests' "now"


class Watched(CoreEngine):
    """The core loop, noting how many customers it held in memory when the input ended."""

    held_at_end = -1

    def _finish(self, end: int) -> None:
        self.held_at_end = len(self.states)
        super()._finish(end)


@pytest.mark.parametrize("models", [True, False], ids=["models on", "models off"])
def test_customers_of_an_endless_stream_do_not_stay_in_memory(models: bool, tmp_path: Path, redis_url: str) -> None:
    source = tmp_path / "stream.jsonl"
    lines = sample_lines(customers=240, start_ms=START, arrival_gap_ms=2 * DAY)  # over 480 days
    source.write_text("\n".join(lines) + "\n")
    config = load_config(None)
    if not models:
        config = dataclasses.replace(config, models=None)
    engine = Watched(make_spec(source, redis_url, tmp_path / "out", config=config))
    engine.run()
    longest = engine.logic.model.windows.longest
    # Only the customers who arrived within the reach of the longest window (plus the dedup
    # horizon) of the stream's end can still have something to expire.
    reach = (longest + DAY) // (2 * DAY) + 2
    assert 0 < engine.held_at_end <= reach, (engine.held_at_end, reach)
    assert len(read_jsonl(tmp_path / "out" / "profiles.jsonl")) == 240


def test_a_stored_timer_fires_as_if_the_customer_had_stayed(tmp_path: Path, redis_url: str) -> None:
    """The same stream with a store that takes every idle customer and with one that takes none gives
    the same changes and profiles (the timers fire in the same order)."""
    source = tmp_path / "stream.jsonl"
    source.write_text("\n".join(sample_lines(customers=60, start_ms=START, arrival_gap_ms=3 * DAY)) + "\n")
    outputs = []
    for idle in (True, False):
        out = tmp_path / str(idle)
        engine = CoreEngine(make_spec(source, redis_url, out))
        if not idle:
            engine.logic.idle = lambda state: False  # type: ignore[method-assign]
        engine.run()
        outputs.append((read_jsonl(out / "changes.jsonl"), read_jsonl(out / "profiles.jsonl")))
    assert outputs[0] == outputs[1] and outputs[0][0]
