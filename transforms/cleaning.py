"""Cleaning on the fly: one raw record in, one :class:`Event` or one :class:`DeadLetter` out.

>>> cleaner = Cleaner(CleaningConfig(email_salt="s"))
>>> now = 1_700_000_000_000
>>> event = cleaner.clean({"event_id": "e1", "type": "page_view", "ts": 1_600_000_000_000,
...                        "user_id": " u1 ", "email": "Ann@Shop.CO", "utm": "x"}, "demo", "1", now)
>>> event.user_id, event.email == hash_email("ann@shop.co", "s"), event.properties
('u1', True, {'utm': 'x'})
>>> cleaner.clean({"event_id": "e2", "type": "purchase", "ts": 1_600_000_000_000,
...                "user_id": "u1"}, "demo", "2", now).reason
'missing_field'
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from transforms.currencies import normalize_currency
from transforms.dead_letters import DeadLetter, Reason, Rejection
from transforms.events import INPUT_TYPES, TRANSACTION_TYPES, Event
from transforms.identifiers import hash_email, normalize_email, normalize_identifier
from transforms.timestamps import check_event_time, parse_event_time

KNOWN_FIELDS = frozenset(
    {
        "event_id",
        "type",
        "ts",
        "anonymous_id",
        "user_id",
        "email",
        "device_id",
        "session_id",
        "product_id",
        "category",
        "price",
        "quantity",
        "order_id",
        "amount",
        "currency",
        "consent",
        "properties",
    }
)
DAY_MS = 86_400_000
# Extra fields (top level or in ``properties``) that identify a person directly: their values are
# hashed like emails on entry (names compared in lower case; ``cleaning.pii_properties`` replaces the list).
DEFAULT_PII_PROPERTIES = frozenset(
    [
        "phone",
        "phone_number",
        "mobile",
        "ip",
        "ip_address",
        "name",
        "first_name",
        "last_name",
        "full_name",
        "address",
        "street",
        "postal_code",
        "zip",
        "birth_date",
        "date_of_birth",
        "ssn",
        "passport",
    ]
)
# An address-shaped token in raw text (a line that is not JSON, an oversized line's head); its domain
# may be empty (``ann@``: the local part is still personal). It only starts where a token starts (the
# lookbehind) and its local part never backtracks (possessive): a plain ``[^...]+@`` retried at every
# offset of a long run without '@' is quadratic (a 64 KiB line: 16 s).
_TOKEN = r"[^\s@\"'\\,;:<>()\[\]{}]"
_EMAIL_IN_TEXT = re.compile(rf"(?<!{_TOKEN}){_TOKEN}++@{_TOKEN}*")
# The last token of a text cut at an arbitrary byte (an oversized line's head): it may be an address
# cut anywhere (``ann.l``, ``ann@``, ``ann@sho``), which no pattern can tell from other text, so it goes.
# Tried only where a run of token characters and '@' starts: linear, like the pattern above.
_CUT_TOKEN = re.compile(rf"(?<!{_TOKEN})(?<!@)(?:{_TOKEN}|@)++\Z")
MAX_NESTING = 32  # levels of objects and arrays in one record; deeper ones are malformed (encoders recurse)
_INT_BITS_MAX = 14_000  # an int this long still has fewer digits than str() converts (4300 by default)
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
# Hard ceilings of the configurable limits (transforms/config.py checks them). A double holds whole
# units exactly up to 1e15, and sums of such amounts stay finite for any feasible number of events.
MAX_AMOUNT_CEILING = 1e15
MAX_QUANTITY_CEILING = 2**53  # every whole number up to it is exact in a double


@dataclass(frozen=True, slots=True)
class CleaningConfig:
    """Settings of the cleaning step."""

    email_salt: str
    max_future_ms: int = DAY_MS
    max_record_bytes: int = 64 * 1024
    pii_properties: frozenset[str] = DEFAULT_PII_PROPERTIES  # lower-case names of extra fields to hash
    max_amount: float = 1e9  # amount, price and price x quantity above it are out_of_range (currency units)
    max_quantity: int = 1_000_000  # quantity above it is out_of_range


def _text(record: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = record.get(name)
    if value is None:
        if required:
            raise Rejection(Reason.MISSING_FIELD, name, f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Rejection(Reason.WRONG_TYPE, name, f"{name} must be a string")
    if isinstance(value, int) and value.bit_length() > _INT_BITS_MAX:  # str() would raise ValueError
        raise Rejection(Reason.WRONG_TYPE, name, f"{name} must be a string")
    text = str(value).strip()
    if not text and required:
        raise Rejection(Reason.MISSING_FIELD, name, f"{name} is empty")
    return text or None


def _number(record: dict[str, Any], name: str, required: bool = False) -> float | None:
    value = record.get(name)
    if value is None or value == "":
        if required:
            raise Rejection(Reason.MISSING_FIELD, name, f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Rejection(Reason.WRONG_TYPE, name, f"{name} must be a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an int too large for a float
        raise Rejection(Reason.INVALID_NUMBER, name, f"{name} is not a number") from None
    if not math.isfinite(number):
        raise Rejection(Reason.INVALID_NUMBER, name, f"{name} must be finite")
    return number


def _integer(record: dict[str, Any], name: str) -> int | None:
    number = _number(record, name)
    if number is None:
        return None
    if number != int(number):
        raise Rejection(Reason.INVALID_NUMBER, name, f"{name} must be a whole number")
    return int(number)


def _identifiers(record: dict[str, Any], salt: str) -> dict[str, str | None]:
    ids: dict[str, str | None] = {}
    for name in ("anonymous_id", "user_id"):
        raw = _text(record, name)
        ids[name] = normalize_identifier(raw) if raw is not None else None
    raw_email = _text(record, "email")
    email = normalize_email(raw_email) if raw_email is not None else None
    ids["email"] = hash_email(email, salt) if email is not None else None
    if not any(ids.values()):  # a device_id alone does not make an event usable (the input contract)
        raise Rejection(Reason.MISSING_IDENTIFIER, None, "no usable anonymous_id, user_id or email")
    raw_device = _text(record, "device_id")
    ids["device_id"] = normalize_identifier(raw_device) if raw_device is not None else None
    return ids


def _consent(record: dict[str, Any]) -> dict[str, bool] | None:
    value = record.get("consent")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, bool) for v in value.values()):
        raise Rejection(Reason.WRONG_TYPE, "consent", "consent must be an object of booleans")
    return {str(k): v for k, v in value.items()}


def too_deep(value: object, limit: int = MAX_NESTING) -> bool:
    """Whether ``value`` nests dicts and lists more than ``limit`` levels (iterative: safe at any depth)."""
    level = [value] if isinstance(value, dict | list | tuple) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list | tuple)
        ]
    return False


def _printable(value: object, depth: int = MAX_NESTING) -> object:
    """``value`` cut at ``depth`` levels, with ints too long for str(), NaN and infinities (as the text of
    their JSON-like literal: ``"NaN"``, ``"Infinity"``) and odd keys replaced (strict JSON)."""
    if isinstance(value, dict | list | tuple):
        if depth == 0:
            return "<nested too deep>"
        if isinstance(value, dict):
            return {
                k if isinstance(k, str) else repr(_printable(k, 1)): _printable(v, depth - 1) for k, v in value.items()
            }
        return [_printable(v, depth - 1) for v in value]
    if isinstance(value, int) and value.bit_length() > _INT_BITS_MAX:
        return f"<int of {value.bit_length()} bits>"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _json_payload(record: object) -> str:
    try:
        return json.dumps(record, default=repr, ensure_ascii=False, allow_nan=False)
    except (RecursionError, TypeError, ValueError):  # too deep, an odd key, an int too long, NaN or infinity
        return json.dumps(_printable(record), default=repr, ensure_ascii=False, allow_nan=False)


def _finite(value: object) -> bool:
    """Whether every float in ``value`` (nested in dicts and lists) is finite."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict | list | tuple):
            stack.extend(item.values() if isinstance(item, dict) else item)
    return True


