"""Sliding event-time windows per customer, kept as panes: one accumulator serves every window.

A window ``name`` of ``size`` sliding by ``slide`` covers, at event time ``now``, the panes (slots of
``slide`` milliseconds aligned to the epoch) from ``size / slide - 1`` panes before the one holding
``now`` up to ``now``: "the last 7 days, by day" at Wednesday noon starts the Thursday before at 00:00.

Per window it reports ``events``, ``count.<type>``, ``products``, ``categories`` and ``orders``
(distinct ids), ``sessions`` (sessions that started in the window; a session ends after an inactivity
gap), ``session_minutes`` (their mean duration), ``cart_value`` (value added to carts) and ``spend``
(purchases net of refunds). :class:`WindowSet` has the accumulator operations ``create``, ``add``,
``merge``, ``result``, plus ``next_change`` (when a value can next change with no new event) and
``prune`` (drop what no window can see again).

>>> windows = WindowSet((WindowSpec("1h", 3_600_000, 300_000),), session_gap_ms=1_800_000)
>>> activity = windows.create()
>>> windows.add(activity, Event("e1", "add_to_cart", 0, user_id="u", product_id="p", price=20.0, quantity=2))
>>> windows.add(activity, Event("e2", "page_view", 600_000, user_id="u"))
>>> result = windows.result(activity, "1h", now=600_000)
>>> result["events"], result["cart_value"], result["sessions"], result["session_minutes"]
(2, 40.0, 1, 10.0)
>>> windows.next_change(activity, now=600_000)  # the pane at 0 leaves the window at 1 h
3600000
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transforms.events import EVENT_TYPES, Event

_TYPES = tuple(sorted(EVENT_TYPES))
_TYPE_INDEX = {kind: i for i, kind in enumerate(_TYPES)}
_EVENTS = len(_TYPES)  # a pane: [count per type..., events, spend, cart value]
_SPEND = _EVENTS + 1
_CART = _SPEND + 1
_SLOTS = _CART + 1
_SEEN = ("products", "categories", "orders")
_SLOT = {"events": _EVENTS, "spend": _SPEND, "cart_value": _CART} | {f"count.{k}": i for k, i in _TYPE_INDEX.items()}
METRICS = frozenset(
    {"events", "products", "categories", "orders", "sessions", "session_minutes", "cart_value", "spend"}
    | {f"count.{kind}" for kind in _TYPES}
)


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A sliding window: ``size_ms`` long, moving by ``slide_ms`` (which divides ``size_ms``)."""

    name: str
    size_ms: int
    slide_ms: int
    panes: int = field(init=False, compare=False)  # size_ms // slide_ms

    def __post_init__(self) -> None:
        if self.slide_ms <= 0 or self.size_ms <= 0 or self.size_ms % self.slide_ms:
            raise ValueError(f"window {self.name!r}: size must be a positive multiple of slide")
        object.__setattr__(self, "panes", self.size_ms // self.slide_ms)

    def first_pane(self, now: int) -> int:
        """Index (in ``slide_ms`` units) of the oldest pane the window covers at ``now``."""
        return now // self.slide_ms - self.panes + 1

    def start(self, now: int) -> int:
        return self.first_pane(now) * self.slide_ms


@dataclass(slots=True)
class Activity:
    """One customer's windowed activity; a plain value that pickles, restores and merges."""

    panes: dict[int, dict[int, list[float]]] = field(default_factory=dict)  # slide -> pane -> slots
    products: dict[str, int] = field(default_factory=dict)  # id -> last seen
    categories: dict[str, int] = field(default_factory=dict)
    orders: dict[str, int] = field(default_factory=dict)
    sessions: list[list[int]] = field(default_factory=list)  # [start, end], by start, apart by >= gap


def _last_seen(seen: dict[str, int], key: str | None, ts: int) -> None:
    if key is not None and seen.get(key, ts - 1) < ts:
        seen[key] = ts


class WindowSet:
    """The configured windows and session gap: behaviour over :class:`Activity` values."""

    def __init__(self, specs: tuple[WindowSpec, ...], session_gap_ms: int) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self.session_gap_ms = session_gap_ms
        self.slides = sorted({spec.slide_ms for spec in specs})
        self.longest = max((spec.size_ms + spec.slide_ms for spec in specs), default=0)
        self.finest = min((spec.slide_ms for spec in specs), default=60_000)
        self.widest = max(self.specs, key=lambda name: self.specs[name].size_ms, default=None)  # its name
        self._empty = {name: self._result(Activity(), name, 0) for name in self.specs}  # the same at any time

    def create(self) -> Activity:
        return Activity()

    def add(self, activity: Activity, event: Event) -> None:
        """Fold one event in; events may come in any order."""
        kind, ts = _TYPE_INDEX[event.type], event.ts
        slot, value = 0, 0.0  # the one money slot an event may add to (slot 0 with 0.0: none)
        if event.type == "purchase":
            slot, value = _SPEND, event.amount or 0.0
        elif event.type == "refund":
            slot, value = _SPEND, -(event.amount or 0.0)
        elif event.type == "add_to_cart":
            slot, value = _CART, (event.price or 0.0) * (event.quantity or 1)
        for slide in self.slides:
            panes = activity.panes.get(slide)
            if panes is None:
                panes = activity.panes[slide] = {}
            pane = panes.get(ts // slide)
            if pane is None:
                pane = panes[ts // slide] = [0] * _SLOTS  # ints pickle small; money turns a slot float
            pane[kind] += 1
            pane[_EVENTS] += 1
            if value:
                pane[slot] += value
        _last_seen(activity.products, event.product_id, event.ts)
        _last_seen(activity.categories, event.category, event.ts)
        if event.type in ("purchase", "refund"):
            _last_seen(activity.orders, event.order_id, event.ts)
        self._add_session(activity.sessions, event.ts, event.ts)

    def _add_session(self, sessions: list[list[int]], start: int, end: int) -> None:
        """Insert the span [start, end] and join every session less than a gap away from it."""
        gap = self.session_gap_ms
        i = len(sessions)
        while i > 0 and sessions[i - 1][0] > start:
            i -= 1
        sessions.insert(i, [start, end])
        if i > 0 and start - sessions[i - 1][1] < gap:
            sessions[i - 1][1] = max(sessions[i - 1][1], end)
            del sessions[i]
            i -= 1
        while i + 1 < len(sessions) and sessions[i + 1][0] - sessions[i][1] < gap:
            sessions[i][1] = max(sessions[i][1], sessions[i + 1][1])
            del sessions[i + 1]

    def merge(self, into: Activity, other: Activity) -> Activity:
        """Fold ``other`` into ``into``: the result equals one accumulator fed both event streams."""
        for slide, panes in other.panes.items():
            mine = into.panes.setdefault(slide, {})
            for index, slots in panes.items():
                if index in mine:
                    mine[index] = [a + b for a, b in zip(mine[index], slots, strict=True)]
                else:
                    mine[index] = slots.copy()
        for mine, theirs in (
            (into.products, other.products),
            (into.categories, other.categories),
            (into.orders, other.orders),
        ):
            for key, ts in theirs.items():
                _last_seen(mine, key, ts)
        for start, end in other.sessions:
            self._add_session(into.sessions, start, end)
        return into

    def result(self, activity: Activity, name: str, now: int) -> dict[str, float]:
        """Every metric of window ``name`` at ``now``, in one pass over each part of the activity."""
        if self.is_empty(activity):  # a customer silent for longer than every window (pruned)
            return dict(self._empty[name])
        return self._result(activity, name, now)

    def _result(self, activity: Activity, name: str, now: int) -> dict[str, float]:
        spec = self.specs[name]
        last = now // spec.slide_ms
        first = last - spec.panes + 1
        totals = [0] * _SLOTS
        for index, pane in activity.panes.get(spec.slide_ms, {}).items():
            if first <= index <= last:
                totals = [a + b for a, b in zip(totals, pane, strict=True)]
        start = first * spec.slide_ms
        durations = [end - begin for begin, end in activity.sessions if start <= begin <= now]
        result: dict[str, float] = {f"count.{kind}": totals[i] for kind, i in _TYPE_INDEX.items()}
        result.update(
            events=totals[_EVENTS],
            cart_value=round(totals[_CART], 2),
            spend=round(totals[_SPEND], 2),
            sessions=len(durations),
            session_minutes=round(sum(durations) / len(durations) / 60_000, 3) if durations else 0.0,
        )
        for metric in _SEEN:
            result[metric] = sum(1 for ts in getattr(activity, metric).values() if start <= ts <= now)
        return result

    def value(self, activity: Activity, name: str, metric: str, now: int) -> float:
        """One metric of window ``name`` at ``now`` (only what it needs is computed)."""
        if self.is_empty(activity):
            return self._empty[name][metric]
        spec = self.specs[name]
        start = spec.start(now)
        if metric in _SEEN:
            seen: dict[str, int] = getattr(activity, metric)
            return sum(1 for ts in seen.values() if start <= ts <= now)
        if metric in ("sessions", "session_minutes"):
            durations = [end - begin for begin, end in activity.sessions if start <= begin <= now]
            if metric == "sessions":
                return len(durations)
            return round(sum(durations) / len(durations) / 60_000, 3) if durations else 0.0
        last = now // spec.slide_ms
        first = last - spec.panes + 1
        slot = _SLOT[metric]
        total = 0
        for index, pane in activity.panes.get(spec.slide_ms, {}).items():
            if first <= index <= last:
                total += pane[slot]
        return round(total, 2) if slot >= _SPEND else total

    def next_change(self, activity: Activity, now: int, name: str | None = None) -> int | None:
        """The earliest time after ``now`` at which something leaves window ``name`` (None: any window)."""
        earliest: int | None = None
        for spec in self.specs.values() if name is None else (self.specs[name],):
            slide = spec.slide_ms
            last = now // slide
            first = last - spec.panes + 1
            oldest = min((i for i in activity.panes.get(slide, ()) if first <= i <= last), default=None)
            if oldest is not None:
                leaves = (oldest + spec.panes) * slide
                earliest = leaves if earliest is None or leaves < earliest else earliest
        return earliest

    def prune(self, activity: Activity, horizon: int) -> None:
        """Drop what no window can see at any time from ``horizon`` on (events before it are late)."""
        for slide, panes in list(activity.panes.items()):
            oldest = min((s.first_pane(horizon) for s in self.specs.values() if s.slide_ms == slide), default=None)
            for index in [i for i in panes if oldest is None or i < oldest]:
                del panes[index]
            if not panes:
                del activity.panes[slide]
        start = horizon - self.longest
        for seen in (activity.products, activity.categories, activity.orders):
            for key in [k for k, ts in seen.items() if ts < start]:
                del seen[key]
        # A session that started before every window can still absorb an event less than a gap after
        # its end; once that cannot happen it is of no further use.
        gap = self.session_gap_ms
        activity.sessions[:] = [s for s in activity.sessions if s[0] >= start or s[1] + gap > horizon]

    def is_empty(self, activity: Activity) -> bool:
        return not (activity.panes or activity.products or activity.categories or activity.orders or activity.sessions)
