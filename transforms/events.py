"""The cleaned event every later step works on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CLICKSTREAM_TYPES = frozenset(
    {"page_view", "product_view", "add_to_cart", "remove_from_cart", "checkout", "login", "identify"}
)
TRANSACTION_TYPES = frozenset({"purchase", "refund"})
EVENT_TYPES = CLICKSTREAM_TYPES | TRANSACTION_TYPES  # the types that are profiled
FORGET = "forget"  # a clickstream request to erase the customer (transforms.privacy); never profiled, so
INPUT_TYPES = EVENT_TYPES | {FORGET}  # not in EVENT_TYPES, whose order lays out the window panes
IDENTIFIER_FIELDS = ("user_id", "email", "device_id", "anonymous_id")  # in canonical priority order


@dataclass(slots=True)
class Event:
    """A validated, normalized event. ``ts`` is UTC epoch milliseconds; ``email`` is a salted hash."""

    event_id: str
    type: str
    ts: int
    anonymous_id: str | None = None
    user_id: str | None = None
    email: str | None = None
    device_id: str | None = None  # a device's own id, when the app sends one; links like the others
    session_id: str | None = None
    product_id: str | None = None
    category: str | None = None
    price: float | None = None
    quantity: int | None = None
    order_id: str | None = None
    amount: float | None = None
    currency: str | None = None
    consent: dict[str, bool] | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    position: str = ""
    # With identity stitching: identifiers of another customer (a refused link), not kept with this one.
    foreign: tuple[tuple[str, str], ...] = ()

    @property
    def customer_key(self) -> str:
        """The per-customer key: ``user:<id>``, else ``anon:<id>``, else ``email:<hash>``."""
        if self.user_id is not None:
            return f"user:{self.user_id}"
        if self.anonymous_id is not None:
            return f"anon:{self.anonymous_id}"
        return f"email:{self.email}"

    def identifiers(self) -> list[tuple[str, str]]:
        """The (kind, value) identifiers this event carries, in a fixed order."""
        return [(kind, value) for kind in IDENTIFIER_FIELDS if (value := getattr(self, kind)) is not None]

    def to_record(self) -> dict[str, Any]:
        """The event as a contract record (normalized; the email stays hashed)."""
        record = asdict(self)
        del record["source"], record["position"], record["foreign"]
        return {k: v for k, v in record.items() if v is not None and v != {}}

    @property
    def order_key(self) -> tuple[int, str]:
        """Deterministic processing order within a customer: event time, then id."""
        return (self.ts, self.event_id)
