"""The PyFlink driver: the core steps as a DataStream job (local mini-cluster, standalone, Kubernetes).

    lines ─► read (number, clean, tag) ─► key by customer ─► customer step ─► sink (Redis, files)
    (FileSource,   keyed by source:          (state + event-time         keyed by run: a
     Kafka)        one reader, in order)      timers)                    checkpointed batch

- **Read** (:class:`ReadFn`): a Java-side source reads text lines (a file, ``.gz`` decompressed; a
  directory watched for new files; a Kafka topic); one keyed reader numbers, decodes and cleans
  them and tags each event with the core loop's watermark (:mod:`pipelines.watermarked`). On a
  bounded file it sends events in batches grouped by customer (``segstream.batch-size``).
  Watermarks: bounded out-of-orderness (``stream.max_out_of_orderness``).
- **Customer step** (:class:`CustomerFn`): ValueState holds the customer's
  :class:`pipelines.watermarked.Keyed` value. On a live source an event-time timer wakes an idle
  customer when the core loop would fire; a bounded file needs no watermark before its end, where
  the reader sends every customer an end marker. Final profiles follow the end-of-input watermark.
- **Sink** (:class:`SinkFn`): outputs are appended to a ListState and written in batches (Redis
  through the seq-guarded scripts, JSONL files) when 1,000 have gathered, every second and at the
  end. What is not written yet is part of every checkpoint, so a restore rewrites it; Redis
  ignores what it already has, and the files are cut back to the sizes the checkpoint recorded.
  The run's counters live in the sink's state too and are published to Redis after each batch.
  A forget event's customer is erased from Redis as soon as the batch before it (its forget exits)
  is written; its JSONL lines go and its receipt is written at the end of the input (or of the
  drain), see :class:`pipelines.forget.SinkForgets`; the forgets still to finish are sink state.
"""

from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from pyflink.common import Duration, JobClient, Types, WatermarkStrategy
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import (
    DataStream,
    KeyedProcessFunction,
    OutputTag,
    RuntimeContext,
    StreamExecutionEnvironment,
    TimeDomain,
)
from pyflink.datastream.connectors.file_system import FileSource, StreamFormat
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor

from pipelines.flink_env import environment, under_flink_cli
from pipelines.flink_keys import default_max_parallelism, home_keys
from pipelines.forget import SinkForgets
from pipelines.job import JobSpec
from pipelines.model_publisher import ModelPublisher
from pipelines.outputs import JsonLinesWriter
from pipelines.redis_store import RedisSink, shared_client
from pipelines.redis_stream import is_live_source
from pipelines.sources import FILE_SUFFIXES, SourceError
from pipelines.stitched import MERGE, ComponentDriver, Stitcher, plan_file
from pipelines.watermarked import (
    CHANGE,
    COUNTS,
    DEAD,
    FINAL,
    FORGOTTEN,
    PROFILE,
    Batch,
    Counts,
    CustomerDriver,
    Keyed,
    ReadState,
    ReadStep,
    Tagged,
    batch_by_key,
    count_output,
    record_counts,
)

MAX_WATERMARK = 2**63 - 1
PICKLED = Types.PICKLED_BYTE_ARRAY()
TO_SINK = OutputTag("to-sink", PICKLED)  # the reader's dead letters and counts, straight to the sink
FLUSH_EVERY_MS = 1_000
# Events per batch the reader sends on a bounded input (a live source sends every event at once).
BATCH_SIZE_KEY, BATCH_SIZE = "segstream.batch-size", 20_000
JSON_SUFFIXES = tuple(s for s in FILE_SUFFIXES if s != ".avro")


def check_source(source: str) -> None:
    """Raise :class:`SourceError` unless the Flink job can read ``source``."""
    if source.startswith("kafka://"):
        if not urlparse(source).path.strip("/"):
            raise SourceError(f"{source}: expected kafka://BROKER[,BROKER...]/TOPIC[?group=G]")
        return
    path = Path(source)
    if path.is_dir():
        return
    if not path.name.endswith(JSON_SUFFIXES):
        raise SourceError(f"{path}: the Flink job reads JSON Lines ({', '.join(JSON_SUFFIXES)}) or a directory of them")
    if not path.is_file():
        raise SourceError(f"{path}: no such file")


def counts_key(prefix: str, run_id: str) -> str:
    return f"{prefix}:run:{run_id}:counts"


