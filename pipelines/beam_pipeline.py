"""The Beam driver: the core steps wired as one topology (DirectRunner locally, Dataflow, Flink runner).

    read ─► clean ─┬─► key by customer ─► customer step (state + event-time timers) ─┬─► Redis
                   └─► dead letters ◄─────────────── late ◄─────────────────────────┴─► files

Keyed state and timers hold the core's values (:class:`transforms.customer.CustomerState` and the
pending events); all behaviour lives in :class:`transforms.customer.CustomerLogic`. The customer
step of a live run is :class:`LiveCustomerFn` here; file replays use
:class:`pipelines.beam_replay.ReplayCustomerFn`.

A forget event's :class:`transforms.privacy.Forget` follows its step's changes to the Redis sink,
which erases the customer from Redis once what came before it is written
(:class:`pipelines.forget.SinkForgets`); the JSONL lines and the receipt wait for the end of the run
(:func:`finish_forgets`, called by the driver once the pipeline is done with the files).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from online_models import Models
from pipelines.forget import Erased, SinkForgets
from pipelines.job import Clock, JobSpec, clean_record
from pipelines.metrics import METRICS
from pipelines.model_publisher import ModelPublisher
from pipelines.outputs import JsonLinesWriter
from pipelines.redis_store import RedisSink, StopClock, shared_client
from pipelines.redis_stream import ack_target
from transforms.changes import IdentityMerge
from transforms.cleaning import Cleaner, CleaningConfig
from transforms.config import JobConfig
from transforms.customer import CustomerState, Step
from transforms.dead_letters import DeadLetter
from transforms.events import FORGET, Event
from transforms.rfm import Population

DEAD, CHANGES, PROFILES, FINAL, ACKS = "dead_letters", "changes", "profiles", "final_profiles", "acks"
MERGES = "merges"  # identity merges (stitched replays, :mod:`pipelines.stitched`)
FORGOTTEN = "forgotten"  # a forget event's Forget, after the changes of its step
# The customer step's one output to the sink: (kind, value) pairs of the kinds above but DEAD, in the
# order the step made them (one output keeps that order through the runner, several would not: a
# forget's erase must come after its exits).
TO_SINK = "to_sink"


def beam_timestamp(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


class CleanFn(beam.DoFn):
    """Raw records in; ``(customer key, event)`` stamped with event time out, or a dead letter."""

    def __init__(self, config: CleaningConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock

    def setup(self) -> None:
        self.cleaner = Cleaner(self.config)

    def process(self, record: Any) -> Iterator[Any]:
        result = clean_record(self.cleaner, record, self.clock())
        if isinstance(result, DeadLetter):
            yield beam.pvalue.TaggedOutput(DEAD, result)
        else:
            yield TimestampedValue((result.customer_key, result), beam_timestamp(result.ts))


class CustomerStepFn(beam.DoFn):
    """What every customer step shares: the core logic and how a :class:`Step` becomes outputs."""

    def __init__(self, config: JobConfig) -> None:
        self.config = config

    def setup(self) -> None:
        self.logic = self.config.logic()

    def emit(self, step: Step, customer: CustomerState, acknowledge: bool = False) -> Iterator[Any]:
        METRICS.record_step(step)
        for change in step.changes:
            yield beam.pvalue.TaggedOutput(TO_SINK, (CHANGES, change))
        for forget in step.forgotten:  # after its forget exits: the sink erases the rest
            yield beam.pvalue.TaggedOutput(TO_SINK, (FORGOTTEN, forget))
        if step.touched:
            yield beam.pvalue.TaggedOutput(TO_SINK, (PROFILES, self.logic.profile(customer)))
        if acknowledge:
            for event in step.accepted + step.duplicates:
                yield beam.pvalue.TaggedOutput(TO_SINK, (ACKS, (event.source, event.position)))


_WORKER_POPULATIONS: dict[str, Population] = {}  # live pipeline -> this worker's buyers
_WORKER_MODELS: dict[str, Models] = {}  # live pipeline -> this worker's churn and propensity models


class LiveCustomerFn(CustomerStepFn):
    """The customer step of a live run: a tick timer follows the watermark through the customer's
    pending events and rule timers; on the drain, ``stop_clock`` caps event time.

    ``clock`` holds ``(clock, wake)``: the customer's event time and the tick timer currently set.
    """

    STATE = ReadModifyWriteStateSpec("customer", PickleCoder())
    CLOCK = ReadModifyWriteStateSpec("clock", PickleCoder())
    PENDING = BagStateSpec("pending", PickleCoder())
    TICK = TimerSpec("tick", TimeDomain.WATERMARK)
    FINAL = TimerSpec("final", TimeDomain.WATERMARK)

    def __init__(self, config: JobConfig, stop_clock: StopClock, redis_prefix: str) -> None:
        super().__init__(config)
        self.stop_clock = stop_clock
        self.redis_prefix = redis_prefix
        self.run_key = uuid.uuid4().hex  # set once, at pipeline construction; every copy shares it

    def setup(self) -> None:
        super().setup()
        # The runner may make a new instance per bundle: the worker's RFM population outlives them,
        self.logic.model.population = _WORKER_POPULATIONS.setdefault(self.run_key, Population())
        first = self.run_key not in _WORKER_MODELS
        if self.logic.models is not None:  # and so do its models
            self.logic.use_models(_WORKER_MODELS.setdefault(self.run_key, self.logic.models))
        self.publisher = ModelPublisher(self.stop_clock.redis_url, self.redis_prefix, self.logic.models)
        if first:  # a restarted live job continues from its models' latest snapshot
            self.publisher.restore()
        self.ranked_for_final = False

    def process(
        self,
        element: tuple[str, Any],
        state=beam.DoFn.StateParam(STATE),
        clock=beam.DoFn.StateParam(CLOCK),
        pending=beam.DoFn.StateParam(PENDING),
        tick=beam.DoFn.TimerParam(TICK),
        final=beam.DoFn.TimerParam(FINAL),
    ) -> Iterator[Any]:
        key, event = element
        meta = clock.read()
        if meta is None:
            meta = (None, None)
            final.set(GlobalWindow().max_timestamp())
        late, timer = self.logic.admit(meta[0], meta[1], event)
        if late:
            yield beam.pvalue.TaggedOutput(DEAD, self.logic.late_letter(event))
            return
        if event.type == FORGET:  # carried out as it arrives
            forget = functools.partial(self.logic.forget_now, event=event)
            yield from self._advance(key, state, clock, pending, tick, forget, skip_unknown=False)
            return
        pending.add(event)
        if timer is not None:
            tick.set(beam_timestamp(timer))
            meta = (meta[0], timer)
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
        yield from self._advance(key, state, clock, pending, tick, self._until(fired.micros // 1000))

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
        yield from self._advance(key, state, clock, pending, tick, self._until(fired.micros // 1000))
        customer = state.read()
        if customer is not None:
            METRICS.customers.inc()
            if not self.ranked_for_final:  # final profiles rank against the whole population seen
                self.logic.before_final()
                self.ranked_for_final = True
                self.publisher.publish()
            yield beam.pvalue.TaggedOutput(TO_SINK, (FINAL, self.logic.profile(customer)))

    def _until(self, fired_at: int) -> Callable[[CustomerState, list[Event]], Step]:
        """The customer step of a timer fired at ``fired_at``."""
        return functools.partial(self.logic.on_timer, fired_at=fired_at, end=self.stop_clock.stop_at(), bounded=False)

    def _advance(
        self, key: str, state, clock, pending, tick, run: Callable[..., Step], skip_unknown: bool = True
    ) -> Iterator[Any]:
        """``run(customer, pending events)`` on the customer's state, then keep or drop what is left."""
        events = list(pending.read())
        customer = state.read()
        if customer is None and not events and skip_unknown:
            return  # a forgotten customer's timer: nothing of theirs is left
        customer = customer or self.logic.new_state(key)
        step = run(customer, events)
        pending.clear()
        for event in step.remaining:
            pending.add(event)
        if step.wake is not None:
            tick.set(beam_timestamp(step.wake))
        if self.logic.erased(customer, step):  # dropped, as the core loop drops it: no final profile
            clock.clear()
            state.clear()
        else:
            clock.write((customer.clock, step.wake))
            state.write(customer)
        yield from self.emit(step, customer, acknowledge=True)
        self.publisher.maybe_publish()


