"""Keyed per-customer logic: dedup, features, segment membership, changes, timers.

Engines hold a :class:`CustomerState` per key and a buffer of pending events. They call
:meth:`CustomerLogic.advance` when an event-time timer fires; it applies pending events and due
rule timers in event-time order (ties by event id), so every engine and every replay produces the
same changes with the same ``seq``. It returns the time at which it wants to be woken next.

>>> from transforms.rules import parse_rules
>>> rules = parse_rules({"version": "v1", "segments": {"recent_buyer": {"since": "last.purchase", "within": "1d"}}})
>>> logic = CustomerLogic(rules, StreamConfig())
>>> state = logic.new_state("user:u1")
>>> buy = Event("e1", "purchase", 1_000, user_id="u1", order_id="o1", amount=5.0, currency="EUR")
>>> step = logic.advance(state, [buy], to_ts=1_000)
>>> [(c.segment, c.change, c.seq, c.reason) for c in step.changes], step.wake
([('recent_buyer', 'entered', 1, 'rule')], 86401001)
>>> step = logic.advance(state, [], to_ts=step.wake)
>>> [(c.segment, c.change, c.seq, c.reason) for c in step.changes]
[('recent_buyer', 'exited', 2, 'expiry')]
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from online_models import Models, PendingLabels
from transforms.changes import SegmentChange, change_id
from transforms.dead_letters import DeadLetter, Reason
from transforms.events import EVENT_TYPES, Event
from transforms.features import Features
from transforms.model_features import model_features
from transforms.privacy import FORGET, Forget, PrivacyLogic
from transforms.profile import SCORE_FEATURES, ProfileConfig, ProfileModel, ProfileState
from transforms.rfm import Population
from transforms.rules import RuleSet

MAX_IDENTIFIERS_PER_KIND = 20


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Event-time settings (milliseconds)."""

    max_out_of_orderness_ms: int = 5_000
    allowed_lateness_ms: int = 0
    dedup_horizon_ms: int = 86_400_000


@dataclass(slots=True)
class CustomerState:
    """Everything the job keeps about one customer; a plain value that pickles and restores."""

    customer_id: str
    clock: int | None = None  # event time this customer has been advanced to
    seq: int = 0
    segments: dict[str, int] = field(default_factory=dict)  # segment -> entered at
    profile: ProfileState = field(default_factory=ProfileState)
    identifiers: dict[str, list[str]] = field(default_factory=dict)
    recent_event_ids: dict[str, int] = field(default_factory=dict)  # event id -> ts, insertion ordered
    rule_wake: int | None = None  # the earliest of segment_wakes
    segment_wakes: dict[str, int] = field(default_factory=dict)  # segment -> when it may next flip
    rules_version: str | None = None  # the rule set the segments were last evaluated with
    labels: dict[str, PendingLabels] | None = None  # the models' pending snapshots (models on)
    model_wake: int | None = None  # when a pending label falls due or the scores are refreshed
    scores: dict[str, float | None] | None = None  # the model scores of the last profile rendered
    revisit_scores: tuple[int, dict[str, float | None]] | None = None  # (time, scores) of a revisit, to write
    consent: bool = True  # consent.personalization: granted until an event revokes it (transforms.privacy)
    forgotten_until: int | None = None  # a forget's event time: its customer's events up to it are dropped

    @property
    def features(self) -> Features:
        return self.profile.features

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        """Unpickle, giving fields that a snapshot of an older version lacks their defaults."""
        values = state[1]
        for spec in fields(self):
            if spec.name in values:
                value = values[spec.name]
            elif spec.default_factory is not MISSING:
                value = spec.default_factory()
            else:
                value = spec.default
            object.__setattr__(self, spec.name, value)


@dataclass(slots=True)
class Snapshot:
    """A customer's state with the events still waiting for the watermark: what moves between runs."""

    state: CustomerState
    pending: list[Event]