class ReadFn(KeyedProcessFunction):
    """Input lines in order (keyed by source: one reader) to tagged events; dead letters and counts to the sink.

    Events are sent in :class:`pipelines.watermarked.Batch` es: every ``batch_size`` events (and at
    the end) the events read since the last batch go out grouped by customer, so the customer step
    is called, writes its state and sends its outputs once per batch rather than once per event.
    A checkpoint holds the events not sent yet: each line read since the last batch appends one
    entry to a ListState (the reader's state after it, and its event), one state call per line;
    the ValueState holds the reader's state as of the last batch.
    """

    def __init__(
        self, spec: JobSpec, batch_size: int = 1, stitcher: Stitcher | None = None, model_keys: list[str] | None = None
    ) -> None:
        self.spec = spec
        self.batch_size = batch_size
        self.stitcher = stitcher
        self.model_keys = model_keys or []  # one per customer-step instance: where it checkpoints its models

    def open(self, runtime_context: RuntimeContext) -> None:
        config = self.spec.config
        self.step = ReadStep(
            self.spec.cleaner(),
            str(Path(self.spec.source)),
            self.spec.clock(),
            config.cleaning.max_record_bytes,
            config.stream.max_out_of_orderness_ms,
            self.stitcher,
        )
        self.state = runtime_context.get_state(ValueStateDescriptor("read", PICKLED))
        self.graph = runtime_context.get_state(ValueStateDescriptor("identity", PICKLED))
        self.keys = runtime_context.get_map_state(MapStateDescriptor("customers", Types.STRING(), Types.BOOLEAN()))
        self.unsent = runtime_context.get_list_state(ListStateDescriptor("unsent", PICKLED))
        self.known: set[str] = set()
        self.models_sent_at: float | None = None  # when the model keys were last sent (this attempt)
        self.read: ReadState | None = None  # the one key's state as an object (only written back)
        self.pending: list[Tagged] = []  # the ListState's events as objects (only read on a restore)

    def _resume(self) -> ReadState:
        if self.read is None:
            stored = self.state.value()
            entries = list(self.unsent.get() or [])
            if entries:
                stored = entries[-1][0]
            self.read = ReadState.from_tuple(stored)
            self.pending = [event for _, event in entries if event is not None]
            if self.stitcher is not None:
                self.stitcher.restore(self.graph.value(), self.pending)
        return self.read

    def process_element(self, line: str, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        if self.read is None and self.state.value() is None:
            ctx.timer_service().register_event_time_timer(MAX_WATERMARK)  # the end of a bounded input
        state = self._resume()
        to_sink = []
        event = None
        for kind, value in self.step.read(state, line):
            if kind != "event":
                to_sink.append((kind, value))
                continue
            if value.key not in self.known:
                self.known.add(value.key)
                self.keys.put(value.key, True)
            self.pending.append(value)
            event = value
        if to_sink:
            yield TO_SINK, to_sink
        if len(self.pending) >= self.batch_size:
            yield from self._send(state)
        elif self.batch_size > 1:
            self.unsent.add((state.to_tuple(), event))
        else:
            self.state.update(state.to_tuple())

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        state = self._resume()
        to_sink = []
        for kind, value in self.step.end(state, iter(self.keys.keys()), self.spec.as_of):
            if kind == "event":
                self.pending.append(value)
            else:
                to_sink.append((kind, value))
        if to_sink:
            yield TO_SINK, to_sink
        yield from self._send(state)

    def _send(self, state: ReadState) -> Iterator[Batch]:
        records, self.pending = self.pending, []
        self.state.update(state.to_tuple())
        if self.stitcher is not None:
            self.graph.update(self.stitcher.graph)
        if self.batch_size > 1:
            self.unsent.clear()  # with batches of 1 every event is sent at once, never stored
        batches = batch_by_key(records, self.step.watermark(state), self.step.out_of_order_ms)
        models = self._models_due() and batches
        if models:  # the first of an attempt restores the instance's models, before any event
            yield from self._model_batches(batches[0].records[0].tag + self.step.out_of_order_ms + 1)
        yield from batches
        if models:  # the models as of the end of this send: what a checkpoint after it holds
            yield from self._model_batches(batches[-1].ts)

    def _models_due(self) -> bool:
        """Every batch of a bounded input; on a live one (a send per event) at most once a second."""
        if not self.model_keys:
            return False
        now = time.monotonic()
        if self.batch_size == 1 and self.models_sent_at is not None and now - self.models_sent_at < 1:
            return False
        self.models_sent_at = now
        return True

    def _model_batches(self, ts: int) -> Iterator[Batch]:
        for key in self.model_keys:
            yield Batch(key, [], ts)


class EventTime(TimestampAssigner):
    def extract_timestamp(self, value: Batch, record_timestamp: int) -> int:
        return value.ts  # the watermark it yields never passes a later record's tag (see batch_by_key)


class CustomerFn(KeyedProcessFunction):
    """The customer step: :class:`pipelines.watermarked.CustomerDriver` over keyed state and timers.

    Every call into the JVM costs tens of microseconds in thread mode, more than pickling a
    customer, so a call makes as few as it can: one ValueState write of the whole
    :class:`pipelines.watermarked.Keyed` value; customers in use are also kept as objects (up to
    ``cache_size``), so a step does not read them back (the state is what a checkpoint holds); a
    timer is set when the next wake moves and never deleted (an outdated one is ignored when it
    fires); touched profiles are rendered together by one processing-time timer (on whichever
    customer was current) at the next full second; the customers come in batches
    (:class:`ReadFn`), so a batch costs one call, one state write and one output.
    """

    def __init__(self, spec: JobSpec, live: bool, cache_size: int = 50_000) -> None:
        self.spec = spec
        self.live = live  # a bounded input needs no timers before its end (see build)
        self.cache_size = cache_size

    def open(self, runtime_context: RuntimeContext) -> None:
        logic = self.spec.logic()
        self.driver: CustomerDriver | ComponentDriver = (
            CustomerDriver(logic) if self.spec.config.identity is None else ComponentDriver(logic)
        )
        # The models of this subtask: checkpointed under its own key (_checkpoint_models); a live
        # job started without a checkpoint continues from their latest Redis snapshot.
        self.publisher = ModelPublisher(self.spec.redis_url, self.spec.redis_prefix, self.driver.logic.models)
        if self.live:
            self.publisher.restore()
        self.value = runtime_context.get_state(ValueStateDescriptor("customer", PICKLED))
        self.cache: dict[str, Keyed] = {}
        self.rendering: dict[str, Keyed] = {}  # touched customers, rendered together by one timer
        self.render_timer = False  # whether that timer is set in this attempt
        self.models_restored = False  # whether this attempt looked for checkpointed models
        index, parallelism, max_parallelism = _task_info(runtime_context)
        self.home_key = home_keys(parallelism, max_parallelism)[index]

    def process_element(self, batch: Batch, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        if not batch.records:
            self._checkpoint_models(batch.key)
            return
        keyed = self._load(batch.key)
        before = self.driver.trigger(keyed)
        known = keyed is not None
        keyed, out = self.driver.on_records(keyed, batch.records)
        self.publisher.maybe_publish()
        if keyed is not None:
            self._keep(batch.key, keyed, before, ctx)
            if batch.records[-1].event is None:  # the end marker comes last
                ctx.timer_service().register_event_time_timer(MAX_WATERMARK)  # then the final profile
        elif known:  # a forget erased the customer
            self._drop(batch.key)
        if out:
            yield out

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self.render_timer = False
            rendering, self.rendering = self.rendering, {}
            # touched is not stored: after a restore a profile may be sent once more
            out = [item for keyed in rendering.values() for item in self.driver.profiles(keyed)]
            if out:
                yield out
            return
        key = ctx.get_current_key()
        keyed = self._load(key)
        if keyed is None:
            return
        if timestamp == MAX_WATERMARK:  # every customer of this worker reached the end
            self.rendering.pop(key, None)
            self.cache.pop(key, None)
            self.value.clear()
            if not self.driver.final_started:  # the first final profile: publish the models once
                self.publisher.publish()
                models = self.driver.logic.models
                if models is not None:  # what this instance learnt, for the run summary
                    yield [(COUNTS, Counter({("model_updates", t): m.n_updates for t, m in models.models.items()}))]
            yield self.driver.final(keyed)
        elif timestamp == self.driver.trigger(keyed):
            out = self.driver.on_watermark(keyed, ctx.timer_service().current_watermark())
            if self.driver.gone(keyed):
                self._drop(key)
            else:
                self._keep(key, keyed, None, ctx)
            if out:
                yield out

    def _checkpoint_models(self, key: str) -> None:
        """The models of this instance in keyed state under its own key (PyFlink has no operator
        state): a checkpoint holds them as of the reader's last send before it. The first time in
        an attempt, continue from the ones a restored checkpoint holds."""
        if key != self.home_key:
            raise RuntimeError(f"model key {key} reached instance {self.home_key}: key routing differs from Flink's")
        logic = self.driver.logic
        if logic.models is None:
            return
        if not self.models_restored:
            self.models_restored = True
            stored = self.value.value()
            if stored is not None and logic.use_models(stored):
                self.publisher.follow(logic.models)
        self.value.update(logic.models)

    def _load(self, key: str) -> Keyed | None:
        keyed = self.cache.pop(key, None)
        if keyed is None:
            keyed = self.value.value()
            if keyed is None:
                return None
        if len(self.cache) >= self.cache_size:
            del self.cache[next(iter(self.cache))]  # the least recently used
        self.cache[key] = keyed
        return keyed

    def _drop(self, key: str) -> None:
        """Forget the customer's keyed value (its timers, when they fire, find nothing)."""
        self.cache.pop(key, None)
        self.rendering.pop(key, None)
        self.value.clear()

    def _keep(self, key: str, keyed: Keyed, before: int | None, ctx: Any) -> None:
        self.cache[key] = keyed
        self.value.update(keyed)
        after = self.driver.trigger(keyed)
        if self.live and after is not None and after != before:
            ctx.timer_service().register_event_time_timer(after)
        if keyed.touched:
            self.rendering[key] = keyed
            if not self.render_timer:
                self.render_timer = True
                _at_next_flush(ctx)


class SinkFn(KeyedProcessFunction):
    """Outputs to Redis and JSONL files in batches; unwritten outputs and the counters are checkpointed."""

    def __init__(self, spec: JobSpec, run_id: str, batch_size: int = 1000) -> None:
        self.spec = spec
        self.run_id = run_id
        self.batch_size = batch_size

    def open(self, runtime_context: RuntimeContext) -> None:
        self.buffer = runtime_context.get_list_state(ListStateDescriptor("unwritten", PICKLED))
        self.written = runtime_context.get_state(ValueStateDescriptor("written", PICKLED))
        self.redis: RedisSink | None = None
        self.forgets: SinkForgets | None = None
        self.items: list[tuple[str, Any]] = []  # the ListState's content as objects (only read on a restore)
        paths = self.spec.outputs
        self.paths = {CHANGE: paths.changes, FINAL: paths.profiles, DEAD: paths.dead_letters}
        self.files: dict[str, JsonLinesWriter] = {}

    def close(self) -> None:
        for writer in self.files.values():
            writer.close()

    # Both return an empty iterable: process mode iterates what a function returns (None fails there).
    def process_element(self, items: list[tuple[str, Any]], ctx: KeyedProcessFunction.Context) -> tuple[()]:
        if self.redis is None:
            self._resume(ctx)
        self.buffer.add_all(items)
        self.items.extend(items)
        if len(self.items) >= self.batch_size:
            self._flush()
        return ()

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> tuple[()]:
        if self.redis is None:
            self._resume(ctx)
        self._flush()
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            _at_next_flush(ctx)
        elif timestamp == MAX_WATERMARK:  # the input (or the drain) ended: every output is written
            self._finish_forgets()
        return ()

    def _resume(self, ctx: KeyedProcessFunction.Context) -> None:
        """First call of this attempt: cut the files back to the sizes in the restored state (0 on a fresh start)."""
        written = self.written.value()
        sizes = written[1] if written is not None else {}
        pending = written[2] if written is not None and len(written) > 2 else []
        for kind, path in self.paths.items():
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("ab") as handle:
                    handle.truncate(sizes.get(kind, 0))
                self.files[kind] = JsonLinesWriter(path)
        self.items = list(self.buffer.get() or [])
        if written is None:
            self.written.update((Counter(), {}))
            ctx.timer_service().register_event_time_timer(MAX_WATERMARK)
        _at_next_flush(ctx)
        self.redis = RedisSink(shared_client(self.spec.redis_url), self.spec.redis_prefix)
        outputs = self.spec.outputs
        self.forgets = SinkForgets(
            self.redis.client, self.spec.redis_prefix, self.spec.config.cleaning.email_salt,
            self.paths.values(), outputs.receipts,
        )  # fmt: skip
        self.forgets.pending = list(pending)

    def _flush(self) -> None:
        items, self.items = self.items, []
        if not items:
            return
        assert self.redis is not None and self.forgets is not None
        counts = self.written.value()[0]
        changes, profiles, dead, merges = [], {}, [], []
        for kind, value in items:
            count_output(counts, kind, value)
            if kind == CHANGE:
                changes.append(value)
            elif kind in (PROFILE, FINAL):
                profiles[value["customer_id"]] = value
            elif kind == DEAD:
                dead.append(value)
            elif kind == MERGE:  # the absorbed profiles become aliases of the survivor
                for absorbed in value.absorbed:
                    profiles.pop(absorbed, None)
                merges.append(value)
                if self.paths[CHANGE] is not None:
                    self.files[CHANGE].write({"kind": "identity_merge", **value.to_dict()})
            elif kind == FORGOTTEN:  # erase once what came before (its forget exits) is written
                self.redis.write(changes, profiles.values(), dead, merges=merges)
                changes, profiles, dead, merges = [], {}, [], []
                self.forgets.forget(value)
            if kind in self.files:
                self.files[kind].write(value if kind == FINAL else value.to_dict())
        self.redis.write(changes, profiles.values(), dead, merges=merges)
        self._written(counts)
        self.buffer.clear()
        self.redis.client.set(counts_key(self.spec.redis_prefix, self.run_id), json.dumps(list(counts.items())))

    def _written(self, counts: Counts) -> None:
        """Record the counters, the files' sizes and the forgets to finish (the checkpointed state)."""
        assert self.forgets is not None
        sizes = {}
        for kind, writer in self.files.items():
            writer.flush()
            sizes[kind] = self.paths[kind].stat().st_size
        self.written.update((counts, sizes, list(self.forgets.pending)))

    def _finish_forgets(self) -> None:
        """The end: the forgotten customers' lines out of the files, and their receipts."""
        assert self.forgets is not None
        if not self.forgets.pending:
            return
        for writer in self.files.values():
            writer.close()
        try:
            self.forgets.finish()
        finally:
            for writer in self.files.values():
                writer.reopen()
        self._written(self.written.value()[0])


def _task_info(runtime_context: RuntimeContext) -> tuple[int, int, int]:
    """This instance's index, the parallelism and the max parallelism. PyFlink 2.3's thread mode
    calls the Java methods that Flink 2 moved to ``TaskInfo``: there they are read from it."""
    try:
        return (
            runtime_context.get_index_of_this_subtask(),
            runtime_context.get_number_of_parallel_subtasks(),
            runtime_context.get_max_number_of_parallel_subtasks(),
        )
    except AttributeError:
        info = runtime_context._runtime_context.getTaskInfo()  # type: ignore[attr-defined]
        return info.getIndexOfThisSubtask(), info.getNumberOfParallelSubtasks(), info.getMaxNumberOfParallelSubtasks()


def _at_next_flush(ctx: KeyedProcessFunction.Context) -> None:
    """A processing-time timer at the next multiple of FLUSH_EVERY_MS (one per key: a restored one is the same)."""
    now = ctx.timer_service().current_processing_time()
    ctx.timer_service().register_processing_time_timer((now // FLUSH_EVERY_MS + 1) * FLUSH_EVERY_MS)


def read_lines(env: StreamExecutionEnvironment, source: str) -> DataStream:
    """The input as a stream of text lines, read on the Java side."""
    if source.startswith("kafka://"):
        return _kafka_lines(env, source)
    path = Path(source)
    builder = FileSource.for_record_stream_format(StreamFormat.text_line_format(), str(path.resolve()))
    if path.is_dir():
        builder = builder.monitor_continuously(Duration.of_seconds(1))
    return env.from_source(builder.build(), WatermarkStrategy.no_watermarks(), "lines").set_parallelism(1)


def _kafka_lines(env: StreamExecutionEnvironment, source: str) -> DataStream:
    """``kafka://BROKERS/TOPIC?group=G``: needs the Kafka connector jar (the deploy/flink image adds it)."""
    from pyflink.common.serialization import SimpleStringSchema
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource

    url = urlparse(source)
    group = parse_qs(url.query).get("group", ["segstream"])[0]
    kafka = (
        KafkaSource.builder()
        .set_bootstrap_servers(url.netloc)
        .set_topics(url.path.strip("/"))
        .set_group_id(group)
        .set_starting_offsets(KafkaOffsetsInitializer.committed_offsets())
        .set_value_only_deserializer(SimpleStringSchema())
        .build()
    )
    return env.from_source(kafka, WatermarkStrategy.no_watermarks(), "kafka").set_parallelism(1)


def build(env: StreamExecutionEnvironment, spec: JobSpec, run_id: str) -> None:
    """Wire the topology from ``spec.source`` to the sinks.

    A file is bounded: its events need no watermark before the end (the reader's tags fire every
    customer's timers as the core loop did, the end markers finish them), so the job skips
    timestamps, watermarks and customer timers, and with them a Python operator per event. A live
    source (a directory, Kafka) gets watermarks and timers, so idle customers' rules fire on time.
    """
    live = is_live_source(spec.source)  # a Redis stream runs on Beam (cli.execute)
    batch_size = 1 if live else int(dict(spec.engine_conf).get(BATCH_SIZE_KEY, BATCH_SIZE))
    identity = spec.config.identity
    stitcher = None if identity is None else Stitcher(identity, plan_file(spec))
    parallelism = env.get_parallelism()
    max_parallelism = env.get_max_parallelism()
    if max_parallelism <= 0:
        max_parallelism = default_max_parallelism(parallelism)
    model_keys = home_keys(parallelism, max_parallelism) if spec.config.models is not None else []
    read = (
        read_lines(env, spec.source)
        .key_by(lambda _: 0, Types.INT())
        .process(ReadFn(spec, batch_size, stitcher, model_keys), PICKLED)
        .name("read")
        .uid("read")
        .set_parallelism(1)
    )
    events = read
    if live:
        out_of_order = Duration.of_millis(spec.config.stream.max_out_of_orderness_ms)
        events = read.assign_timestamps_and_watermarks(
            WatermarkStrategy.for_bounded_out_of_orderness(out_of_order).with_timestamp_assigner(EventTime())
        )
    outputs = events.key_by(lambda record: record.key, Types.STRING()).process(CustomerFn(spec, live), PICKLED)
    outputs.name("customers").uid("customers")
    (
        outputs.union(read.get_side_output(TO_SINK))
        .key_by(lambda _: 0, Types.INT())
        .process(SinkFn(spec, run_id))
        .name("sink")
        .uid("sink")
        .set_parallelism(1)
    )


def _wait(client: JobClient, stop: threading.Event, savepoints: str | None) -> None:
    """Until the job ends; on ``stop``, drain it: a savepoint that first advances event time to the
    end, so every customer is finished as at the end of a bounded input."""
    done = client.get_job_execution_result()
    while not done.done():
        if stop.wait(0.5):
            stop.clear()
            _drain(client, savepoints)
    done.result()  # raises when the job failed


def _drain(client: JobClient, savepoints: str | None) -> None:
    """``stop_with_savepoint(True, ...)``: PyFlink 2.3's wrapper misses the Java method's third
    argument (the savepoint format), so the Java method is called directly."""
    from pyflink.java_gateway import get_gateway

    canonical = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    client._j_job_client.stopWithSavepoint(True, savepoints, canonical).get()


def run_flink(spec: JobSpec) -> Counts:
    """Run ``spec`` on Flink (a local mini-cluster, or the cluster of ``flink run``) until a bounded
    input ends or SIGINT/SIGTERM drains an unbounded one; record its counts in the job metrics.
    Checkpoints and savepoints go to a temporary directory unless the configuration names one."""
    conf = dict(spec.engine_conf)
    run_id = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="segstream-flink-") as tmp:
        if not under_flink_cli():  # a cluster has its own (execution.checkpointing.dir, state.savepoints.dir)
            conf.setdefault("execution.checkpointing.dir", (Path(tmp) / "checkpoints").as_uri())
            conf.setdefault("state.savepoints.dir", (Path(tmp) / "savepoints").as_uri())
        env = environment(conf)
        build(env, spec, run_id)
        client = env.execute_async(f"segstream {Path(spec.source).name}")
        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            _wait(client, stop, conf.get("state.savepoints.dir"))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    redis = shared_client(spec.redis_url)
    published = redis.get(counts_key(spec.redis_prefix, run_id))
    redis.delete(counts_key(spec.redis_prefix, run_id))
    counts: Counts = Counter({tuple(key): n for key, n in json.loads(published or "[]")})
    record_counts(counts)
    return counts
