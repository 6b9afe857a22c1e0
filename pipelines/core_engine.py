"""The plain-Python engine: the core steps in one loop, with a watermark and a timer heap.

It is the reference every other engine is compared with (parity) and the throughput ceiling an
engine can approach. Single process, no checkpoints: for replays, tests and benchmarks.

A customer with no pending event and no timer (nothing can change until their next event), or
whose only timer is the models' (a label falling due, a revisit of the silent customer), is
dormant: their state moves to the customer store on disk (SQLite, see
:mod:`pipelines.customer_store`) with that timer, so memory holds only customers still active within
their windows, however many customers the stream brings. Stored timers come back into the heap as
the watermark reaches them, before the heap fires anything, so they fire in the same order as if
they had stayed. At the end every customer goes to the store.

With identity stitching on (``identity.stitch``), the identity graph resolves each event's
identifiers to a canonical customer id before it is admitted; when an event links customers, the
absorbed ones are folded into the survivor (:meth:`transforms.customer.CustomerLogic.absorb`) with
their pending events, and an :class:`transforms.changes.IdentityMerge` record is emitted. The
graph is kept with the customers (``--resume``).
"""

from __future__ import annotations

import heapq
from pathlib import Path

from pipelines.customer_store import customer_store, reevaluate_on_new_rules, restore_shared, save_shared
from pipelines.job import JobSpec, clean_record
from pipelines.metrics import METRICS
from pipelines.model_publisher import ModelPublisher
from pipelines.outputs import OutputSink
from pipelines.sources import read_records
from pipelines.stitched import resolve
from transforms.changes import IdentityMerge
from transforms.customer import CustomerState, Snapshot, Step
from transforms.dead_letters import DeadLetter
from transforms.events import FORGET, Event
from transforms.identity import IdentityGraph


