"""Engine-free steps that make an engine's output equal the core loop's whatever its watermark timing.

The core loop (:mod:`pipelines.core_engine`) advances its watermark (largest event time read minus
the allowed out-of-orderness, minus 1 ms) right after each event that raises it and fires every due
timer then. A distributed engine's watermark travels separately from the records and lags behind
them (Flink emits it periodically), so whether an event beyond the out-of-orderness bound is `late`
would depend on timing. Here the watermark the core loop had also travels *with* every record:

- :class:`ReadStep` runs where the input is read in order (one reader per source). It numbers the
  records, cleans them and tags each event with the core loop's watermark at its arrival.
- :class:`CustomerDriver` runs in the engine's keyed step. Before it admits an event it fires the
  customer's timers up to the event's tag, as the core loop did. The engine's own timers only wake
  it (to emit changes while a customer is idle): :meth:`CustomerDriver.trigger` is when the core
  loop would fire next for this customer, and :meth:`CustomerDriver.on_watermark` fires up to the
  engine's watermark, which never runs ahead of the tags.

Both hold their state as plain values the engine keeps in its keyed state (:class:`ReadState`,
:class:`Keyed`). All behaviour is :class:`transforms.customer.CustomerLogic`'s hooks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.job import clean_record
from pipelines.metrics import METRICS, PRIVACY_COUNTS, JobMetrics
from pipelines.sources import RawRecord, decode_json
from transforms.cleaning import Cleaner
from transforms.customer import CustomerLogic, CustomerState, Step
from transforms.dead_letters import DeadLetter
from transforms.events import FORGET, Event

if TYPE_CHECKING:
    from pipelines.stitched import Stitcher

MIN_TS = -(2**62)  # the watermark before any event

Counts = Counter[tuple[str, ...]]  # ("events_in",), (type, outcome), ("change", segment, change), ...

# Kinds of the outputs both steps yield as (kind, value) pairs. FORGOTTEN: a
# :class:`transforms.privacy.Forget`, after the changes of its step (the sink erases the customer).
CHANGE, PROFILE, FINAL, DEAD, COUNTS, FORGOTTEN = "change", "profile", "final", "dead", "counts", "forgotten"


@dataclass(slots=True)
class Tagged:
    """A cleaned event (or the end of the input) on its way to its customer's keyed step."""

    key: str
    tag: int  # the core loop's watermark when this record arrived
    event: Event | None  # None: the input ended; the customer goes to ``end``
    end: int | None = None
    # With identity stitching (:mod:`pipelines.stitched`) ``key`` is the component's: the event's
    # canonical customer, and the customers it absorbed.
    customer: str | None = None
    absorbed: tuple[str, ...] = ()


@dataclass(slots=True)
class Batch:
    """Records of one customer, in input order, handed to its keyed step in one call (one state
    write and one output per batch instead of per event)."""

    key: str
    records: list[Tagged]
    ts: int  # the engine timestamp: ``ts - out_of_order - 1`` never passes the tag of a record sent later


def batch_by_key(records: list[Tagged], watermark: int, out_of_order_ms: int) -> list[Batch]:
    """``records`` (in input order) grouped by customer, in the order of each customer's first record.

    ``watermark`` is the reader's watermark after the last of them. A batch's timestamp is the tag
    of the next batch's first record (the watermark for the last), plus the out-of-orderness and
    1 ms: an engine watermark derived from the timestamps (largest minus the out-of-orderness, minus
    1 ms) never passes the tag of a record sent after it, as with one record per event.
    """
    groups: dict[str, list[Tagged]] = {}
    for record in records:
        group = groups.get(record.key)
        if group is None:
            groups[record.key] = [record]
        else:
            group.append(record)
    keyed = list(groups.items())
    batches = []
    for i, (key, group) in enumerate(keyed):
        safe = keyed[i + 1][1][0].tag if i + 1 < len(keyed) else watermark
        batches.append(Batch(key, group, safe + out_of_order_ms + 1))
    return batches


@dataclass(slots=True)
class ReadState:
    """What the reader keeps: the last position read, the largest event time, the count not yet reported."""

    position: int = 0
    max_ts: int | None = None
    unreported: int = 0

    def to_tuple(self) -> tuple[int, int | None, int]:
        """A plain tuple: an engine stores it after every record, and tuples pickle fastest."""
        return (self.position, self.max_ts, self.unreported)

    @classmethod
    def from_tuple(cls, value: tuple[int, int | None, int] | None) -> ReadState:
        return cls() if value is None else cls(*value)


