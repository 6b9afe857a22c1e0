"""Per-customer features that the segment rules read.

Rules name features with dotted paths: ``count.<event type>``, ``last.<event type>`` (epoch ms of the
latest event of that type), ``first_seen``, ``last_seen``, ``spend``, ``orders``, ``refunds``,
``cart_value`` (value added to the cart since the last purchase, less removals, never below 0).
Timestamps are UTC epoch milliseconds; absent means "never".

Every feature is a function of the set of events folded in, not of their order, so two customers'
features merge (:meth:`Features.merge`) into what one customer fed both streams would have: the
basis of identity merges.

>>> features = Features()
>>> features.add(Event("e1", "add_to_cart", 1000, user_id="u", price=20.0, quantity=2))
>>> features.value("cart_value"), features.value("last.add_to_cart"), features.value("last.purchase")
(40.0, 1000, None)
>>> other = Features()
>>> other.add(Event("e2", "purchase", 900, user_id="v", order_id="o1", amount=5.0, currency="EUR"))
>>> merged = features.merge(other)
>>> merged.value("cart_value"), merged.value("orders"), merged.value("first_seen")
(40.0, 1, 900)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transforms.events import EVENT_TYPES, Event

NUMERIC_FEATURES = frozenset({"spend", "orders", "refunds", "cart_value"}) | {f"count.{t}" for t in EVENT_TYPES}
MAX_CART_LINES = 64  # cart lines kept since the last purchase; beyond, the oldest are folded together
TIME_FEATURES = frozenset({"first_seen", "last_seen"}) | {f"last.{t}" for t in EVENT_TYPES}


@dataclass(slots=True)
class Features:
    """Accumulated features of one customer; mutable, picklable, cheap to update."""

    counts: dict[str, int] = field(default_factory=dict)
    last_at: dict[str, int] = field(default_factory=dict)
    first_seen: int | None = None
    last_seen: int | None = None
    spend: float = 0.0
    orders: int = 0
    refunds: int = 0
    cart: list[tuple[int, float]] = field(default_factory=list)  # cart lines since the last purchase
    last_order_id: str | None = None

    @property
    def cart_value(self) -> float:
        return max(0.0, sum(value for _, value in self.cart))

    def add(self, event: Event) -> None:
        """Fold one event in (in event-time order per customer: ``orders`` counts changes of ``order_id``)."""
        kind = event.type
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.last_at[kind] = max(self.last_at.get(kind, event.ts), event.ts)
        self.first_seen = event.ts if self.first_seen is None else min(self.first_seen, event.ts)
        self.last_seen = event.ts if self.last_seen is None else max(self.last_seen, event.ts)
        line_value = (event.price or 0.0) * (event.quantity or 1)
        if kind in ("add_to_cart", "remove_from_cart"):
            if event.ts > self.last_at.get("purchase", event.ts - 1):  # a line before the last purchase was bought
                self._add_cart_line(event.ts, line_value if kind == "add_to_cart" else -line_value)
        elif kind == "purchase":
            self.spend += event.amount or 0.0
            self.cart = [line for line in self.cart if line[0] > event.ts]
            if event.order_id != self.last_order_id:
                self.orders += 1
                self.last_order_id = event.order_id
        elif kind == "refund":
            self.spend -= event.amount or 0.0
            self.refunds += 1

    def _add_cart_line(self, ts: int, value: float) -> None:
        self.cart.append((ts, value))
        if len(self.cart) > MAX_CART_LINES:
            self.cart.sort()
            self._fold_cart()

    def _fold_cart(self) -> None:
        """Fold the oldest lines together down to the cap (a purchase between them is then approximate)."""
        while len(self.cart) > MAX_CART_LINES:
            (_, first), (second_ts, second) = self.cart[0], self.cart[1]
            self.cart[:2] = [(second_ts, first + second)]

    def merge(self, other: Features) -> Features:
        """Fold ``other`` (another customer's features) in, as if one customer had had both streams.

        Exact except ``orders`` when the two streams interleave lines of the same order."""
        for kind, count in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + count
        mine_bought, theirs_bought = self.last_at.get("purchase"), other.last_at.get("purchase")
        for kind, ts in other.last_at.items():
            self.last_at[kind] = max(self.last_at.get(kind, ts), ts)
        for name in ("first_seen", "last_seen"):
            pick = min if name == "first_seen" else max
            values = [v for v in (getattr(self, name), getattr(other, name)) if v is not None]
            setattr(self, name, pick(values) if values else None)
        self.spend += other.spend
        self.refunds += other.refunds
        self.orders += other.orders - (other.last_order_id is not None and other.last_order_id == self.last_order_id)
        if theirs_bought is not None and (mine_bought is None or theirs_bought > mine_bought):
            self.last_order_id = other.last_order_id
        bought = self.last_at.get("purchase")
        self.cart = sorted(line for line in self.cart + other.cart if bought is None or line[0] > bought)
        self._fold_cart()
        return self

    def value(self, name: str) -> float | int | None:
        """The feature called ``name`` (see the module docstring)."""
        head, _, tail = name.partition(".")
        if head == "count":
            return self.counts.get(tail, 0)
        if head == "last":
            return self.last_at.get(tail)
        return getattr(self, name)

    def next_change(self, name: str, op: str, threshold: float, holds: bool) -> None:
        """Lifetime features change only with events (so :class:`Features` can serve as a rule view)."""
        return None

    def to_dict(self) -> dict[str, object]:
        return {
            "counts": dict(sorted(self.counts.items())),
            "last_at": dict(sorted(self.last_at.items())),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "spend": round(self.spend, 2),
            "orders": self.orders,
            "refunds": self.refunds,
            "cart_value": round(self.cart_value, 2),
        }
