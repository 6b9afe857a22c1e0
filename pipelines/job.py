"""What a run needs, independent of the engine that executes it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.outputs import OutputPaths
from pipelines.sources import RawRecord
from transforms.cleaning import Cleaner
from transforms.config import JobConfig
from transforms.customer import CustomerLogic
from transforms.dead_letters import DeadLetter
from transforms.events import Event


@dataclass(frozen=True)
class Clock:
    """The processing clock of cleaning's 'too far in the future' check: fixed (replays, ``--now``)
    or, with ``fixed_ms`` None, the wall clock at each record (a live run goes on for days).

    >>> Clock(5)()
    5
    >>> Clock(None)() > 1_700_000_000_000
    True
    """

    fixed_ms: int | None

    def __call__(self) -> int:
        return self.fixed_ms if self.fixed_ms is not None else int(time.time() * 1000)


@dataclass(frozen=True)
class JobSpec:
    """A run: input, configuration, where results go, and the clocks it is given."""

    source: str  # a file path or a redis-stream:// URL
    config: JobConfig
    redis_url: str
    outputs: OutputPaths
    now_ms: int  # processing clock the cleaning step checks "far in the future" against
    as_of: int | None = None  # advance event time to this after the input ends
    progress: bool = False
    redis_prefix: str = "segstream"
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    chunk_events: int = 250_000  # a Beam file replay runs one pipeline per this many records
    state_file: Path | None = None  # --resume: customers continue from (and are saved to) this store
    engine_conf: tuple[tuple[str, str], ...] = ()  # Flink configuration (KEY, VALUE) pairs: --flink-conf
    wall_clock: bool = False  # live runs without --now: "the future" is the wall clock at each record

    def clock(self) -> Clock:
        """The processing clock cleaning checks event times against (see :class:`Clock`)."""
        return Clock(None if self.wall_clock else self.now_ms)

    def cleaner(self) -> Cleaner:
        return Cleaner(self.config.cleaning)

    def logic(self) -> CustomerLogic:
        return self.config.logic()


def clean_record(cleaner: Cleaner, record: RawRecord, now_ms: int) -> Event | DeadLetter:
    """Decode errors and cleaning rejections both end as dead letters."""
    if record.error is not None:
        return cleaner.dead_letter(record.payload, record.error, record.source, record.position)
    return cleaner.clean(record.payload, record.source, record.position, now_ms)


def accepted_event_time(cleaner: Cleaner, record: RawRecord, now_ms: int) -> int | None:
    """The event time of ``record`` once cleaned; None when cleaning rejects it. Only this may move
    a watermark, as in the core loop: a rejected record's timestamp (one far in the future, say)
    must not."""
    result = clean_record(cleaner, record, now_ms)
    return result.ts if isinstance(result, Event) else None