class CoreEngine:
    """Keyed state in dicts, event-time timers in a heap, watermark = max event time - out-of-orderness."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.cleaner = spec.cleaner()
        self.logic = spec.logic()
        self.sink = OutputSink(
            spec.redis_url, spec.outputs, self.logic.profile, spec.redis_prefix, salt=spec.config.cleaning.email_salt
        )
        self.states: dict[str, CustomerState] = {}
        self.pending: dict[str, list[Event]] = {}
        self.wakes: dict[str, int] = {}
        self.timers: list[tuple[int, str]] = []
        self.stored_wake: int | None = None  # the earliest timer of a dormant customer
        identity = spec.config.identity
        self.graph = IdentityGraph(identity) if identity is not None else None

    def run(self) -> None:
        with customer_store(self.spec.state_file) as store:
            self.store = store
            restore_shared(store, self.logic)
            if self.graph is not None:
                self.graph = store.get_shared("identity") or self.graph
            self.publisher = ModelPublisher(self.spec.redis_url, self.spec.redis_prefix, self.logic.models)
            reevaluate_on_new_rules(store, self.logic, self._emit_changes)
            self.stored_wake = store.earliest_wake()  # timers of customers from an earlier run
            self._replay()
            if self.graph is not None:
                store.put_shared("identity", self.graph)
            save_shared(store, self.logic)
            self.publisher.publish()
            self.sink.close()  # the outputs are flushed before the saved state moves on

    def _replay(self) -> None:
        max_ts: int | None = None
        out_of_order = self.spec.config.stream.max_out_of_orderness_ms
        for record in read_records(
            Path(self.spec.source), self.spec.config.cleaning.max_record_bytes, self.spec.progress
        ):
            event = clean_record(self.cleaner, record, self.spec.now_ms)
            METRICS.events_in.inc()
            if isinstance(event, DeadLetter):
                self._dead_letter(event)
                continue
            self._admit(event)
            if max_ts is None or event.ts > max_ts:
                max_ts = event.ts
                # Like Flink's bounded out-of-orderness: an event at exactly the bound may still come.
                self._fire(max_ts - out_of_order - 1, end=None, bounded=False)
        if max_ts is not None:
            self._finish(max(max_ts, self.spec.as_of or max_ts))

    def _finish(self, end: int) -> None:
        """Input done: every customer goes to ``end`` (timers up to it fire) and into the store;
        then, against the complete RFM population, every final profile."""
        self.timers.clear()
        self.wakes.clear()
        for key, state in self.states.items():
            self.store.put(key, Snapshot(state, self.pending.pop(key, [])), None)
        self.states.clear()
        for key in self.store.all_keys():
            snapshot = self.store.get(key)
            assert snapshot is not None
            step = self.logic.on_timer(snapshot.state, snapshot.pending, end, end, bounded=True)
            self._emit_changes(step)
            if self._erase(key, snapshot.state, step):
                self.store.delete(key)
                continue
            self.store.put(key, Snapshot(snapshot.state, step.remaining), self.logic.next_wake(snapshot.state))
        self.logic.before_final()
        for snapshot in self.store.snapshots():
            self.sink.final_profile(snapshot.state)
            METRICS.customers.inc()

    def _route(self, event: Event) -> str:
        """The customer an event belongs to; merges the customers it links (identity stitching)."""
        if self.graph is None:
            return event.customer_key
        resolution = resolve(self.graph, event)
        for reason, _ in resolution.refused:
            METRICS.identity_refused.labels(reason).inc()
        key = resolution.customer_id
        absorbed = [other for other in resolution.absorbed if self._absorb(key, other)]
        if absorbed:
            self.sink.merge(IdentityMerge.of(key, absorbed, event.event_id, event.ts))
        return key

    def _absorb(self, key: str, other: str) -> bool:
        """Fold customer ``other`` into ``key`` (False: ``other`` never had state, nothing to move)."""
        absorbed = self.states.get(other) or self._wake_up(other)
        if absorbed is None:
            return False
        state = self.states.get(key) or self._wake_up(key)
        if state is None:
            state = self.states[key] = self.logic.new_state(key)
        step = self.logic.absorb(state, absorbed)
        del self.states[other]
        self.wakes.pop(other, None)  # its heap entries are now ignored
        pending = self.pending.pop(key, []) + self.pending.pop(other, [])
        if pending:
            self.pending[key] = pending
        wakes = [e.ts for e in pending] + [w for w in (self.logic.next_wake(state),) if w is not None]
        if wakes and (key not in self.wakes or min(wakes) < self.wakes[key]):
            self._set_timer(key, min(wakes))
        METRICS.identity_merges.inc()
        self._emit_changes(step)
        self.sink.profile(state)
        return True

    def _admit(self, event: Event) -> None:
        key = self._route(event)
        state = self.states.get(key)
        if state is None:
            state = self._wake_up(key)
        late, timer = self.logic.admit(state.clock if state else None, self.wakes.get(key), event)
        if late:
            if state is not None and self.graph is not None:  # the graph linked them all the same
                self.logic.remember_identifiers(state, event)
            self._dead_letter(self.logic.late_letter(event))
            return
        if state is None:
            state = self.states[key] = self.logic.new_state(key)
        if event.type == FORGET:  # carried out as it arrives
            self._emit(key, self.logic.forget_now(state, self.pending.pop(key, []), event))
            return
        self.pending.setdefault(key, []).append(event)
        if timer is not None:
            self._set_timer(key, timer)

    def _set_timer(self, key: str, ts: int) -> None:
        self.wakes[key] = ts
        heapq.heappush(self.timers, (ts, key))
        if len(self.timers) > 2 * len(self.wakes) + 1024:  # mostly superseded entries: keep the live ones
            self.timers = [(wake, customer) for customer, wake in self.wakes.items()]
            heapq.heapify(self.timers)

    def _fire(self, watermark: int, end: int | None, bounded: bool) -> None:
        if self.stored_wake is not None and self.stored_wake <= watermark:
            for key in self.store.due(watermark):
                self._wake_up(key)
            self.stored_wake = self.store.earliest_wake()
        while self.timers and self.timers[0][0] <= watermark:
            ts, key = heapq.heappop(self.timers)
            if self.wakes.get(key) != ts:
                continue  # superseded by an earlier timer
            del self.wakes[key]
            state = self.states.get(key) or self._wake_up(key)
            assert state is not None, key
            step = self.logic.on_timer(state, self.pending.pop(key, []), ts, end, bounded)
            self._emit(key, step)

    def _wake_up(self, key: str) -> CustomerState | None:
        """Bring a stored customer back into memory with its timer (None: unknown customer)."""
        stored = self.store.take(key)
        if stored is None:
            return None
        snapshot, wake = stored
        self.states[key] = snapshot.state
        if snapshot.pending:
            self.pending[key] = snapshot.pending
        if wake is not None and (key not in self.wakes or wake < self.wakes[key]):
            self._set_timer(key, wake)
        return snapshot.state

    def _emit(self, key: str, step: Step) -> None:
        if step.remaining:
            self.pending[key] = step.remaining
        if step.wake is not None:
            self._set_timer(key, step.wake)
        self._emit_changes(step)
        state = self.states[key]
        if self._erase(key, state, step):
            del self.states[key]
            return
        if step.touched:
            self.sink.profile(state)
            self.publisher.maybe_publish()
        if key not in self.pending and (step.wake is None or self.logic.idle(state)):
            self.store.put(key, Snapshot(state, []), step.wake)
            del self.states[key]
            self.wakes.pop(key, None)  # its heap entry is now ignored
            if step.wake is not None and (self.stored_wake is None or step.wake < self.stored_wake):
                self.stored_wake = step.wake

    def _erase(self, key: str, state: CustomerState, step: Step) -> bool:
        """Carry out the step's forgets: identity graph, Redis, files, receipt (:mod:`pipelines.forget`).
        True when the customer is gone (nothing of theirs came after the forget)."""
        for forget in step.forgotten:
            members = self.graph.members(key) if self.graph is not None else []
            removed = self.graph.forget(key) if self.graph is not None else 0
            self.sink.forget(forget, members, removed)
        return self.logic.erased(state, step)

    def _emit_changes(self, step: Step) -> None:
        METRICS.record_step(step)
        for change in step.changes:
            self.sink.change(change)

    def _dead_letter(self, letter: DeadLetter) -> None:
        METRICS.record_dead_letter(letter)
        self.sink.dead_letter(letter)