@dataclass(slots=True)
class Step:
    """What one :meth:`CustomerLogic.advance` produced."""

    changes: list[SegmentChange] = field(default_factory=list)
    accepted: list[Event] = field(default_factory=list)
    duplicates: list[Event] = field(default_factory=list)
    remaining: list[Event] = field(default_factory=list)
    wake: int | None = None
    touched: bool = False  # the profile changed (an event applied or a segment changed)
    no_consent: list[Event] = field(default_factory=list)  # accepted, not profiled: no consent
    revocations: int = 0  # customers whose consent this step revoked
    forgotten: list[Forget] = field(default_factory=list)  # customers erased by forget events


class CustomerLogic(PrivacyLogic):
    """Stateless behaviour over :class:`CustomerState` values."""

    def __init__(
        self,
        rules: RuleSet,
        config: StreamConfig,
        profile: ProfileConfig | None = None,
        population: Population | None = None,
        models: Models | None = None,
    ) -> None:
        self.rules = rules
        self.config = config
        self.model = ProfileModel(profile or ProfileConfig(), population, models)
        self.models = models
        # Segments whose rules read a model score: their changes have reason "model".
        self.scored = frozenset(
            name for name, condition in rules.segments.items() if condition.inputs() & set(SCORE_FEATURES)
        )
        # The segments an event of each type may affect: only these are evaluated again after it.
        self.affected = {
            kind: frozenset(
                name
                for name, condition in rules.segments.items()
                if any(self.model.touches(kind, feature) for feature in condition.inputs())
            )
            for kind in EVENT_TYPES
        }

    def use_models(self, models: Models) -> bool:
        """Continue from ``models`` (restored state) if they have this job's settings; True if taken."""
        if self.models is None or models.settings != self.models.settings:
            return False
        self.models = self.model.models = models
        return True

    def before_final(self) -> None:
        """Before the final profiles: rank against the complete RFM population; the models learn the
        labels still waiting."""
        self.model.population.refresh()
        if self.models is not None:
            self.models.flush()

    def new_state(self, customer_id: str) -> CustomerState:
        return CustomerState(customer_id, rules_version=self.rules.version)

    def _behind(self, clock: int | None, ts: int) -> bool:
        """Whether an event at ``ts`` is later than the allowed lateness behind ``clock``."""
        return clock is not None and ts < clock - self.config.allowed_lateness_ms

    def _late(self, clock: int | None, event: Event) -> bool:
        """Whether ``event`` becomes a ``late`` dead letter (an erasure request never does)."""
        return self._behind(clock, event.ts) and event.type != FORGET

    def admit(self, clock: int | None, wake: int | None, event: Event) -> tuple[bool, int | None]:
        """Engine hook for an arriving event: ``(late, timer)``.

        ``late`` means the event becomes a ``late`` dead letter. Otherwise the engine buffers it (a
        ``forget`` goes to :meth:`forget_now` instead) and, when ``timer`` is not None, sets its
        event-time timer to ``timer`` (earlier than ``wake``, the timer already set). An event
        behind the clock but within the lateness fires at the clock.
        """
        if self._late(clock, event):
            return True, None
        due = event.ts if clock is None else max(event.ts, clock)
        return False, (due if wake is None or due < wake else None)

    def split_late(self, clock: int | None, events: list[Event]) -> tuple[list[Event], list[Event]]:
        """``(on time, late)``: :meth:`admit`'s lateness test, for engines that learn the clock later."""
        on_time = [e for e in events if not self._late(clock, e)]
        late = [e for e in events if self._late(clock, e)]
        return on_time, late

    def advance_until(self, state: CustomerState, pending: list[Event], watermark: int) -> Step:
        """Fire this customer's timers one by one up to ``watermark``, as an engine whose watermark
        reached it would (the customer's clock ends at its last timer, not at the watermark)."""
        total = Step(remaining=pending)
        total.wake = min([e.ts for e in pending] + [t for t in (state.rule_wake,) if t is not None], default=None)
        while total.wake is not None and total.wake <= watermark:
            step = self.advance(state, total.remaining, total.wake)
            total.changes += step.changes
            total.accepted += step.accepted
            total.duplicates += step.duplicates
            total.touched = total.touched or step.touched
            total.no_consent += step.no_consent
            total.revocations += step.revocations
            total.forgotten += step.forgotten
            total.remaining, total.wake = step.remaining, step.wake
        return total

    def next_wake(self, state: CustomerState) -> int | None:
        """The customer's next timer with no pending event: a rule's flip or the state's expiry."""
        wakes = [t for t in (state.rule_wake, state.model_wake, self._expires_at(state)) if t is not None]
        return min(wakes, default=None)

    def idle(self, state: CustomerState) -> bool:
        """Whether nothing but the models' work is ahead of the customer (a label falling due, a
        revisit of the silent customer): no rule timer, nothing left to expire. An engine may then
        keep the customer on disk until their next event or timer."""
        return state.rule_wake is None and self._expires_at(state) is None

    def late_letter(self, event: Event) -> DeadLetter:
        """The dead letter of an event that :meth:`admit` found late."""
        return DeadLetter(
            reason=str(Reason.LATE),
            field="ts",
            message="event is behind its customer's event-time clock by more than the allowed lateness",
            payload=json.dumps(event.to_record(), ensure_ascii=False),
            source=event.source,
            position=event.position,
            event_id=event.event_id,
            event_time=event.ts,
        )

    def on_timer(
        self, state: CustomerState, pending: list[Event], fired_at: int, end: int | None, bounded: bool
    ) -> Step:
        """Engine hook for a fired timer. ``end`` caps event time (the input's end or ``--as-of``).

        On a bounded input every event has arrived when timers fire, so the customer goes straight
        to ``end``; on a live input it goes to ``fired_at``. ``step.wake`` is the next timer to set
        (None: none, including any past ``end``).
        """
        to_ts = end if bounded and end is not None else fired_at
        if end is not None:
            to_ts = min(to_ts, end)
        step = self.advance(state, pending, to_ts)
        if bounded:
            state.forgotten_until = None  # every event has arrived: nothing left to drop
        if step.wake is not None and end is not None and step.wake > end:
            step.wake = None
        return step

    def absorb(self, into: CustomerState, other: CustomerState) -> Step:
        """An identity merge: customer ``other`` becomes part of ``into``.

        ``other`` exits its segments; its profile, identifiers and recent event ids fold into
        ``into``'s (features as if every event had carried ``into``'s id), whose clock becomes the
        later of the two; then every segment of ``into`` is evaluated again. Each change has reason
        ``merge``. The engine moves ``other``'s pending events to ``into`` and drops ``other``.
        """
        step = Step(touched=True)
        into.revisit_scores = None  # its features change
        now = max((c for c in (into.clock, other.clock) if c is not None), default=None)
        if now is not None:
            self._evaluate(other, now, from_timer=False, step=step, reason="merge", leave=True)
        self.model.merge(into.profile, other.profile)
        if self.models is not None and other.labels is not None:
            if into.labels is None:
                into.labels = other.labels
            else:
                self.models.learn(self.models.merge(into.labels, other.labels))
            into.model_wake = self._next_model_wake(into, now)
        for kind, values in other.identifiers.items():
            for value in values:
                self._remember(into, kind, value)
        seen = other.recent_event_ids | into.recent_event_ids
        into.recent_event_ids = dict(sorted(seen.items(), key=lambda item: item[1]))
        if not (into.consent and other.consent):  # one of them said no: so does the merged customer
            self._revoke(into, now, step)
        into.clock = now
        if now is not None:
            self._evaluate(into, now, from_timer=False, step=step, reason="merge")
        return step

    def advance(self, state: CustomerState, pending: list[Event], to_ts: int) -> Step:
        """Apply pending events and rule timers up to ``to_ts`` in event-time order."""
        step = Step()
        if state.rules_version != self.rules.version and state.clock is not None:
            self._evaluate(state, state.clock, from_timer=False, step=step)  # a changed rule set
        state.rules_version = self.rules.version
        if len(pending) == 1:  # the common case: one event per timer
            due, step.remaining = (pending, []) if pending[0].ts <= to_ts else ([], pending)
        else:
            due = sorted((e for e in pending if e.ts <= to_ts), key=lambda e: e.order_key)
            step.remaining = [e for e in pending if e.ts > to_ts]
        floor = state.clock if state.clock is not None else -(2**62)
        first = state.features.last_seen is None  # before a customer's first event: every rule is evaluated
        kinds: set[str] = set()
        spend_before = state.features.spend  # the net spend before this millisecond's events (value model)
        for i, event in enumerate(due):
            self._fire_rule_timers(state, min(event.ts, to_ts), step)
            now = max(event.ts, floor)
            first = first or state.features.last_seen is None  # new, or cleared by privacy
            erasures = len(step.forgotten) + step.revocations
            if self._apply(state, event, now, step):
                kinds.add(event.type)
            elif len(step.forgotten) + step.revocations > erasures:
                kinds.clear()  # the events before it went with the erased state: the models must not see them
                spend_before = state.features.spend
            # Rules and models see all events of one millisecond at once (an invoice's lines, say).
            ends = i + 1 == len(due) or due[i + 1].ts != event.ts
            if kinds and ends:
                if self.models is not None:
                    spent = state.features.spend - spend_before
                    self._observe(state, "purchase" if "purchase" in kinds else event.type, now, spent)
                self._evaluate(state, now, from_timer=False, step=step, kinds=None if first else kinds)
                kinds, first = set(), False
            if ends:
                spend_before = state.features.spend
        self._fire_rule_timers(state, to_ts, step)
        previous, state.clock = state.clock, to_ts if state.clock is None else max(state.clock, to_ts)
        self._expire(state, previous)
        wakes = [e.ts for e in step.remaining]
        for wake in (state.rule_wake, state.model_wake, self._expires_at(state)):
            if wake is not None:
                wakes.append(wake)
        step.wake = min(wakes, default=None)
        return step

    def _apply(self, state: CustomerState, event: Event, now: int, step: Step) -> bool:
        """Apply ``event`` unless it is a duplicate; True when applied."""
        state.revisit_scores = None  # an event (even one dropped below) comes after the revisit
        # The horizon is checked here, not only by _expire at the end of advance, so the
        # outcome does not depend on how event time was split into advance calls.
        seen = state.recent_event_ids.get(event.event_id)
        if seen is not None and seen >= now - self.config.dedup_horizon_ms:
            step.duplicates.append(event)
            return False
        if state.forgotten_until is not None and event.ts <= state.forgotten_until:
            step.accepted.append(event)  # from before a forget that was carried out: erased on arrival
            return False
        if event.type == FORGET:
            self._forget(state, event, now, step)
            return False
        if not self._consented(state, event, now, step):
            return False
        state.recent_event_ids.pop(event.event_id, None)  # re-insert at the end: expiry walks insertion order
        state.recent_event_ids[event.event_id] = event.ts
        models, last = self.models, state.features.last_seen
        silent = models is not None and last is not None and now > last + models.silence_step
        if silent and self._snapshot_silence(state, now - 1) is not None:
            state.model_wake = None  # the silent snapshots may fall due first: _observe sets it again
        self.model.add(state.profile, event)
        self.remember_identifiers(state, event)
        step.accepted.append(event)
        step.touched = True
        return True

    def _fire_rule_timers(self, state: CustomerState, until: int, step: Step) -> None:
        """Fire the rule and model timers due by ``until``, in event-time order."""
        while True:
            due = [t for t in (state.rule_wake, state.model_wake) if t is not None and t <= until]
            if not due:
                return
            now = min(due)
            if state.model_wake == now:
                self._model_timer(state, now, step)
            if state.rule_wake == now:
                self._evaluate(state, now, from_timer=True, step=step, kinds=())

    def _observe(self, state: CustomerState, event_type: str, now: int, spent: float) -> None:
        """The models' part of the events applied at ``now`` (``event_type``: ``purchase`` if one
        was; ``spent``: their net spend): the labels a purchase decides, then a feature snapshot
        with all of them."""
        assert self.models is not None
        if state.labels is None:
            state.labels = self.models.new_pending()
        profile = state.profile
        examples = self.models.observe(
            state.labels, lambda: model_features(self.model, profile, now), event_type, now, spent
        )
        if examples:
            self.models.learn(examples)
        wake = state.model_wake
        # A wake ahead stays right unless the event's examples moved the first due time, or the
        # next revisit, now a silence step after the last event, comes first.
        if examples or wake is None or wake <= now or wake > state.features.last_seen + self.models.silence_step:
            state.model_wake = self._next_model_wake(state, now)

    def _snapshot_silence(self, state: CustomerState, until: int) -> int | None:
        """Snapshot a silent customer at the points of its silence up to ``until`` not taken yet
        (:meth:`Models.silent_points`; its features at a past time are known, nothing happened
        since); the last point, or None when there was none."""
        last = state.features.last_seen
        if self.models is None or state.labels is None or last is None:
            return None
        at = None
        for at in self.models.silent_points(state.labels, last, until):
            self.models.observe(state.labels, model_features(self.model, state.profile, at), "silence", at)
        return at

    def _model_timer(self, state: CustomerState, now: int, step: Step) -> None:
        """Label the snapshots whose horizon passed (the models learn them). At a revisit of the
        silent customer (:meth:`Models.next_revisit`: after 1, 2, 4, ... propensity horizons of
        silence, and at each ``refresh`` boundary) first take its silent snapshots since the last
        one and a snapshot now (so the models see recency grow), and recompute the scores: the
        profile is written again if one moved, and the segments that read them are evaluated."""
        assert self.models is not None and state.labels is not None
        profile = state.profile
        features = None
        if self.model.next_score_refresh(profile, now - 1) == now:  # a revisit
            self._snapshot_silence(state, now - 1)
            features = model_features(self.model, profile, now)  # once, for the snapshot and the scores
            self.models.observe(state.labels, features, "refresh", now)
        self.models.learn(self.models.expire(state.labels, now))
        state.model_wake = self._next_model_wake(state, now)
        if features is None:
            return
        scores = self.model.scores(profile, now, features)
        if state.scores is None or any(
            abs((state.scores.get(name) or 0.0) - (value or 0.0)) >= self.models.settings.score_write_delta
            for name, value in scores.items()
        ):
            step.touched = True  # the profile is written again with these scores (unless an event comes first)
            state.revisit_scores = (now, scores)
            if self.scored:
                self._evaluate(state, now, from_timer=True, step=step, kinds=(), also=self.scored)

    def _next_model_wake(self, state: CustomerState, now: int) -> int | None:
        """The next pending label's due time or score refresh, whichever comes first."""
        assert self.models is not None
        due = None if state.labels is None else self.models.next_due(state.labels)
        wakes = [t for t in (due, self.model.next_score_refresh(state.profile, now)) if t is not None]
        return min(wakes, default=None)

    def _evaluate(
        self,
        state: CustomerState,
        now: int,
        from_timer: bool,
        step: Step,
        kinds: Iterable[str] | None = None,
        reason: str | None = None,
        leave: bool = False,
        also: Iterable[str] = (),
    ) -> None:
        """Evaluate the segments that may have changed at ``now``: those whose timer is due, those
        the applied event types (``kinds``) affect and those named in ``also``; every segment when
        ``kinds`` is None. ``reason`` overrides the changes' reason; ``leave`` exits every segment."""
        if not state.consent and not leave:
            return  # without consent: in no segment
        wakes = state.segment_wakes
        if leave:
            names = set(state.segments)
        elif kinds is None:
            names = set(self.rules.segments) | set(state.segments)
        else:
            names = {name for name, at in wakes.items() if at <= now} | set(also)
            for kind in kinds:
                names |= self.affected[kind]
        view = self.model.view(state.profile, now)
        for segment in sorted(names):
            condition = None if leave else self.rules.segments.get(segment)
            holds, flip = condition.evaluate(view, now) if condition is not None else (False, None)
            if flip is not None and flip > now:
                wakes[segment] = flip
            else:
                wakes.pop(segment, None)
            if holds == (segment in state.segments):
                continue
            entered = holds
            kind = "entered" if entered else "exited"
            why = reason or ("model" if segment in self.scored else "expiry" if from_timer and not entered else "rule")
            state.seq += 1
            step.changes.append(
                SegmentChange(
                    change_id=change_id(state.customer_id, segment, kind, state.seq),
                    customer_id=state.customer_id,
                    segment=segment,
                    change=kind,
                    seq=state.seq,
                    event_time=now,
                    reason=why,
                    rules_version=self.rules.version,
                    scores=self.rules.decided_by(segment, view),
                )
            )
            if entered:
                state.segments[segment] = now
            else:
                del state.segments[segment]
            step.touched = True
        state.rule_wake = min(wakes.values(), default=None)

    def remember_identifiers(self, state: CustomerState, event: Event) -> None:
        """Keep the event's identifiers with the customer (up to a cap per kind), but those the
        identity graph gave another customer when the event arrived (``Event.foreign``)."""
        foreign = getattr(event, "foreign", ())  # an event pickled before the field existed has none
        for kind, value in event.identifiers():
            if (kind, value) not in foreign:
                self._remember(state, kind, value)

    @staticmethod
    def _remember(state: CustomerState, kind: str, value: str) -> None:
        known = state.identifiers.setdefault(kind, [])
        if value not in known and len(known) < MAX_IDENTIFIERS_PER_KIND:
            known.append(value)

    def _expire(self, state: CustomerState, previous: int | None) -> None:
        """Drop event ids past the dedup horizon and window data no window can see again (checked
        when the clock enters a new pane of the finest window: nothing expires in between)."""
        clock = state.clock or 0
        cutoff = clock - self.config.dedup_horizon_ms
        ids = state.recent_event_ids
        while ids:
            oldest = next(iter(ids))
            if ids[oldest] >= cutoff:
                break
            del ids[oldest]
        finest = self.model.windows.finest
        if previous is None or previous // finest != clock // finest:
            self.model.prune(state.profile, min(clock - self.config.allowed_lateness_ms, self._unsnapshotted(state)))
        guard_ends = self._forget_guard_ends(state)
        if guard_ends is not None and clock >= guard_ends:
            state.forgotten_until = None  # an event from before the forget would now be late

    def _unsnapshotted(self, state: CustomerState) -> int:
        """The first silent point not snapshotted yet (what its windows see must stay), else 2**62.
        Only points after three steps of silence are snapshotted late (at a revisit after they
        passed): with no window that long, they see nothing anyway."""
        last = state.features.last_seen
        if (
            self.models is None
            or state.labels is None
            or last is None
            or self.model.windows.longest <= 3 * self.models.silence_step
        ):
            return 2**62
        return next(iter(self.models.silent_points(state.labels, last, 2**62)), 2**62)

    def _forget_guard_ends(self, state: CustomerState) -> int | None:
        """When events from before a carried-out forget can no longer arrive on time (None: no forget)."""
        until = state.forgotten_until
        if until is None:
            return None
        return until + self.config.max_out_of_orderness_ms + self.config.allowed_lateness_ms + 1

    def _expires_at(self, state: CustomerState) -> int | None:
        """When :meth:`_expire` will next have something to drop (a timer, so idle state shrinks)."""
        guard_ends = self._forget_guard_ends(state)
        if guard_ends is not None:
            return guard_ends
        last = state.features.last_seen
        if last is None or (not state.recent_event_ids and self.model.windows.is_empty(state.profile.activity)):
            return None
        keep = max(self.config.dedup_horizon_ms, self.model.windows.longest)
        return max(last + keep + self.config.allowed_lateness_ms + 1, (state.clock or last) + 1)

    @staticmethod
    def _revisit_scores(state: CustomerState) -> dict[str, float | None] | None:
        """The scores a revisit computed, if the profile is rendered as of that revisit (taken once)."""
        revisit, state.revisit_scores = state.revisit_scores, None
        return revisit[1] if revisit is not None and revisit[0] == state.clock else None

    def profile(self, state: CustomerState) -> dict[str, Any]:
        """The customer's profile as readers see it (Redis and ``--profiles-out``); remembers the
        scores it shows (a score refresh writes the profile again only when they moved)."""
        profile = {
            "customer_id": state.customer_id,
            "identifiers": {kind: list(values) for kind, values in sorted(state.identifiers.items())},
            "segments": sorted(state.segments),
            "seq": state.seq,
            "consent": "granted" if state.consent else "revoked",
            **self.model.render(state.profile, state.clock, self._revisit_scores(state)),
            "as_of": state.clock,
            "rules_version": self.rules.version,
        }
        if self.models is not None:
            state.scores = {name: profile[name] for name in SCORE_FEATURES}
        return profile
