"""Per-customer features that the segment rules read.

Rules name features with dotted paths: ``count.<event type>``, ``last.<event type>`` (epoch ms of the
latest event of that type), ``first_seen``, ``last_seen``, ``spend``, ``orders``, ``refunds``,
``cart_value``. Timestamps are UTC epoch milliseconds; absent means "never".

>>> features = Features()
>>> features.add(Event("e1", "add_to_cart", 1000, user_id="u", price=20.0, quantity=2))
>>> features.value("cart_value"), features.value("last.add_to_cart"), features.value("last.purchase")
(40.0, 1000, None)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transforms.events import EVENT_TYPES, Event

NUMERIC_FEATURES = frozenset({"spend", "orders", "refunds", "cart_value"}) | {f"count.{t}" for t in EVENT_TYPES}
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
    cart_value: float = 0.0
    last_order_id: str | None = None

    def add(self, event: Event) -> None:
        """Fold one event in (events arrive in event-time order per customer)."""
        kind = event.type
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.last_at[kind] = max(self.last_at.get(kind, event.ts), event.ts)
        self.first_seen = event.ts if self.first_seen is None else min(self.first_seen, event.ts)
        self.last_seen = event.ts if self.last_seen is None else max(self.last_seen, event.ts)
        line_value = (event.price or 0.0) * (event.quantity or 1)
        if kind == "add_to_cart":
            self.cart_value += line_value
        elif kind == "remove_from_cart":
            self.cart_value = max(0.0, self.cart_value - line_value)
        elif kind == "purchase":
            self.spend += event.amount or 0.0
            self.cart_value = 0.0
            if event.order_id != self.last_order_id:
                self.orders += 1
                self.last_order_id = event.order_id
        elif kind == "refund":
            self.spend -= event.amount or 0.0
            self.refunds += 1

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