def _properties(record: dict[str, Any], config: CleaningConfig) -> dict[str, Any]:
    given = record.get("properties")
    if given is not None and not isinstance(given, dict):
        raise Rejection(Reason.WRONG_TYPE, "properties", "properties must be an object")
    properties = dict(given or {})
    properties.update((k, v) for k, v in record.items() if k not in KNOWN_FIELDS)
    properties = _hash_pii(properties, config)
    for key, value in properties.items():  # only Avro input can hold them: JSON has no NaN or infinity
        if not _finite(value):
            field = key if key in record and key not in KNOWN_FIELDS else "properties"
            raise Rejection(Reason.INVALID_NUMBER, field, f"{field} holds a number that is not finite")
    return properties


def _hash_pii(fields: dict[str, Any], config: CleaningConfig) -> dict[str, Any]:
    """``fields`` with the values of the PII names pseudonymized (:func:`_pseudonym`).

    >>> config = CleaningConfig(email_salt="s")
    >>> hashed = _hash_pii({"Phone": "+44 20 7946 0000", "utm": "x", "name": {"first": "Ann"}}, config)
    >>> hashed["Phone"] == hash_email("+44 20 7946 0000", "s"), hashed["utm"], hashed["name"]
    (True, 'x', '<redacted>')
    """
    named = [key for key in fields if isinstance(key, str) and key.lower() in config.pii_properties]
    if not named:
        return fields
    return {**fields, **{key: _pseudonym(fields[key], config.email_salt) for key in named}}


