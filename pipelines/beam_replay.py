"""File replays on Beam's DirectRunner, in chunks so that memory does not grow with the input.

The DirectRunner's batch mode holds the whole input of a keyed stage in memory before it runs it.
A replay therefore reads the file once, writes it in chunks of ``--chunk-events`` records to a
temporary directory, and runs one bounded pipeline per chunk. Each chunk ends at a watermark (the
largest event time read so far minus the allowed out-of-orderness, minus 1 ms): every customer it
touches fires its timers up to it, exactly as a streaming engine would, and leaves a
:class:`transforms.customer.Snapshot` (state + events still pending) in a
:class:`pipelines.snapshot_store.SnapshotStore` on disk. A chunk touches the customers it has
events for and those whose next timer falls due before its watermark; the last chunk advances every
customer to the end of the input (or ``--as-of``) and writes the final profiles. Memory holds one
chunk and the customers it touches.
"""

from __future__ import annotations

import pickle
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from tqdm import tqdm

from pipelines.beam_pipeline import (
    CHANGES,
    DEAD,
    MERGES,
    PROFILES,
    TO_SINK,
    CustomerStepFn,
    build,
    finish_forgets,
    wire,
)
from pipelines.beam_pipeline import FORGOTTEN as FORGET_OUT
from pipelines.customer_store import (
    customer_store,
    reevaluate_on_new_rules,
    restore_shared,
    save_shared,
    save_worker_state,
)
from pipelines.job import JobSpec, accepted_event_time
from pipelines.metrics import METRICS
from pipelines.model_publisher import ModelPublisher
from pipelines.outputs import OutputSink
from pipelines.snapshot_store import SnapshotStore
from pipelines.sources import RawRecord, read_records
from pipelines.stitched import MERGE, Component, ComponentDriver, Components, Stitcher
from pipelines.watermarked import (
    CHANGE,
    COUNTS,
    FORGOTTEN,
    PROFILE,
    Counts,
    Keyed,
    ReadState,
    ReadStep,
    Tagged,
    count_output,
    record_counts,
)
from pipelines.watermarked import DEAD as WATERMARKED_DEAD
from transforms.config import JobConfig
from transforms.customer import CustomerLogic, Snapshot, Step
from transforms.events import FORGET

Members = dict[str, list[str]]  # component key -> its customers (components of more than one)


@dataclass(frozen=True)
class Plan:
    """A stitched replay's components: customer -> key, and key -> customers."""

    components: dict[str, str]
    members: Members

    @classmethod
    def of(cls, components: Components) -> Plan:
        frozen = components.frozen()
        members: Members = {}
        for customer, key in frozen.items():
            members.setdefault(key, []).append(customer)
        return cls(frozen, members)


@dataclass(frozen=True)
class Chunk:
    path: Path  # pickled RawRecords
    records: int
    watermark: int | None  # event time every customer reaches at the end of this chunk


TO_BEAM = {CHANGE: CHANGES, PROFILE: PROFILES, FORGOTTEN: FORGET_OUT, MERGE: MERGES}  # driver -> sink kinds


def _records(path: str) -> Iterator[Any]:
    with open(path, "rb") as handle:
        while True:
            try:
                yield pickle.load(handle)
            except EOFError:
                return


def split_into_chunks(spec: JobSpec, directory: Path, chunk_events: int) -> tuple[list[Chunk], int | None]:
    """Write the input in chunks; return them and the largest event time of the whole input."""
    out_of_order = spec.config.stream.max_out_of_orderness_ms
    chunks: list[Chunk] = []
    max_ts: int | None = None
    handle: BinaryIO | None = None
    records = read_records(Path(spec.source), spec.config.cleaning.max_record_bytes, spec.progress)
    cleaner = spec.cleaner()
    done = 0
    path = directory / "chunk-00000.pkl"
    for count, record in enumerate(records, start=1):
        if handle is not None and _is_forget(record):
            # A forget starts a chunk: it is carried out as it arrives, where the previous chunk
            # left every customer (the core loop's watermark then), before the chunk's other records.
            handle.close()
            handle = None
            chunks.append(Chunk(path, count - 1 - done, None if max_ts is None else max_ts - out_of_order - 1))
            done = count - 1
        if handle is None:
            path = directory / f"chunk-{len(chunks):05d}.pkl"
            handle = path.open("wb")
        pickle.dump(record, handle, protocol=pickle.HIGHEST_PROTOCOL)
        ts = accepted_event_time(cleaner, record, spec.now_ms)
        if ts is not None and (max_ts is None or ts > max_ts):
            max_ts = ts
        if count % chunk_events == 0:
            handle.close()
            handle = None
            chunks.append(Chunk(path, count - done, None if max_ts is None else max_ts - out_of_order - 1))
            done = count
    if handle is not None:
        handle.close()
        chunks.append(Chunk(path, count - done, None if max_ts is None else max_ts - out_of_order - 1))
    return chunks, max_ts