_PENDING_FORGETS: dict[str, list[Erased]] = {}  # run -> forgets erased from Redis, files and receipt to do


def _sink_forgets(spec: JobSpec) -> SinkForgets:
    outputs = spec.outputs
    return SinkForgets(
        shared_client(spec.redis_url), spec.redis_prefix, spec.config.cleaning.email_salt,
        (outputs.changes, outputs.profiles, outputs.dead_letters), outputs.receipts,
    )  # fmt: skip


def finish_forgets(spec: JobSpec, run_key: str) -> None:
    """The end of a run (the pipelines done with the files): the forgotten customers' lines out of
    the JSONL outputs, and their receipts."""
    _sink_forgets(spec).finish(_PENDING_FORGETS.pop(run_key, []))


class WriteRedisFn(beam.DoFn):
    """Changes, profiles and dead letters to Redis in pipelined, seq-guarded batches (one per bundle
    or 1,000 items); live-stream entries are acknowledged in the same batch, after their effects.
    A forget erases its customer from Redis after writing the batch before it; what is left to do
    (files, receipt) waits in ``_PENDING_FORGETS[run_key]`` for :func:`finish_forgets`."""

    def __init__(self, spec: JobSpec, run_key: str, batch_size: int = 1000) -> None:
        self.spec = spec
        self.run_key = run_key
        self.batch_size = batch_size

    def setup(self) -> None:
        self.sink = RedisSink(shared_client(self.spec.redis_url), self.spec.redis_prefix)
        self.forgets = _sink_forgets(self.spec)

    def start_bundle(self) -> None:
        self.changes: list[Any] = []
        self.profiles: dict[str, dict[str, Any]] = {}
        self.dead: list[DeadLetter] = []
        self.acks: list[tuple[str, str, str]] = []
        self.merges: list[IdentityMerge] = []

    def process(self, item: tuple[str, Any]) -> Iterator[Any]:
        kind, value = item
        if kind == CHANGES:
            self.changes.append(value)
        elif kind in (PROFILES, FINAL):
            self.profiles[value["customer_id"]] = value
        elif kind == DEAD:
            self.dead.append(value)
            self._ack(value.source, value.position)
        elif kind == MERGES:  # the absorbed profiles become aliases of the survivor
            for absorbed in value.absorbed:
                self.profiles.pop(absorbed, None)
            self.merges.append(value)
        elif kind == FORGOTTEN:
            self.finish_bundle()
            self.forgets.forget(value)
            _PENDING_FORGETS.setdefault(self.run_key, []).extend(self.forgets.pending)
            self.forgets.pending = []
        else:
            self._ack(*value)
        if (
            len(self.changes) + len(self.profiles) + len(self.dead) + len(self.acks) + len(self.merges)
            >= self.batch_size
        ):
            self.finish_bundle()
        yield from ()

    def _ack(self, source: str, position: str) -> None:
        target = ack_target(source, position)
        if target is not None:
            self.acks.append(target)

    def finish_bundle(self) -> None:
        if self.changes or self.profiles or self.dead or self.acks or self.merges:
            self.sink.write(self.changes, self.profiles.values(), self.dead, self.acks, self.merges)
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