class ReadStep:
    """Numbers, decodes and cleans input lines in input order; tags events with the watermark."""

    def __init__(
        self,
        cleaner: Cleaner,
        source: str,
        clock: Callable[[], int],
        max_bytes: int,
        out_of_order_ms: int,
        stitcher: Stitcher | None = None,
    ) -> None:
        self.cleaner = cleaner
        self.stitcher = stitcher  # identity stitching: resolves events, keys them by component
        self.source = source
        self.clock = clock  # processing time, for cleaning's "too far in the future" check
        self.max_bytes = max_bytes
        self.out_of_order_ms = out_of_order_ms

    def watermark(self, state: ReadState) -> int:
        return MIN_TS if state.max_ts is None else state.max_ts - self.out_of_order_ms - 1

    def read(self, state: ReadState, line: str, report_every: int = 1000) -> Iterator[tuple[str, Any]]:
        """One input line: a :class:`Tagged` event or a dead letter, and every ``report_every``
        records the count of records read (``COUNTS``)."""
        state.position += 1
        if not line.strip():
            return  # blank lines count as positions, not records (as in pipelines.sources)
        state.unreported += 1
        if state.unreported >= report_every:
            yield self.report(state)
        record = decode_json(line.encode(), self.source, str(state.position), self.max_bytes)
        yield from self.clean(state, record)

    def clean(self, state: ReadState, record: RawRecord) -> Iterator[tuple[str, Any]]:
        result = clean_record(self.cleaner, record, self.clock())
        if isinstance(result, DeadLetter):
            yield DEAD, result
            return
        if self.stitcher is None:
            yield "event", Tagged(result.customer_key, self.watermark(state), result)
        else:
            tagged, refused = self.stitcher.tag(result, self.watermark(state))
            if refused:
                yield COUNTS, refused
            yield "event", tagged
        if state.max_ts is None or result.ts > state.max_ts:
            state.max_ts = result.ts

    def report(self, state: ReadState) -> tuple[str, Counts]:
        counts: Counts = Counter({("events_in",): state.unreported})
        state.unreported = 0
        return COUNTS, counts

    def end(self, state: ReadState, keys: Iterator[str], as_of: int | None) -> Iterator[tuple[str, Any]]:
        """The input ended: the count not reported yet, and an end marker for every customer seen."""
        if state.unreported:
            yield self.report(state)
        if state.max_ts is None:
            return
        end = max(state.max_ts, as_of or state.max_ts)
        tag = self.watermark(state)
        for key in keys:
            yield "event", Tagged(key, tag, None, end)


@dataclass(slots=True)
class Keyed:
    """One customer in the engine's keyed state: the core's state, pending events and timer."""

    state: CustomerState
    pending: list[Event] = field(default_factory=list)
    wake: int | None = None  # the core loop's timer for this customer
    tag: int = MIN_TS  # tag of the customer's latest record: the core loop fires only after it moved on
    touched: bool = False  # the profile changed since it was last sent (:meth:`CustomerDriver.profile`)
    counts: Counts = field(default_factory=Counter)  # accepted and duplicate events, sent with the final profile