def tag_into_chunks(
    spec: JobSpec, directory: Path, chunk_events: int, stitcher: Stitcher, components: Components
) -> tuple[list[Chunk], int | None]:
    """A stitched replay's chunks: the reader of :mod:`pipelines.stitched` (here, in input order)
    cleans and resolves every record and writes ``(number, Tagged)`` or ``(DEAD, letter)``;
    ``components`` joins every merge. Return the chunks and the largest event time."""
    config = spec.config
    reader = ReadStep(
        spec.cleaner(), spec.source, spec.clock(), config.cleaning.max_record_bytes,
        config.stream.max_out_of_orderness_ms, stitcher,
    )  # fmt: skip
    state = ReadState()
    chunks: list[Chunk] = []
    handle: BinaryIO | None = None
    records = read_records(Path(spec.source), config.cleaning.max_record_bytes, spec.progress)
    done = count = 0
    path = directory / "chunk-00000.pkl"
    for count, record in enumerate(records, start=1):
        if handle is None:
            path = directory / f"chunk-{len(chunks):05d}.pkl"
            handle = path.open("wb")
        for kind, value in reader.clean(state, record):
            if kind == COUNTS:
                record_counts(value)
                continue
            if kind == WATERMARKED_DEAD:
                kind = DEAD
            else:
                components.join(value.customer, value.absorbed)
                kind = count
            pickle.dump((kind, value), handle, protocol=pickle.HIGHEST_PROTOCOL)
        if count % chunk_events == 0:
            handle.close()
            handle = None
            chunks.append(Chunk(path, count - done, reader.watermark(state)))
            done = count
    if handle is not None:
        handle.close()
        chunks.append(Chunk(path, count - done, reader.watermark(state)))
    return chunks, state.max_ts


def _is_forget(record: RawRecord) -> bool:
    payload = record.payload
    return isinstance(payload, dict) and isinstance(payload.get("type"), str) and payload["type"].strip() == FORGET


class ReadTaggedChunkFn(beam.DoFn):
    """A stitched chunk file in; ``(component key, (number, Tagged))`` out, or a dead letter."""

    def __init__(self, components: dict[str, str]) -> None:
        self.components = components

    def process(self, path: str) -> Iterator[Any]:
        for kind, value in _records(path):
            METRICS.events_in.inc()
            if kind == DEAD:
                yield beam.pvalue.TaggedOutput(DEAD, value)
            else:
                yield self.components.get(value.customer, value.customer), (kind, value)


class ReadChunkFn(beam.DoFn):
    """A chunk file in, its records out."""

    def process(self, path: str) -> Iterator[Any]:
        for record in _records(path):
            METRICS.events_in.inc()
            yield record


class ChunkStepFn(CustomerStepFn):
    """What the customer steps of a replay chunk share: a key's elements gathered until the chunk is
    read (a subclass's ``on_end`` then runs once per key), and the snapshot store in which the
    customers, the RFM population and the models carry over from chunk to chunk.

    Elements are ``(key, item)`` or ``(key, None)`` (a key whose timer falls due in this chunk).
    In the last chunk every customer goes straight to ``end`` (the input's end or ``--as-of``).
    Each subclass declares its own state and timer specs (Beam binds a timer spec to one callback).
    """

    def __init__(self, config: JobConfig, end: int | None, last: bool, store: str) -> None:
        super().__init__(config)
        self.end = end
        self.last = last
        self.store_path = store

    def setup(self) -> None:
        super().setup()
        self.store = SnapshotStore(Path(self.store_path))
        restore_shared(self.store, self.logic)  # the RFM population and models carry over from the previous chunk

    @staticmethod
    def gather(element: tuple[str, Any], pending: Any, end: Any) -> None:
        """The subclass's ``process``: keep the item, run ``on_end`` once the chunk is read."""
        if element[1] is not None:
            pending.add(element[1])
        end.set(GlobalWindow().max_timestamp())

    def finish_bundle(self) -> None:
        save_worker_state(self.store, self.logic)
        self.store.commit()

    def teardown(self) -> None:
        self.store.close()


