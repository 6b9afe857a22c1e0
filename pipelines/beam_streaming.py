"""Live runs on Beam's DirectRunner: a Redis stream fed into the streaming topology with real
event-time watermarks.

The Python DirectRunner holds a splittable DoFn's output watermark at minus infinity while it runs,
so event-time timers could not fire during a live run. It does honour the watermarks of a
``TestStream`` that reads its events from a ``TestStreamService`` (the mechanism interactive Beam
streams with), so the live source is that service: it polls the Redis stream, emits the entries as
elements, and advances the watermark to the largest event time read minus the allowed
out-of-orderness. On SIGINT or SIGTERM (:data:`STOP`) it records that largest event time in a
:class:`StopClock` and ends the stream; the pipeline drains (every event read is applied up to that
time, its effects written and its entry acknowledged) and the run ends. On Dataflow or the Flink
runner a production connector (Pub/Sub, Kafka) takes this place.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.test_stream_service import TestStreamServiceController

from pipelines.beam_pipeline import LiveCustomerFn, build, finish_forgets
from pipelines.job import JobSpec, accepted_event_time
from pipelines.metrics import METRICS
from pipelines.redis_store import StopClock
from pipelines.redis_stream import StreamReader, StreamSpec
from pipelines.sources import RawRecord, decode_json
from transforms.dead_letters import Reason, Rejection

STOP = threading.Event()
_Event = beam_runner_api_pb2.TestStreamPayload.Event
_IDLE_TICK_MICROS = 1_000_000


def to_record(spec: StreamSpec, entry_id: str, data: bytes | None, max_bytes: int) -> RawRecord:
    """A stream entry as a :class:`RawRecord` (decoding failures carry their rejection)."""
    if data is None:
        why = "entry has no 'event' field"
        return RawRecord(spec.source_name, entry_id, "", Rejection(Reason.MISSING_FIELD, "event", why))
    return decode_json(data, spec.source_name, entry_id, max_bytes)


def stream_batches(spec: StreamSpec, max_bytes: int) -> Iterator[list[RawRecord]]:
    """Batches of a Redis stream until :data:`STOP` (an empty batch when the stream is idle)."""
    reader = StreamReader(spec)
    while not STOP.is_set():
        yield [to_record(spec, entry_id, data, max_bytes) for entry_id, data in reader.read()]


class WatermarkedEvents:
    """The ``TestStreamService`` reader: records as elements, then the watermark they allow.

    The watermark is the largest event time read minus the allowed out-of-orderness (minus 1 ms, as
    an event exactly at the bound may still come). When the batches end, the largest event time
    read goes to the :class:`StopClock` and the stream ends.
    """

    def __init__(
        self,
        batches: Iterator[list[RawRecord]],
        out_of_orderness_ms: int,
        stop_clock: StopClock,
        event_time: Callable[[RawRecord], int | None],
    ) -> None:
        self.batches = batches
        self.event_time = event_time  # None for a record cleaning rejects: it moves no watermark
        self.out_of_orderness_ms = out_of_orderness_ms
        self.stop_clock = stop_clock
        self.coder = PickleCoder()

    def read_multiple(self, _tags: Any) -> Iterator[Any]:
        max_ts: int | None = None
        watermark = 0
        for batch in self.batches:
            if not batch:
                yield _Event(processing_time_event=_Event.AdvanceProcessingTime(advance_duration=_IDLE_TICK_MICROS))
                continue
            elements = []
            for record in batch:
                METRICS.events_in.inc()
                ts = self.event_time(record)
                if ts is not None:
                    max_ts = ts if max_ts is None else max(max_ts, ts)
                stamp = max(ts if ts is not None else watermark, watermark, 0)
                elements.append(
                    beam_runner_api_pb2.TestStreamPayload.TimestampedElement(
                        encoded_element=self.coder.encode(record), timestamp=stamp * 1000
                    )
                )
            yield _Event(element_event=_Event.AddElements(elements=elements))
            if max_ts is not None and max_ts - self.out_of_orderness_ms - 1 > watermark:
                watermark = max_ts - self.out_of_orderness_ms - 1
                yield _Event(watermark_event=_Event.AdvanceWatermark(new_watermark=watermark * 1000))
                METRICS.watermark_lag.set(max(0.0, time.time() - watermark / 1000))
        self.stop_clock.mark(max_ts if max_ts is not None else 0)


def _event_times(spec: JobSpec) -> Callable[[RawRecord], int | None]:
    cleaner, clock = spec.cleaner(), spec.clock()
    return lambda record: accepted_event_time(cleaner, record, clock())


def run_stream(spec: JobSpec, run_id: str) -> None:
    """Consume ``spec.source`` (a redis-stream:// URL) until :data:`STOP` is set, then drain."""
    batches = stream_batches(StreamSpec.parse(spec.source), spec.config.cleaning.max_record_bytes)
    stop_clock = StopClock(spec.redis_url, f"{spec.redis_prefix}:run:{run_id}:stop_at")
    service = TestStreamServiceController(
        WatermarkedEvents(
            batches,
            spec.config.stream.max_out_of_orderness_ms,
            stop_clock,
            _event_times(spec),
        )
    )
    service.start()
    try:
        pipeline = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner", "--streaming"]))
        records = pipeline | "ReadStream" >> TestStream(coder=PickleCoder(), endpoint=service.endpoint)
        build(spec, records, LiveCustomerFn(spec.config, stop_clock, spec.redis_prefix), run_key=run_id)
        pipeline.run().wait_until_finish()
    finally:
        service.stop()
    finish_forgets(spec, run_id)