def _pseudonym(value: Any, salt: str) -> Any:
    """Text and numbers hashed; null and booleans kept (they name no one); objects and lists redacted."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str | float) or (isinstance(value, int) and value.bit_length() <= _INT_BITS_MAX):
        return hash_email(str(value), salt)
    return "<redacted>"  # an object, a list, or an int too long for str()


class Cleaner:
    """Validates and normalizes records per the input contract. Stateless; time is an argument."""

    def __init__(self, config: CleaningConfig) -> None:
        self.config = config

    def clean(self, record: object, source: str, position: str, now_ms: int) -> Event | DeadLetter:
        """Return the cleaned event, or the dead letter that explains the rejection."""
        try:
            return self._clean(record, source, position, now_ms)
        except Rejection as rejection:
            return self.dead_letter(record, rejection, source, position)

    def _clean(self, record: object, source: str, position: str, now_ms: int) -> Event:
        if not isinstance(record, dict):
            raise Rejection(Reason.MALFORMED, None, "record is not a JSON object")
        if too_deep(record):
            raise Rejection(Reason.MALFORMED, None, f"record nests deeper than {MAX_NESTING} levels")
        event_id = _text(record, "event_id", required=True)
        event_type = _text(record, "type", required=True)
        if event_type not in INPUT_TYPES:
            raise Rejection(Reason.UNKNOWN_EVENT_TYPE, "type", f"unknown event type {event_type!r}")
        if record.get("ts") is None:
            raise Rejection(Reason.MISSING_FIELD, "ts", "ts is required")
        ts = check_event_time(parse_event_time(record["ts"]), now_ms, self.config.max_future_ms)
        ids = _identifiers(record, self.config.email_salt)
        is_transaction = event_type in TRANSACTION_TYPES
        price = _number(record, "price")
        quantity = _integer(record, "quantity")
        amount = _number(record, "amount", required=is_transaction)
        order_id = _text(record, "order_id", required=is_transaction)
        currency = None
        raw_currency = _text(record, "currency", required=is_transaction)
        if raw_currency is not None:
            currency = normalize_currency(raw_currency)
            if currency is None:
                raise Rejection(Reason.INVALID_CURRENCY, "currency", "currency is not an ISO 4217 code")
        self._check_ranges(amount, price, quantity)
        return Event(
            event_id=event_id,
            type=event_type,
            ts=ts,
            anonymous_id=ids["anonymous_id"],
            user_id=ids["user_id"],
            email=ids["email"],
            device_id=ids["device_id"],
            session_id=_text(record, "session_id"),
            product_id=_text(record, "product_id"),
            category=_text(record, "category"),
            price=price,
            quantity=quantity,
            order_id=order_id,
            amount=amount,
            currency=currency,
            consent=_consent(record),
            properties=_properties(record, self.config),
            source=source,
            position=position,
        )

    def _check_ranges(self, amount: float | None, price: float | None, quantity: int | None) -> None:
        """Reject numbers outside the configured limits: money ones (and their sums) then stay finite."""
        limit, most = self.config.max_amount, self.config.max_quantity
        for name, value in (("amount", amount), ("price", price)):
            if value is not None and value < 0:
                raise Rejection(Reason.OUT_OF_RANGE, name, f"{name} must not be negative")
            if value is not None and value > limit:
                raise Rejection(Reason.OUT_OF_RANGE, name, f"{name} exceeds cleaning.max_amount ({limit:g})")
        if quantity is not None and quantity <= 0:
            raise Rejection(Reason.OUT_OF_RANGE, "quantity", "quantity must be positive")
        if quantity is not None and quantity > most:
            raise Rejection(Reason.OUT_OF_RANGE, "quantity", f"quantity exceeds cleaning.max_quantity ({most})")
        if price is not None and quantity is not None and price * quantity > limit:
            raise Rejection(Reason.OUT_OF_RANGE, "price", f"price x quantity exceeds cleaning.max_amount ({limit:g})")

    def dead_letter(self, record: object, rejection: Rejection, source: str, position: str) -> DeadLetter:
        """Build the dead letter for ``record``, hashing its email so no address is kept in clear."""
        event_id = None
        event_time = None
        if isinstance(record, dict):
            record = self._pseudonymize(record)
            raw_id = record.get("event_id")
            if isinstance(raw_id, str) or (  # an int too long for str() is no id
                isinstance(raw_id, int) and not isinstance(raw_id, bool) and raw_id.bit_length() <= _INT_BITS_MAX
            ):
                event_id = str(raw_id)
            try:
                event_time = parse_event_time(record.get("ts"))
            except Rejection:
                event_time = None
            if event_time is not None and not _LONG_MIN <= event_time <= _LONG_MAX:
                event_time = None  # not representable as the Avro long of DeadLetter.event_time
        payload = record if isinstance(record, str) else _json_payload(record)
        if isinstance(record, str) and rejection.reason == Reason.OVERSIZED:  # the head of a longer line
            payload = _CUT_TOKEN.sub("", payload)
        if not isinstance(record, dict):
            # No field to find the email in: hash every address-shaped token of the text instead.
            payload = _EMAIL_IN_TEXT.sub(lambda m: hash_email(m.group(), self.config.email_salt), payload)
        return DeadLetter(
            reason=str(rejection.reason),
            field=rejection.field,
            message=rejection.message,
            payload=payload,
            source=source,
            position=position,
            event_id=event_id,
            event_time=event_time,
        )

    def _pseudonymize(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with its email and its PII fields (top level and in ``properties``) hashed."""
        record = _hash_pii(record, self.config)
        properties = record.get("properties")
        if isinstance(properties, dict):
            record = {**record, "properties": _hash_pii(properties, self.config)}
        email = record.get("email")
        if isinstance(email, str):
            return {**record, "email": hash_email(email, self.config.email_salt)}
        if email is not None:
            return {**record, "email": "<redacted>"}
        return record