class ReplayCustomerFn(ChunkStepFn):
    """The customer step of one replay chunk: once the chunk is read, take the customer's snapshot
    from the store, apply its events and fire its timers up to ``end``, and put it back; items are
    events. In the last chunk its final profile is written."""

    PENDING = BagStateSpec("pending", PickleCoder())
    END = TimerSpec("end", TimeDomain.WATERMARK)

    def process(
        self, element: tuple[str, Any], pending=beam.DoFn.StateParam(PENDING), end=beam.DoFn.TimerParam(END)
    ) -> Iterator[Any]:
        self.gather(element, pending, end)
        yield from ()

    @on_timer(END)
    def on_end(self, key=beam.DoFn.KeyParam, pending=beam.DoFn.StateParam(PENDING)) -> Iterator[Any]:
        snapshot = self.store.get(key) or Snapshot(self.logic.new_state(key), [])
        customer = snapshot.state
        events, arrived = snapshot.pending, list(pending.read())
        forget = next((event for event in arrived if event.type == FORGET), None)
        if forget is not None:  # the chunk's first record (split_into_chunks): carried out first
            first = self.logic.forget_now(customer, events, forget)
            yield from self.emit(first, customer)
            events, arrived = first.remaining, [event for event in arrived if event is not forget]
        events, late = self.logic.split_late(customer.clock, events + arrived)
        for event in late:
            yield beam.pvalue.TaggedOutput(DEAD, self.logic.late_letter(event))
        if self.last:
            step = self.logic.on_timer(customer, events, self.end or 0, self.end, bounded=True)
        else:
            step = self.logic.advance_until(customer, events, self.end if self.end is not None else -(2**62))
        yield from self.emit(step, customer)
        if self.logic.erased(customer, step):  # forgotten: dropped, as the core loop drops it
            self.store.delete(key)
            return
        self.store.put(
            key, Snapshot(customer, step.remaining), self.logic.next_wake(customer) if self.last else step.wake
        )


class ReplayComponentFn(ChunkStepFn):
    """The customer step of one stitched replay chunk, keyed by component (:mod:`pipelines.stitched`):
    once the chunk is read, the component's customers come from the store, take the chunk's records
    in input order (merges included) and fire their timers up to the chunk's watermark, as the
    Flink job does; the last chunk ends with the end marker. Items are ``(number, Tagged)``."""

    def __init__(self, config: JobConfig, chunk: Chunk, end: int | None, last: bool, store: str, members: Members):
        super().__init__(config, end, last, store)
        self.watermark = chunk.watermark if chunk.watermark is not None else -(2**62)
        self.members = members

    def setup(self) -> None:
        super().setup()
        self.driver = ComponentDriver(self.logic)

    PENDING = BagStateSpec("pending", PickleCoder())
    END = TimerSpec("end", TimeDomain.WATERMARK)

    def process(
        self, element: tuple[str, Any], pending=beam.DoFn.StateParam(PENDING), end=beam.DoFn.TimerParam(END)
    ) -> Iterator[Any]:
        self.gather(element, pending, end)
        yield from ()

    @on_timer(END)
    def on_end(self, key=beam.DoFn.KeyParam, pending=beam.DoFn.StateParam(PENDING)) -> Iterator[Any]:
        loaded = self.members.get(key, [key])
        stored = {customer: self.store.get(customer) for customer in loaded}
        component = Component({c: self._keyed(snapshot) for c, snapshot in stored.items() if snapshot is not None})
        records = [tagged for _, tagged in sorted(pending.read(), key=lambda item: item[0])]
        if self.last:
            records.append(Tagged(key, self.watermark, None, self.end))
        kept, out = self.driver.on_records(component, records)
        component = kept or Component()
        if not self.last:
            out += self.driver.on_watermark(component, self.watermark)
        out += self.driver.profiles(component)
        counts: Counts = Counter()
        for kind, value in out:
            if kind == WATERMARKED_DEAD:
                yield beam.pvalue.TaggedOutput(DEAD, value)
                continue
            count_output(counts, kind, value)
            if kind in TO_BEAM:
                yield beam.pvalue.TaggedOutput(TO_SINK, (TO_BEAM[kind], value))
        for customer in loaded:
            if customer not in component.members:
                self.store.delete(customer)
        for customer, keyed in component.members.items():
            counts.update(keyed.counts)
            wake = self.logic.next_wake(keyed.state) if self.last else keyed.wake
            self.store.put(customer, Snapshot(keyed.state, keyed.pending), wake)
        record_counts(counts)

    def _keyed(self, snapshot: Snapshot) -> Keyed:
        """A stored customer as the driver keeps it: its timer is the core loop's next one."""
        wakes = [event.ts for event in snapshot.pending]
        wake = self.logic.next_wake(snapshot.state)
        if wake is not None:
            wakes.append(wake)
        return Keyed(snapshot.state, snapshot.pending, min(wakes, default=None))


