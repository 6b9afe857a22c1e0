"""The engine-free steps of the Flink driver (pipelines/watermarked.py) against the core loop, with no
Flink: a small simulated engine delivers watermarks late and at random points, as Flink's periodic
watermarks do, and must still produce the core loop's changes, profiles and dead letters."""

from __future__ import annotations

import heapq
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pipelines.core_engine import CoreEngine
from pipelines.watermarked import (
    CHANGE,
    DEAD,
    FINAL,
    MIN_TS,
    CustomerDriver,
    Keyed,
    ReadState,
    ReadStep,
    batch_by_key,
    count_output,
)
from tests.conftest import make_spec, read_jsonl, without_scores
from tests.scenarios import disordered_lines


def simulate(spec: Any, lines: list[str], rng: random.Random, batch_size: int = 0) -> tuple[list[Any], Counter]:
    """Run the read step and the customer step the way the Flink job wires them, with watermarks
    that follow the records at random distances; return the outputs and the counts. With a
    ``batch_size``, events go to the customer step in batches (:func:`batch_by_key`) and the
    engine's watermark is derived from the batches' timestamps at random points between them."""
    reader = ReadStep(
        spec.cleaner(),
        spec.source,
        spec.clock(),
        spec.config.cleaning.max_record_bytes,
        spec.config.stream.max_out_of_orderness_ms,
    )
    driver = CustomerDriver(spec.logic())
    read, keyed, triggers, timers = ReadState(), {}, {}, []
    outputs: list[Any] = []
    engine_watermark, pending_watermark = MIN_TS, MIN_TS

    def deliver(items: list[Any]) -> None:
        for kind, value in items:
            if kind != "event":
                outputs.append((kind, value))
                continue
            old = CustomerDriver.trigger(keyed.get(value.key))
            kept, out = driver.on_record(keyed.get(value.key), value)
            outputs.extend(out)
            if kept is not None:
                keyed[value.key] = kept
                schedule(value.key, old)

    def schedule(key: str, old: int | None) -> None:
        new = CustomerDriver.trigger(keyed[key])
        if new != old and new is not None:
            triggers[key] = new
            heapq.heappush(timers, (new, key))
        elif new is None:
            triggers.pop(key, None)

    def advance(watermark: int) -> None:
        while timers and timers[0][0] <= watermark:
            ts, key = heapq.heappop(timers)
            if triggers.get(key) != ts:
                continue  # deleted
            del triggers[key]
            outputs.extend(driver.on_watermark(keyed[key], watermark))
            schedule(key, None)

    out_of_order = spec.config.stream.max_out_of_orderness_ms
    unsent: list[Any] = []
    largest_ts = MIN_TS

    def send() -> None:
        nonlocal largest_ts
        for batch in batch_by_key(unsent, reader.watermark(read), out_of_order):
            old = CustomerDriver.trigger(keyed.get(batch.key))
            kept, out = driver.on_records(keyed.get(batch.key), batch.records)
            outputs.extend(out)
            if kept is not None:
                keyed[batch.key] = kept
                schedule(batch.key, old)
            largest_ts = max(largest_ts, batch.ts)
            if rng.random() < 0.3:  # Flink's bounded out-of-orderness generator
                advance(largest_ts - out_of_order - 1)
        unsent.clear()

    seen: dict[str, None] = {}  # the customers the reader has seen, in order (its MapState in the job)
    for line in lines:
        items = list(reader.read(read, line))
        seen.update((value.key, None) for kind, value in items if kind == "event")
        if batch_size:
            outputs.extend(item for item in items if item[0] != "event")
            unsent.extend(value for kind, value in items if kind == "event")
            if len(unsent) >= batch_size:
                send()
            continue
        deliver(items)
        if rng.random() < 0.05:  # the watermark generator emits what it had seen some records ago
            advance(engine_watermark)
            engine_watermark = max(engine_watermark, pending_watermark)
            pending_watermark = reader.watermark(read)
    if batch_size:
        unsent.extend(value for kind, value in reader.end(read, iter(seen), spec.as_of) if kind == "event")
        send()
    else:
        deliver(list(reader.end(read, iter(seen), spec.as_of)))
    for value in keyed.values():
        outputs.extend(driver.final(value))
    counts: Counter = Counter()
    for kind, value in outputs:
        count_output(counts, kind, value)
    return outputs, counts


@pytest.mark.parametrize(("seed", "batch_size"), [(1, 0), (2, 0), (3, 0), (1, 1), (2, 7), (3, 500), (1, 20_000)])
def test_the_keyed_steps_with_late_watermarks_equal_the_core_loop(
    seed: int, batch_size: int, redis_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(disordered_lines(80, seed, shuffle_within_ms=8_000)) + "\n")
    spec = make_spec(source, redis_url, tmp_path / "core")
    CoreEngine(spec).run()
    outputs, counts = simulate(spec, source.read_text().splitlines(), random.Random(seed), batch_size)
    changes = [value.to_dict() for kind, value in outputs if kind == CHANGE]
    assert sorted(map(json.dumps, changes)) == sorted(map(json.dumps, read_jsonl(tmp_path / "core/changes.jsonl")))
    finals = [value for kind, value in outputs if kind == FINAL]
    assert without_scores(finals) == without_scores(read_jsonl(tmp_path / "core/profiles.jsonl"))
    dead = sorted(json.dumps(value.to_dict()) for kind, value in outputs if kind == DEAD)
    assert dead == sorted(map(json.dumps, read_jsonl(tmp_path / "core/dead_letters.jsonl")))
    assert counts[("dead_letter", "late")] > 0
    assert counts[("customers",)] == len(finals)


def test_a_customer_is_woken_only_after_the_core_loop_moved_past_its_latest_record() -> None:
    keyed = Keyed(state=None, wake=100, tag=500)  # type: ignore[arg-type]
    assert CustomerDriver.trigger(keyed) == 501
    keyed.tag = 50
    assert CustomerDriver.trigger(keyed) == 100
    keyed.wake = None
    assert CustomerDriver.trigger(keyed) is None


def test_a_live_run_checks_the_future_against_the_wall_clock(tmp_path: Path) -> None:
    """A live run goes on for days: an event two days after the job started is not in the future then."""
    started = 1_700_000_000_000  # long ago: the wall clock is years past it
    event = json.dumps({"event_id": "e1", "type": "page_view", "ts": started + 2 * 86_400_000, "user_id": "u1"})
    kinds = {}
    for wall_clock in (False, True):
        spec = make_spec(tmp_path / "in.jsonl", "", tmp_path, now_ms=started, wall_clock=wall_clock)
        reader = ReadStep(spec.cleaner(), spec.source, spec.clock(), 10_000, 0)
        (kind, value), *_ = reader.read(ReadState(), event)
        kinds[wall_clock] = kind if kind != DEAD else value.reason
    assert kinds == {False: "future_timestamp", True: "event"}
