"""The Beam driver: the core steps wired as one topology (DirectRunner locally, Dataflow, Flink runner).

    read ─► clean ─┬─► key by customer ─► CustomerFn (state + event-time timers) ─┬─► Redis
                   └─► dead letters ◄─────────────── late ◄──────────────────────┴─► files

Keyed state and timers hold the core's values (:class:`transforms.customer.CustomerState` and the
pending events); all behaviour lives in :class:`transforms.customer.CustomerLogic`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from pipelines.job import JobSpec, clean_record
from pipelines.metrics import METRICS
from pipelines.outputs import JsonLinesWriter
from pipelines.redis_store import RedisSink, StopClock, shared_client
from pipelines.redis_stream import ack_target
from pipelines.sources import read_records
from transforms.cleaning import Cleaner, CleaningConfig
from transforms.customer import CustomerLogic, StreamConfig
from transforms.dead_letters import DeadLetter
from transforms.rules import RuleSet

DEAD, CHANGES, PROFILES, FINAL, ACKS = "dead_letters", "changes", "profiles", "final_profiles", "acks"


def beam_timestamp(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


class ReadFileFn(beam.DoFn):
    """A file path in, its records out (with positions for dead letters)."""

    def __init__(self, max_bytes: int, progress: bool) -> None:
        self.max_bytes = max_bytes
        self.progress = progress

    def process(self, path: str) -> Iterator[Any]:
        for record in read_records(Path(path), self.max_bytes, self.progress):
            METRICS.events_in.inc()
            yield record


class CleanFn(beam.DoFn):
    """Raw records in; ``(customer key, event)`` stamped with event time out, or a dead letter."""

    def __init__(self, config: CleaningConfig, now_ms: int) -> None:
        self.config = config
        self.now_ms = now_ms

    def setup(self) -> None:
        self.cleaner = Cleaner(self.config)

    def process(self, record: Any) -> Iterator[Any]:
        result = clean_record(self.cleaner, record, self.now_ms)
        if isinstance(result, DeadLetter):
            yield beam.pvalue.TaggedOutput(DEAD, result)
        else:
            yield TimestampedValue((result.customer_key, result), beam_timestamp(result.ts))


class CustomerFn(beam.DoFn):
    """Per-customer state and timers; behaviour delegated to :class:`CustomerLogic`.

    ``clock`` holds ``(clock, wake, end)``: the customer's event time, the tick timer currently set,
    and the end of event time (input end or ``--as-of``; None on live input, where ``stop_clock``
    tells it once the source has stopped).
    """

    STATE = ReadModifyWriteStateSpec("customer", PickleCoder())
    CLOCK = ReadModifyWriteStateSpec("clock", PickleCoder())
    PENDING = BagStateSpec("pending", PickleCoder())
    TICK = TimerSpec("tick", TimeDomain.WATERMARK)
    FINAL = TimerSpec("final", TimeDomain.WATERMARK)

    def __init__(self, rules: RuleSet, stream: StreamConfig, bounded: bool, stop_clock: StopClock | None) -> None:
        self.rules = rules
        self.stream = stream
        self.bounded = bounded
        self.stop_clock = stop_clock

    def setup(self) -> None:
        self.logic = CustomerLogic(self.rules, self.stream)

    def process(
        self,
        element: tuple[str, Any],
        end: int | None,
        clock=beam.DoFn.StateParam(CLOCK),
        pending=beam.DoFn.StateParam(PENDING),
        tick=beam.DoFn.TimerParam(TICK),
        final=beam.DoFn.TimerParam(FINAL),
    ) -> Iterator[Any]:
        _, event = element
        meta = clock.read()
        if meta is None:
            meta = (None, None, end)
            final.set(GlobalWindow().max_timestamp())
        late, timer = self.logic.admit(meta[0], meta[1], event)
        if late:
            yield beam.pvalue.TaggedOutput(DEAD, self.logic.late_letter(event))
            return
        pending.add(event)
        if timer is not None:
            tick.set(beam_timestamp(timer))
            meta = (meta[0], timer, end)
        clock.write(meta)

    @on_timer(TICK)
    def on_tick(
        self,
        key=beam.DoFn.KeyParam,
        fired=beam.DoFn.TimestampParam,
        state=beam.DoFn.StateParam(STATE),
        clock=beam.DoFn.StateParam(CLOCK),
        pending=beam.DoFn.StateParam(PENDING),
        tick=beam.DoFn.TimerParam(TICK),
    ) -> Iterator[Any]:
        yield from self._advance(key, fired.micros // 1000, state, clock, pending, tick)

    @on_timer(FINAL)
    def on_final(
        self,
        key=beam.DoFn.KeyParam,
        fired=beam.DoFn.TimestampParam,
        state=beam.DoFn.StateParam(STATE),
        clock=beam.DoFn.StateParam(CLOCK),
        pending=beam.DoFn.StateParam(PENDING),
        tick=beam.DoFn.TimerParam(TICK),
    ) -> Iterator[Any]:
        yield from self._advance(key, fired.micros // 1000, state, clock, pending, tick)
        customer = state.read()
        if customer is not None:
            METRICS.customers.inc()
            yield beam.pvalue.TaggedOutput(FINAL, self.logic.profile(customer))

    def _advance(self, key: str, fired_at: int, state, clock, pending, tick) -> Iterator[Any]:
        meta = clock.read()
        end = meta[2] if self.stop_clock is None else self.stop_clock.stop_at()
        events = list(pending.read())
        customer = state.read() or self.logic.new_state(key)
        step = self.logic.on_timer(customer, events, fired_at, end, self.bounded)
        pending.clear()
        for event in step.remaining:
            pending.add(event)
        if step.wake is not None:
            tick.set(beam_timestamp(step.wake))
        clock.write((customer.clock, step.wake, meta[2]))
        state.write(customer)
        METRICS.record_step(step)
        for change in step.changes:
            yield beam.pvalue.TaggedOutput(CHANGES, change)
        if step.touched:
            yield beam.pvalue.TaggedOutput(PROFILES, self.logic.profile(customer))
        if not self.bounded:
            for event in step.accepted + step.duplicates:
                yield beam.pvalue.TaggedOutput(ACKS, (event.source, event.position))


class WriteRedisFn(beam.DoFn):
    """Changes, profiles and dead letters to Redis in pipelined, seq-guarded batches (one per bundle
    or 1,000 items); live-stream entries are acknowledged in the same batch, after their effects."""

    def __init__(self, redis_url: str, prefix: str, batch_size: int = 1000) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.batch_size = batch_size

    def setup(self) -> None:
        self.sink = RedisSink(shared_client(self.redis_url), self.prefix)

    def start_bundle(self) -> None:
        self.changes: list[Any] = []
        self.profiles: dict[str, dict[str, Any]] = {}
        self.dead: list[DeadLetter] = []
        self.acks: list[tuple[str, str, str]] = []

    def process(self, item: tuple[str, Any]) -> Iterator[Any]:
        kind, value = item
        if kind == CHANGES:
            self.changes.append(value)
        elif kind == PROFILES:
            self.profiles[value["customer_id"]] = value
        elif kind == DEAD:
            self.dead.append(value)
            self._ack(value.source, value.position)
        else:
            self._ack(*value)
        if len(self.changes) + len(self.profiles) + len(self.dead) + len(self.acks) >= self.batch_size:
            self.finish_bundle()
        yield from ()

    def _ack(self, source: str, position: str) -> None:
        target = ack_target(source, position)
        if target is not None:
            self.acks.append(target)

    def finish_bundle(self) -> None:
        if self.changes or self.profiles or self.dead or self.acks:
            self.sink.write(self.changes, self.profiles.values(), self.dead, self.acks)
        self.start_bundle()


class WriteJsonLinesFn(beam.DoFn):
    """Appends records to a local JSONL file, flushed at the end of every bundle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def setup(self) -> None:
        self.writer = JsonLinesWriter(Path(self.path))

    def process(self, record: Any) -> Iterator[Any]:
        self.writer.write(record if isinstance(record, dict) else record.to_dict())
        yield from ()

    def finish_bundle(self) -> None:
        self.writer.flush()

    def teardown(self) -> None:
        self.writer.close()