def _run_chunk(spec: JobSpec, chunk: Chunk, end: int | None, last: bool, store: SnapshotStore, run_key: str) -> None:
    due = store.all_keys() if last else store.due(end) if end is not None else []
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=1"]))
    records = pipeline | "Chunk" >> beam.Create([str(chunk.path)]) | "Read" >> beam.ParDo(ReadChunkFn())
    wakes = None
    if due:
        path = chunk.path.with_suffix(".due")
        with path.open("wb") as handle:
            pickle.dump(due, handle, protocol=pickle.HIGHEST_PROTOCOL)
        wakes = pipeline | "Due" >> beam.Create([str(path)]) | "DueCustomers" >> beam.FlatMap(_due_keys)
    step = ReplayCustomerFn(spec.config, end, last, str(store.path))
    build(spec, records, step, wakes, run_key=run_key)
    pipeline.run().wait_until_finish()


def _run_stitched_chunk(
    spec: JobSpec, chunk: Chunk, end: int | None, last: bool, store: SnapshotStore, run_key: str, plan: Plan
) -> None:
    due = store.all_keys() if last else store.due(chunk.watermark) if chunk.watermark is not None else []
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=1"]))
    entries = (
        pipeline
        | "Chunk" >> beam.Create([str(chunk.path)])
        | "Read" >> beam.ParDo(ReadTaggedChunkFn(plan.components)).with_outputs(DEAD, main="events")
    )
    wakes = None
    if due:
        keys = sorted({plan.components.get(key, key) for key in due})
        wakes = pipeline | "Due" >> beam.Create([(key, None) for key in keys])
    step = ReplayComponentFn(spec.config, chunk, end, last, str(store.path), plan.members)
    wire(spec, entries["events"], entries[DEAD], step, wakes, run_key=run_key)
    pipeline.run().wait_until_finish()


def _due_keys(path: str) -> Iterator[tuple[str, None]]:
    with open(path, "rb") as handle:
        for key in pickle.load(handle):
            yield key, None


def run_file(spec: JobSpec) -> None:
    """Replay the file ``spec.source`` through the topology, ``spec.chunk_events`` records per pipeline."""
    # The in-process SDK worker caches user state and weighs every cached value with objsize, which
    # scans all loaded modules' globals on each call: two thirds of the run time on a replay. Without
    # the cache, state goes straight to the runner's in-memory state store: about 3x the throughput.
    worker_handlers.STATE_CACHE_SIZE_MB = 0
    run_key = uuid.uuid4().hex
    identity = spec.config.identity
    with tempfile.TemporaryDirectory(prefix="segstream-replay-") as tmp, customer_store(spec.state_file) as store:
        _reevaluate_stored(spec, store)
        if identity is None:
            chunks, max_ts = split_into_chunks(spec, Path(tmp), spec.chunk_events)
        else:  # the graph carries over from an earlier run (--resume)
            stitcher, components = Stitcher(identity, {}), Components()
            stitcher.graph = store.get_shared("identity") or stitcher.graph
            chunks, max_ts = tag_into_chunks(spec, Path(tmp), spec.chunk_events, stitcher, components)
            plan = Plan.of(components)
        total = sum(chunk.records for chunk in chunks)
        with tqdm(total=total, unit="ev", desc="replay", disable=not spec.progress, leave=False) as bar:
            for number, chunk in enumerate(chunks):
                last = number == len(chunks) - 1
                end = max(max_ts, spec.as_of or max_ts) if last and max_ts is not None else chunk.watermark
                if identity is None:
                    _run_chunk(spec, chunk, end, last, store, run_key)
                else:
                    _run_stitched_chunk(spec, chunk, end, last, store, run_key, plan)
                chunk.path.unlink()
                bar.update(chunk.records)
        if identity is not None:
            store.put_shared("identity", stitcher.graph)
        _write_final_profiles(spec, store)
        finish_forgets(spec, run_key)  # the outputs are complete before the saved state moves on


def _sink(spec: JobSpec, logic: CustomerLogic) -> OutputSink:
    return OutputSink(spec.redis_url, spec.outputs, logic.profile, spec.redis_prefix)


def _reevaluate_stored(spec: JobSpec, store: SnapshotStore) -> None:
    """Customers from an earlier run (``--resume``) evaluated again if the rules changed."""
    logic = spec.logic()
    restore_shared(store, logic)
    sink = _sink(spec, logic)

    def emit(step: Step) -> None:
        METRICS.record_step(step)
        for change in step.changes:
            sink.change(change)

    reevaluate_on_new_rules(store, logic, emit)
    sink.close()


def _write_final_profiles(spec: JobSpec, store: SnapshotStore) -> None:
    """Once every customer reached the end, their profiles, ranked against the complete RFM population."""
    logic = spec.logic()
    restore_shared(store, logic)
    logic.before_final()
    sink = _sink(spec, logic)
    for snapshot in store.snapshots():
        sink.final_profile(snapshot.state)
        METRICS.customers.inc()
    sink.close()
    save_shared(store, logic)
    ModelPublisher(spec.redis_url, spec.redis_prefix, logic.models).publish()