def _of_kinds(item: tuple[str, Any], kinds: tuple[str, ...]) -> Iterator[Any]:
    kind, value = item
    if kind in kinds:
        yield {"kind": "identity_merge", **value.to_dict()} if kind == MERGES else value  # as the core loop writes it


def _count_dead_letter(letter: DeadLetter) -> None:
    METRICS.record_dead_letter(letter)  # the process-wide registry (a bound method would pickle a copy)


def build(
    spec: JobSpec,
    records: beam.PCollection,
    customer_step: CustomerStepFn,
    wakes: beam.PCollection | None = None,
    run_key: str = "",
) -> None:
    """Wire the topology from ``records`` (a PCollection of :class:`RawRecord`) through
    ``customer_step`` to every sink. ``wakes``: more ``(key, None)`` elements for the customer step
    (customers with no event whose timers fall due). ``run_key``: where the run's forgets wait for
    :func:`finish_forgets`.
    """
    cleaned = records | "Clean" >> (
        beam.ParDo(CleanFn(spec.config.cleaning, spec.clock()))
        .with_output_types(beam.typehints.Tuple[str, Any])
        .with_outputs(DEAD, main="events")
    )
    wire(spec, cleaned["events"], cleaned[DEAD], customer_step, wakes, run_key)


def wire(
    spec: JobSpec,
    keyed: beam.PCollection,
    rejected: beam.PCollection,
    customer_step: CustomerStepFn,
    wakes: beam.PCollection | None = None,
    run_key: str = "",
) -> None:
    """From ``(key, event)`` elements and cleaning's dead letters (``rejected``) on: the customer
    step and every sink (see :func:`build`)."""
    if wakes is not None:
        keyed = (keyed, wakes) | "WithWakes" >> beam.Flatten().with_output_types(beam.typehints.Tuple[str, Any])
    segmented = keyed | "Segment" >> beam.ParDo(customer_step).with_input_types(
        beam.typehints.Tuple[str, Any]
    ).with_outputs(DEAD, TO_SINK)
    dead = (rejected, segmented[DEAD]) | "AllDeadLetters" >> beam.Flatten()
    _ = dead | "CountDeadLetters" >> beam.Map(_count_dead_letter)
    # Cleaning's dead letters go to Redis from the cleaning stage itself: on a replay chunk they are
    # written before the customer step runs, so a forget's erase comes after them, as in the core loop.
    _ = (
        rejected
        | "TagCleaningDeadLetters" >> beam.Map(lambda d: (DEAD, d))
        | "WriteCleaningDeadLetters" >> beam.ParDo(WriteRedisFn(spec, run_key))
    )
    _ = (
        segmented[DEAD]
        | "TagLateDeadLetters" >> beam.Map(lambda d: (DEAD, d))
        | "WriteLateDeadLetters" >> beam.ParDo(WriteRedisFn(spec, run_key))
    )
    to_sink = segmented[TO_SINK]
    _ = to_sink | "WriteRedis" >> beam.ParDo(WriteRedisFn(spec, run_key))
    for name, kinds, path in (
        ("Changes", (CHANGES, MERGES), spec.outputs.changes),
        ("Profiles", (FINAL,), spec.outputs.profiles),
    ):
        if path is not None:
            _ = (
                to_sink
                | f"Only{name}" >> beam.FlatMap(_of_kinds, kinds)
                | f"Write{name}" >> beam.ParDo(WriteJsonLinesFn(str(path)))
            )
    if spec.outputs.dead_letters is not None:
        _ = dead | "WriteDeadLetters" >> beam.ParDo(WriteJsonLinesFn(str(spec.outputs.dead_letters)))