class CustomerDriver:
    """The keyed step over :class:`Tagged` records (see the module's docstring)."""

    def __init__(self, logic: CustomerLogic) -> None:
        self.logic = logic
        self.final_started = False

    def on_record(
        self, keyed: Keyed | None, record: Tagged, customer: str | None = None
    ) -> tuple[Keyed | None, list[tuple[str, Any]]]:
        """A record of this customer (``customer``, by default the record's key): the keyed value to
        keep (None for a late first event, or when a forget erased the customer: :meth:`gone`) and
        the outputs."""
        out: list[tuple[str, Any]] = []
        if keyed is not None:
            self.fire(keyed, record.tag, out)
            if self.gone(keyed):
                keyed = None  # forgotten: the event starts a new customer, as in the core loop
        event = record.event
        if event is None:  # the input ended: the customer goes to the end, its final profile follows
            if keyed is not None:
                end = record.end or 0
                self._emit(keyed, self.logic.on_timer(keyed.state, keyed.pending, end, end, bounded=True), out)
                if self.gone(keyed):
                    keyed = None
            return keyed, out
        state = keyed.state if keyed is not None else None
        late, timer = self.logic.admit(state.clock if state else None, keyed.wake if keyed else None, event)
        if late:
            if keyed is not None and record.customer is not None:  # stitching linked them all the same
                self.logic.remember_identifiers(keyed.state, event)
            out.append((DEAD, self.logic.late_letter(event)))
            return keyed, out
        if keyed is None:
            keyed = Keyed(self.logic.new_state(customer or record.key))
        keyed.tag = record.tag
        if event.type == FORGET:  # carried out as it arrives
            self._emit(keyed, self.logic.forget_now(keyed.state, keyed.pending, event), out)
            return (None if self.gone(keyed) else keyed), out
        keyed.pending.append(event)
        if timer is not None:
            keyed.wake = timer
        return keyed, out

    def on_records(self, keyed: Keyed | None, records: list[Tagged]) -> tuple[Keyed | None, list[tuple[str, Any]]]:
        """A :class:`Batch`'s records, one after the other, exactly as :meth:`on_record` one by one."""
        out: list[tuple[str, Any]] = []
        for record in records:
            keyed, step = self.on_record(keyed, record)
            out.extend(step)
        return keyed, out

    def on_watermark(self, keyed: Keyed, watermark: int) -> list[tuple[str, Any]]:
        """The engine's watermark reached ``watermark``: fire what the core loop had fired by then."""
        out: list[tuple[str, Any]] = []
        self.fire(keyed, watermark, out)
        return out

    def gone(self, keyed: Keyed) -> bool:
        """Whether nothing is left of the customer (a forget erased it and no event came since): the
        engine drops its keyed value, as the core loop drops the customer (no final profile)."""
        return keyed.wake is None and not keyed.pending and self.logic.is_blank(keyed.state)

    @staticmethod
    def trigger(keyed: Keyed | None) -> int | None:
        """The engine watermark at which this customer has timers to fire (None: none)."""
        if keyed is None or keyed.wake is None:
            return None
        return max(keyed.wake, keyed.tag + 1)

    def fire(self, keyed: Keyed, watermark: int, out: list[tuple[str, Any]]) -> None:
        """Fire the customer's timers up to ``watermark``, as the core loop had by then."""
        if watermark <= keyed.tag:
            return  # the core loop has not advanced since this customer's latest record
        while keyed.wake is not None and keyed.wake <= watermark:
            step = self.logic.on_timer(keyed.state, keyed.pending, keyed.wake, None, bounded=False)
            self._emit(keyed, step, out)

    def profile(self, keyed: Keyed) -> tuple[str, dict[str, Any]]:
        """The customer's current profile. Rendering costs more than a step: engines send a touched
        customer at most every so often, as the core loop renders once per batch."""
        keyed.touched = False
        return PROFILE, self.logic.profile(keyed.state)

    def profiles(self, keyed: Keyed) -> Iterator[tuple[str, dict[str, Any]]]:
        """The profile if it changed since it was last sent (the keyed step's render timer)."""
        if keyed.touched:
            yield self.profile(keyed)

    def final(self, keyed: Keyed) -> list[tuple[str, Any]]:
        """The customer's final profile and counts, once every customer reached the end (as in the
        core loop, against the complete RFM population)."""
        if not self.final_started:
            self.logic.before_final()
            self.final_started = True
        return [(FINAL, self.logic.profile(keyed.state)), (COUNTS, keyed.counts)]

    def _emit(self, keyed: Keyed, step: Step, out: list[tuple[str, Any]]) -> None:
        keyed.pending = step.remaining
        keyed.wake = step.wake
        out.extend((CHANGE, change) for change in step.changes)
        out.extend((FORGOTTEN, forget) for forget in step.forgotten)  # after its exits: they are kept
        keyed.counts.update((event.type, "accepted") for event in step.accepted)
        keyed.counts.update((event.type, "duplicate") for event in step.duplicates)
        if step.no_consent or step.revocations or step.forgotten:
            keyed.counts.update(
                {("no_consent",): len(step.no_consent), ("consent_revocations",): step.revocations,
                 ("forgets",): len(step.forgotten)}
            )  # fmt: skip
        # A profile rendered before a forget would be written after the sink erased the customer.
        keyed.touched = step.touched or (keyed.touched and not step.forgotten)
        if self.logic.erased(keyed.state, step):  # the keyed value goes (gone): its counts now
            out.append((COUNTS, keyed.counts))
            keyed.counts = Counter()


def count_output(counts: Counts, kind: str, value: Any) -> None:
    """Add what one output of either step means for the run's counters to ``counts``."""
    if kind == COUNTS:
        counts.update(value)
    elif kind == CHANGE:
        counts[("change", value.segment, value.change)] += 1
    elif kind == DEAD:
        counts[("dead_letter", value.reason)] += 1
    elif kind == FINAL:
        counts[("customers",)] += 1


def record_counts(counts: Counts, metrics: JobMetrics = METRICS) -> None:
    """Add ``counts`` (from :func:`count_output`) to the Prometheus counters the run summary reads."""
    for key, n in counts.items():
        if key == ("events_in",):
            metrics.events_in.inc(n)
        elif key == ("customers",):
            metrics.customers.inc(n)
        elif key[0] == "change":
            metrics.changes.labels(key[1], key[2]).inc(n)
        elif key[0] == "dead_letter":
            metrics.dead_letters.labels(key[1]).inc(n)
        elif key[0] == "model_updates":
            continue  # per task, summed over the workers: the run summary's (pipelines.flink_job)
        elif key == ("identity_merges",):
            metrics.identity_merges.inc(n)
        elif key[0] == "identity_refused":
            metrics.identity_refused.labels(key[1]).inc(n)
        elif key[0] in PRIVACY_COUNTS.values():
            getattr(metrics, key[0]).inc(n)
        else:
            metrics.events.labels(*key).inc(n)