def _latest(times: Any) -> int:
    return max(times, default=0)


def _count_dead_letter(letter: DeadLetter) -> None:
    METRICS.record_dead_letter(letter)  # the process-wide registry (a bound method would pickle a copy)


def build(spec: JobSpec, records: beam.PCollection, bounded: bool, stop_clock: StopClock | None = None) -> None:
    """Wire the topology from ``records`` (a PCollection of :class:`RawRecord`) to every sink.

    ``bounded``: a finite input (timers fire once it is all read, up to its end or ``--as-of``).
    Otherwise ``stop_clock`` caps event time once the live source stops.
    """
    config = spec.config
    cleaned = records | "Clean" >> (
        beam.ParDo(CleanFn(config.cleaning, spec.now_ms))
        .with_output_types(beam.typehints.Tuple[str, Any])
        .with_outputs(DEAD, main="events")
    )
    events = cleaned["events"]
    if bounded:
        last = events | "EventTime" >> beam.Map(lambda kv: kv[1].ts) | "InputEnd" >> beam.CombineGlobally(_latest)
        end = last | "AsOf" >> beam.Map(lambda ts, as_of: max(ts or 0, as_of or 0) or None, spec.as_of)
        end_side = beam.pvalue.AsSingleton(end)
    else:
        end_side = None
    segmented = events | "Segment" >> beam.ParDo(
        CustomerFn(config.rules, config.stream, bounded, stop_clock), end_side
    ).with_input_types(beam.typehints.Tuple[str, Any], Any).with_outputs(DEAD, CHANGES, PROFILES, FINAL, ACKS)
    dead = (cleaned[DEAD], segmented[DEAD]) | "AllDeadLetters" >> beam.Flatten()
    _ = dead | "CountDeadLetters" >> beam.Map(_count_dead_letter)
    to_redis = (
        segmented[CHANGES] | "TagChanges" >> beam.Map(lambda c: (CHANGES, c)),
        segmented[PROFILES] | "TagProfiles" >> beam.Map(lambda p: (PROFILES, p)),
        segmented[FINAL] | "TagFinal" >> beam.Map(lambda p: (PROFILES, p)),
        dead | "TagDeadLetters" >> beam.Map(lambda d: (DEAD, d)),
        segmented[ACKS] | "TagAcks" >> beam.Map(lambda a: (ACKS, a)),
    ) | "ToRedis" >> beam.Flatten()
    _ = to_redis | "WriteRedis" >> beam.ParDo(WriteRedisFn(spec.redis_url, spec.redis_prefix))
    for name, pcoll, path in (
        ("Changes", segmented[CHANGES], spec.outputs.changes),
        ("Profiles", segmented[FINAL], spec.outputs.profiles),
        ("DeadLetters", dead, spec.outputs.dead_letters),
    ):
        if path is not None:
            _ = pcoll | f"Write{name}" >> beam.ParDo(WriteJsonLinesFn(str(path)))


def run_file(spec: JobSpec, beam_args: list[str] | None = None) -> None:
    """Replay a file through the topology on the DirectRunner (bounded: timers fire at the input's end)."""
    # The in-process SDK worker caches user state and weighs every cached value with objsize, which
    # scans all loaded modules' globals on each call: two thirds of the run time on a replay. Without
    # the cache, state goes straight to the runner's in-memory state store: about 3x the throughput.
    worker_handlers.STATE_CACHE_SIZE_MB = 0
    options = PipelineOptions(beam_args or ["--runner=DirectRunner", "--direct_num_workers=1"])
    pipeline = beam.Pipeline(options=options)
    records = (
        pipeline
        | "Source" >> beam.Create([spec.source])
        | "Read" >> beam.ParDo(ReadFileFn(spec.config.cleaning.max_record_bytes, spec.progress))
    )
    build(spec, records, bounded=True)
    pipeline.run().wait_until_finish()
