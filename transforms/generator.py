"""A realistic event stream with ground truth, so identity stitching can be scored.

A population of persons browses and buys over days of event time: each person has one to three
devices (an ``anonymous_id`` each, some with a ``device_id`` field; cookies are sometimes reset,
giving a device a new ``anonymous_id``), some persons have an account (``user_id``) and log in
(``login`` / ``identify`` events carrying both ids, sometimes an ``email`` in clear), guests may
give an email at checkout, and a share of persons live in households that share a family computer
(one ``anonymous_id`` used by 2 or 3 persons with different ``user_id`` s). Delivery adds the dirt of
real streams: placeholder identifiers, junk emails, at-least-once duplicates (the same line again),
late events (emitted seconds, minutes or hours after later events) and dirty records.

Deterministic for a seed; time comes in as ``start_ms``; nothing reads the wall clock. Lines come
out approximately in event-time order (late events and duplicates excepted) while the stream is
generated, so memory holds the population plan and the identifiers, not the events.

The truth (:meth:`StreamGenerator.truth`) maps every identifier that appears in the stream, as
``kind:value`` (kinds ``anonymous_id``, ``user_id``, ``email``, ``device_id``), to the person
(``p-000042``) or, when several persons used it, the sorted list of them; ``shared`` says why
(``family_computer``). Placeholder values that cleaning drops (junk emails included) are not in it. Emails
are keyed by the *clear normalized* address (lower-cased, trimmed); the job keeps only
``HMAC-SHA256(salt, email)``, so score against a run with ``truth_for_salt(truth, salt)``, which
rewrites the email keys with the job's own hashing. ``linked_groups`` lists the identifiers
that well-formed events connect (two identifiers in one event, shared identifiers excluded): what
deterministic stitching can find.

>>> gen = StreamGenerator(GeneratorConfig(persons=20, days=3, seed=1))
>>> lines = list(gen.lines())
>>> truth = gen.truth()
>>> truth["counts"]["lines"] == len(lines) and truth["counts"]["persons"] == 20
True
>>> salted = truth_for_salt(truth, "s")
>>> all(not k.startswith("email:") or "@" not in k for k in salted["identifiers"])
True
"""

from __future__ import annotations

import heapq
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from transforms.identifiers import hash_email, normalize_email, normalize_identifier
from transforms.timestamps import MIN_TS_MS, parse_event_time

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
DEFAULT_START_MS = 1_748_736_000_000  # 2025-06-01T00:00:00Z
TRUTH_FORMAT = "segstream-truth/1"

# Values cleaning drops (transforms/identifiers.py): normalize_identifier / normalize_email give None.
ANON_PLACEHOLDERS = ("undefined", "null", "00000000-0000-0000-0000-000000000000", "anonymous", "(null)", "nan")
USER_PLACEHOLDERS = ("0", "-1", "guest", "null", "undefined", "none", "unknown")
EMAIL_PLACEHOLDERS = ("n/a", "none", "undefined", "null", "-")
# Address-shaped junk typed into forms by many people (cleaning drops
# them as placeholder addresses, transforms/identifiers.py, so they never link).
JUNK_EMAILS = ("test@test.com", "a@a.com", "noemail@example.com")

_FIRST = ("ann", "ben", "carla", "dan", "eva", "finn", "gina", "hugo", "ida", "jon", "kim", "leo", "mia", "nils")
_LAST = ("berg", "costa", "diaz", "evans", "fischer", "garcia", "hansen", "ito", "jones", "kowalski", "lee")
_DOMAINS = ("example.com", "mail.example", "post.example.org", "inbox.example.net")
_CATEGORIES = ("shoes", "shirts", "bags", "watches", "books", "toys", "kitchen", "garden", "audio", "games")
# Sessions starting in each hour of the day (UTC), relative: quiet nights, busy evenings.
_HOUR_WEIGHTS = (10, 5, 3, 2, 2, 3, 6, 10, 15, 18, 20, 20, 22, 20, 18, 18, 20, 23, 28, 32, 33, 30, 24, 16)
_ZONES = (UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=2)), timezone(timedelta(hours=-4)))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PRIME = 1_000_000_007  # user ids are an affine permutation of person numbers modulo this prime: unique

# Session states of a device's session.
_ANON, _LOGGED_IN, _LOGS_IN = 0, 1, 2
# How late a late event arrives: (bucket, least delay, most delay) and how often.
_LATE_DELAYS = (("seconds", SECOND, 5 * SECOND), ("minutes", 30 * SECOND, 20 * MINUTE), ("hours", HOUR, 12 * HOUR))
_LATE_WEIGHTS = (0.3, 0.5, 0.2)


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Shares are probabilities in [0, 1]; rates are per generated event."""

    persons: int = 1000
    days: int = 14
    start_ms: int = DEFAULT_START_MS
    seed: int = 7
    login_share: float = 0.6  # persons with an account (user_id) who log in on some devices
    email_share: float = 0.6  # persons who give an email (at login / identify, or at a guest checkout)
    device_id_share: float = 0.5  # devices whose events carry a device_id field
    shared_device_share: float = 0.05  # persons living in a household that shares a family computer
    placeholder_rate: float = 0.01  # events with a placeholder (or junk) identifier
    duplicate_rate: float = 0.02  # events delivered twice (same line)
    late_rate: float = 0.01  # events delivered seconds, minutes or hours late
    dirty_rate: float = 0.005  # events replaced by a record the job dead-letters
    consent_opt_out_share: float = 0.02  # persons whose events carry {"personalization": false}

    def __post_init__(self) -> None:
        if isinstance(self.persons, bool) or not isinstance(self.persons, int) or self.persons < 1:
            raise ValueError(f"--persons must be a whole number of at least 1, not {self.persons!r}")
        if isinstance(self.days, bool) or not isinstance(self.days, int) or not 1 <= self.days <= 3660:
            raise ValueError(f"--days must be a whole number from 1 to 3660, not {self.days!r}")
        if self.start_ms < MIN_TS_MS:
            raise ValueError("--start must not be before 2000-01-01 (the job rejects older events)")
        for spec in fields(self):
            if spec.name.endswith(("_share", "_rate")):
                value = getattr(self, spec.name)
                if not isinstance(value, int | float) or not 0 <= value <= 1:
                    raise ValueError(f"--{spec.name.replace('_', '-')} must be between 0 and 1, not {value!r}")


@dataclass(slots=True)
class _Device:
    anonymous_id: str
    device_id: str | None
    shared: bool = False


@dataclass(slots=True)
class _Person:
    number: int
    pid: str
    user_id: str | None
    email: str | None  # normalized clear address
    currency: str
    zone: timezone
    opted_out: bool
    devices: list[_Device] = field(default_factory=list)
    # per session: (start ms, device, anonymous_id in use, state)
    sessions: list[tuple[int, _Device, str, int]] = field(default_factory=list)


def _uuid(rng: random.Random) -> str:
    """A random UUID-shaped id (version 4 layout) from ``rng``."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _rfc3339(ts: int, zone: timezone) -> str | int:
    """``ts`` as RFC 3339 with an offset, or the epoch ms if a parser would not give ``ts`` back."""
    text = (_EPOCH + timedelta(milliseconds=ts)).astimezone(zone).isoformat(timespec="milliseconds")
    return text if parse_event_time(text) == ts else ts


class _Links:
    """Union-find over identifier keys (what well-formed events connect)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        parent = self.parent.setdefault(key, key)
        while parent != key:
            grand = self.parent[parent]
            self.parent[key] = grand
            key, parent = parent, grand
        return key

    def union(self, keys: list[str]) -> None:
        roots = [self.find(key) for key in keys]
        for root in roots[1:]:
            if root != roots[0]:
                self.parent[root] = roots[0]

    def groups(self) -> list[list[str]]:
        by_root: dict[str, list[str]] = {}
        for key in self.parent:
            by_root.setdefault(self.find(key), []).append(key)
        return sorted(sorted(group) for group in by_root.values() if len(group) > 1)


class StreamGenerator:
    """Generates the stream (:meth:`lines`), then tells the truth about it (:meth:`truth`)."""

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.end_ms = config.start_ms + config.days * DAY
        self._catalog = self._make_catalog()
        self._persons: list[_Person] = []
        self._households: list[list[int]] = []
        self._shared_keys: dict[str, str] = {}  # key -> why it is shared
        self._delivery = random.Random(f"{config.seed}:delivery")
        self._heap: list[tuple[int, int, int, str, Any, str | None]] = []
        self._pushed = 0
        self._owners: dict[str, str | list[str]] = {}  # identifier key -> person id(s), in order of appearance
        self._links = _Links()
        self._linked: set[tuple[str, ...]] = set()  # identifier combinations already linked
        self._key_cache: dict[tuple[Any, ...], tuple[str, ...]] = {}
        self._last_owned: dict[int, tuple[str, ...]] = {}  # person number -> the keys last recorded
        self._counts: Counter[str] = Counter()
        self._late: Counter[str] = Counter()
        self._placeholders: Counter[str] = Counter()
        self._dirty: Counter[str] = Counter()
        self._expected: Counter[str] = Counter()
        self._types: Counter[str] = Counter()
        self._done = False
        self._populate()

    # --- population ---------------------------------------------------------------------------

    def _make_catalog(self) -> list[tuple[str, str, float]]:
        rng = random.Random(f"{self.config.seed}:catalog")
        return [
            (
                f"sku-{rng.getrandbits(32):08x}",
                rng.choice(_CATEGORIES),
                round(min(900.0, rng.lognormvariate(3.3, 0.8)), 2),
            )
            for _ in range(300)
        ]

    def _populate(self) -> None:
        config = self.config
        rng = random.Random(f"{config.seed}:population")
        members = rng.sample(range(config.persons), round(config.persons * config.shared_device_share))
        household_of: dict[int, int] = {}
        while len(members) >= 2:
            size = len(members) if len(members) <= 3 else 2 if len(members) == 4 else rng.choice((2, 3))
            group, members = members[:size], members[size:]
            for number in group:
                household_of[number] = len(self._households)
            self._households.append(sorted(group))
        shared_devices = []
        for index in range(len(self._households)):
            house_rng = random.Random(f"{config.seed}:household:{index}")
            with_id = house_rng.random() < config.device_id_share
            device = _Device(_uuid(house_rng), _uuid(house_rng).upper() if with_id else None, shared=True)
            shared_devices.append(device)
            self._shared_keys[f"anonymous_id:{device.anonymous_id}"] = "family_computer"
            if device.device_id:
                self._shared_keys[f"device_id:{device.device_id}"] = "family_computer"
        multiplier = 2 * rng.randrange(1, _PRIME // 2) + 1
        offset = rng.randrange(_PRIME)
        for number in range(config.persons):
            house = household_of.get(number)
            person = self._person(number, (number * multiplier + offset) % _PRIME, house is not None)
            self._plan_sessions(person, shared_devices[house] if house is not None else None)
            self._persons.append(person)

    def _person(self, number: int, user_number: int, in_household: bool) -> _Person:
        config = self.config
        rng = random.Random(f"{config.seed}:person:{number}")
        has_account = in_household or rng.random() < config.login_share
        email = None
        if rng.random() < config.email_share:
            email = f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{user_number % 100_003}@{rng.choice(_DOMAINS)}"
        person = _Person(
            number=number,
            pid=f"p-{number:06d}",
            user_id=f"u{user_number:010d}" if has_account else None,
            email=email,
            currency=rng.choice(("EUR", "EUR", "EUR", "eur", "USD", "usd", "GBP")),
            zone=rng.choice(_ZONES),
            opted_out=rng.random() < config.consent_opt_out_share,
        )
        for _ in range(rng.choices((1, 2, 3), (0.45, 0.4, 0.15))[0]):
            with_id = rng.random() < config.device_id_share
            person.devices.append(_Device(_uuid(rng), _uuid(rng).upper() if with_id else None))
        return person

    def _plan_sessions(self, person: _Person, shared: _Device | None) -> None:
        config = self.config
        rng = random.Random(f"{config.seed}:sessions:{person.number}")
        per_day = min(4.0, rng.lognormvariate(-1.6, 1.0))
        count = max(1, min(int(per_day * config.days + rng.random()), 4 * config.days))
        starts = sorted(
            config.start_ms
            + rng.randrange(config.days) * DAY
            + rng.choices(range(24), _HOUR_WEIGHTS)[0] * HOUR
            + rng.randrange(HOUR)
            for _ in range(count)
        )
        for i in range(1, count):  # sessions of one person at least 40 minutes apart
            starts[i] = max(starts[i], starts[i - 1] + 40 * MINUTE + rng.randrange(20 * MINUTE))
        others = len(person.devices) - 1
        weights = [0.6] + [0.4 / others] * others if others else [1.0]
        devices = [rng.choices(person.devices, weights)[0] for _ in range(count)]
        if shared is not None:
            devices = [shared if rng.random() < 0.35 else device for device in devices]
            if shared not in devices:
                devices[rng.randrange(count)] = shared
        # Which device logs in when: a device with an account logs in at one of its sessions, then stays
        # logged in, except expired logins (anonymous, sometimes logging in again) and cookie resets.
        logs_in = {id(d): person.user_id is not None and rng.random() < 0.8 for d in person.devices}
        uses = Counter(id(d) for d in devices)
        login_at = {key: rng.randrange(n) for key, n in uses.items()}
        seen: Counter[int] = Counter()
        logged: dict[int, bool] = {}
        for start, device in zip(starts, devices, strict=True):
            key = id(device)
            index = seen[key]
            seen[key] += 1
            if device.shared:  # each member logs in on it once at least: the hard case for stitching
                state = _LOGS_IN if index == 0 or rng.random() < 0.7 else _ANON
            elif not logs_in[key]:
                state = _ANON
            elif not logged.get(key):
                state = _LOGS_IN if index == login_at[key] else _ANON
            else:
                draw = rng.random()
                state = _LOGS_IN if draw < 0.1 else _ANON if draw < 0.15 else _LOGGED_IN
            if not device.shared and index > 0 and rng.random() < 0.04:  # cookies cleared: a new anonymous_id
                device.anonymous_id = _uuid(rng)
                if state == _LOGGED_IN:
                    state = _LOGS_IN if rng.random() < 0.5 else _ANON
            if state == _LOGS_IN:
                logged[key] = True
            person.sessions.append((start, device, device.anonymous_id, state))

    # --- events of a session -----------------------------------------------------------------------

    def _email_as_typed(self, rng: random.Random, email: str) -> str:
        variant = rng.random()
        if variant < 0.6:
            return email
        if variant < 0.8:
            return email.capitalize()
        return f" {email.upper()} " if variant < 0.9 else email.title()

    def _session_events(self, person: _Person, index: int) -> Iterator[dict[str, Any]]:
        start, device, anonymous_id, state = person.sessions[index]
        rng = random.Random(f"{self.config.seed}:session:{person.number}:{index}")
        ts = start + rng.randrange(SECOND)
        carried: dict[str, Any] = {"anonymous_id": anonymous_id}
        if device.device_id:
            carried["device_id"] = device.device_id
        if state == _LOGGED_IN:
            carried["user_id"] = person.user_id
        carried["session_id"] = f"s-{rng.getrandbits(48):012x}"
        if person.opted_out:
            carried["consent"] = {"personalization": False}

        def event(kind: str, **extra: Any) -> dict[str, Any]:
            return {"event_id": _uuid(rng), "type": kind, "ts": ts, **carried, **extra}

        steps = min(15, 1 + int(rng.expovariate(0.25)))
        login_step = (0 if device.shared else rng.randrange(steps + 1)) if state == _LOGS_IN else -1
        landing = rng.choice(("/", "/", "/sale", f"/c/{rng.choice(_CATEGORIES)}", "/search"))
        yield event("page_view", page=landing)
        cart: dict[str, tuple[str, str, float, int]] = {}
        for step in range(steps + 1):
            if step == login_step:
                ts += rng.randint(5, 40) * SECOND + rng.randrange(SECOND)
                carried["user_id"] = person.user_id
                kind = "identify" if rng.random() < 0.3 else "login"
                extra: dict[str, Any] = {}
                if person.email and (kind == "identify" or rng.random() < 0.4):
                    extra["email"] = self._email_as_typed(rng, person.email)
                yield event(kind, **extra)
            if step == steps:
                break
            ts += rng.randint(3, 90) * SECOND + rng.randrange(SECOND)
            if rng.random() < 0.15:
                yield event("page_view", page=f"/c/{rng.choice(_CATEGORIES)}")
                continue
            product_id, category, price = rng.choice(self._catalog)
            yield event("product_view", product_id=product_id, category=category, price=price)
            if rng.random() < 0.3:
                ts += rng.randint(2, 30) * SECOND + rng.randrange(SECOND)
                quantity = rng.choices((1, 2, 3), (0.8, 0.15, 0.05))[0]
                cart[product_id] = (product_id, category, price, quantity)
                shown = str(price) if rng.random() < 0.2 else price  # numeric strings are coerced
                yield event("add_to_cart", product_id=product_id, category=category, price=shown, quantity=quantity)
            if cart and rng.random() < 0.07:
                ts += rng.randint(2, 30) * SECOND + rng.randrange(SECOND)
                removed = cart.pop(rng.choice(sorted(cart)))
                yield event("remove_from_cart", product_id=removed[0], category=removed[1], quantity=removed[3])
        if not cart or rng.random() >= 0.45:
            return
        amount = round(sum(item[2] * item[3] for item in cart.values()), 2)
        guest_email = person.email if person.email and "user_id" not in carried else None
        ts += rng.randint(20, 120) * SECOND + rng.randrange(SECOND)
        extra = {"email": self._email_as_typed(rng, guest_email)} if guest_email and rng.random() < 0.5 else {}
        yield event("checkout", items=len(cart), **extra)
        if rng.random() >= 0.75:
            return
        ts += rng.randint(30, 300) * SECOND + rng.randrange(SECOND)
        order = {"order_id": f"ord-{rng.getrandbits(40):012d}", "currency": person.currency}
        extra = {}
        if guest_email or (person.email and "user_id" in carried and rng.random() < 0.5):
            extra["email"] = self._email_as_typed(rng, person.email or "")
        yield event("purchase", amount=amount, items=len(cart), **order, **extra)
        if rng.random() < 0.06:  # refunded days later by the back office: no session
            ts += rng.randint(1, 10) * DAY + rng.randrange(DAY)
            refunded = amount if rng.random() < 0.5 or len(cart) == 1 else round(next(iter(cart.values()))[2], 2)
            refund = event("refund", amount=refunded, **order, **extra)
            for name in ("session_id", "device_id"):
                refund.pop(name, None)
            if ts < self.end_ms:
                yield refund

    # --- delivery: placeholders, dirt, lateness, duplicates -------------------------------------

    def _with_placeholder(self, record: dict[str, Any]) -> dict[str, Any]:
        rng = self._delivery
        draw = rng.random()
        if draw < 0.4 and "anonymous_id" in record:
            self._placeholders["anonymous_id"] += 1
            return {**record, "anonymous_id": rng.choice(ANON_PLACEHOLDERS)}
        if draw < 0.75:
            self._placeholders["user_id"] += 1
            return {**record, "user_id": rng.choice(USER_PLACEHOLDERS)}
        if rng.random() < 1 / 3:
            self._placeholders["junk_email"] += 1
            return {**record, "email": rng.choice(JUNK_EMAILS)}
        self._placeholders["email"] += 1
        return {**record, "email": rng.choice(EMAIL_PLACEHOLDERS)}

    def _dirty_record(self, record: dict[str, Any], ts: int) -> tuple[str, dict[str, Any] | str]:
        """A broken version of ``record`` (event time ``ts``) and the dead-letter reason cleaning gives it."""
        rng = self._delivery
        bad = dict(record)
        choices = [
            "no_event_id",
            "naive_timestamp",
            "invalid_timestamp",
            "epoch_seconds",
            "epoch_microseconds",
            "unknown_event_type",
            "missing_identifier",
            "truncated",
            "consent",
        ]
        if record["type"] in ("purchase", "refund"):
            choices += ["no_order_id", "invalid_currency", "negative_amount", "amount_text"]
        if "quantity" in record:
            choices += ["quantity_text", "zero_quantity"]
        if "price" in record:
            choices += ["negative_price"]
        flaw = rng.choice(choices)
        if flaw == "no_event_id":
            del bad["event_id"]
            return "missing_field", bad
        if flaw == "naive_timestamp":
            bad["ts"] = (_EPOCH + timedelta(milliseconds=ts)).replace(tzinfo=None).isoformat(timespec="seconds")
            return "naive_timestamp", bad
        if flaw == "invalid_timestamp":
            bad["ts"] = rng.choice(("yesterday", "2025-13-45T99:00:00Z", "NaN", "01/06/2025 10:00"))
            return "invalid_timestamp", bad
        if flaw == "epoch_seconds":
            bad["ts"] = ts // 1000
            return "timestamp_too_old", bad
        if flaw == "epoch_microseconds":
            bad["ts"] = ts * 1000
            return "future_timestamp", bad
        if flaw == "unknown_event_type":
            bad["type"] = rng.choice(("PageView", "pageview", "app_open", "teleport"))
            return "unknown_event_type", bad
        if flaw == "missing_identifier":
            for name in ("anonymous_id", "user_id", "email"):
                bad.pop(name, None)
            return "missing_identifier", bad
        if flaw == "truncated":
            line = json.dumps(record, ensure_ascii=False)
            return "malformed", line[: rng.randrange(1, len(line) - 1)]
        if flaw == "consent":
            bad["consent"] = rng.choice(("no", "false", 0))
            return "wrong_type", bad
        if flaw == "no_order_id":
            del bad["order_id"]
            return "missing_field", bad
        if flaw == "invalid_currency":
            bad["currency"] = rng.choice(("EURO", "XXY", "$", "Euro"))
            return "invalid_currency", bad
        if flaw == "negative_amount":
            bad["amount"] = -float(bad["amount"] or 1)
            return "out_of_range", bad
        if flaw == "amount_text":
            bad["amount"] = rng.choice(("12,50", "EUR 12", "n/a"))
            return "invalid_number", bad
        if flaw == "quantity_text":
            bad["quantity"] = rng.choice(("two", "1.5"))
            return "invalid_number", bad
        if flaw == "zero_quantity":
            bad["quantity"] = 0
            return "out_of_range", bad
        bad["price"] = -1 * float(bad["price"])  # negative_price
        return "out_of_range", bad

    def _push(self, person: _Person, record: dict[str, Any]) -> None:
        """Decide how ``record`` is delivered and queue it at its arrival time."""
        config, rng = self.config, self._delivery
        ts = record["ts"]
        if rng.random() < 0.2:
            record["ts"] = _rfc3339(ts, person.zone)
        self._types[record["type"]] += 1
        reason: str | None = None
        payload: dict[str, Any] | str = record
        dirty = rng.random() < config.dirty_rate
        if dirty:
            reason, payload = self._dirty_record(record, ts)
            self._dirty[reason] += 1
        elif rng.random() < config.placeholder_rate:
            payload = self._with_placeholder(record)
            if not any(not key.startswith("device_id:") for key in self._keys(payload)):
                reason = "missing_identifier"
        arrival = ts
        if rng.random() < config.late_rate:
            name, low, high = rng.choices(_LATE_DELAYS, _LATE_WEIGHTS)[0]
            self._late[name] += 1
            arrival = ts + rng.randint(low, high)
        self._enqueue(arrival, person.number, "dirty" if dirty else "event", payload, reason)
        # The identifiers of the record as generated (a dirty record still came from this person).
        self._own(person, record if isinstance(payload, str) else payload)

    def _enqueue(self, arrival: int, number: int, kind: str, payload: Any, reason: str | None) -> None:
        self._pushed += 1
        heapq.heappush(self._heap, (arrival, self._pushed, number, kind, payload, reason))

    def _keys(self, record: dict[str, Any]) -> tuple[str, ...]:
        """``kind:value`` of the identifiers in ``record`` that cleaning keeps (email: clear, normalized)."""
        values = (record.get("anonymous_id"), record.get("user_id"), record.get("email"), record.get("device_id"))
        keys = self._key_cache.get(values)
        if keys is None:
            anonymous_id, user_id, email, device_id = values
            found = []
            for name, value in (("anonymous_id", anonymous_id), ("user_id", user_id)):
                if isinstance(value, str) and (normalized := normalize_identifier(value)) is not None:
                    found.append(f"{name}:{normalized}")
            if isinstance(email, str) and (normalized := normalize_email(email)) is not None:
                found.append(f"email:{normalized}")
            if isinstance(device_id, str):
                found.append(f"device_id:{device_id}")
            keys = self._key_cache[values] = tuple(found)
            if len(self._key_cache) > 100_000:
                self._key_cache.clear()
        return keys

    def _own(self, person: _Person, record: dict[str, Any]) -> None:
        keys = self._keys(record)
        if self._last_owned.get(person.number) == keys:
            return
        self._last_owned[person.number] = keys
        for key in keys:
            owner = self._owners.get(key)
            if owner is None:
                self._owners[key] = person.pid
            elif isinstance(owner, str):
                if owner != person.pid:
                    self._owners[key] = sorted((owner, person.pid))
            elif person.pid not in owner:
                owner.append(person.pid)
                owner.sort()

    def _emit(self, item: tuple[int, int, int, str, Any, str | None]) -> str:
        arrival, _, number, kind, payload, reason = item
        if reason is not None:
            self._expected[reason] += 1
        if kind == "duplicate":
            self._counts["duplicates"] += 1
            return payload
        line = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        self._counts["events"] += 1
        if kind == "event":
            keys = self._keys(payload)
            if len(keys) > 1 and keys not in self._linked:
                self._linked.add(keys)
                self._links.union([key for key in keys if key not in self._shared_keys])
            if self._delivery.random() < self.config.duplicate_rate:  # at-least-once: delivered again soon
                self._enqueue(arrival + self._delivery.randrange(30 * SECOND), number, "duplicate", line, reason)
        return line

    def lines(self) -> Iterator[str]:
        """The stream as JSON lines, approximately in event-time order. Iterate once, then read :meth:`truth`."""
        if self._done or self._pushed:
            raise RuntimeError("a StreamGenerator's lines can be generated once")
        order = sorted(
            (session[0], person.number, index)
            for person in self._persons
            for index, session in enumerate(person.sessions)
        )
        for start, number, index in order:
            while self._heap and self._heap[0][0] <= start:
                yield self._emit(heapq.heappop(self._heap))
            person = self._persons[number]
            for record in self._session_events(person, index):
                self._push(person, record)
        while self._heap:
            yield self._emit(heapq.heappop(self._heap))
        self._done = True

    # --- truth -------------------------------------------------------------------------------

    def truth(self) -> dict[str, Any]:
        """The true person of every identifier in the stream, the shared ones, link groups and counts."""
        if not self._done:
            raise RuntimeError("generate every line first")
        identifiers = dict(sorted(self._owners.items()))
        shared = {
            key: {"persons": owner, "why": self._shared_keys.get(key, "collision")}
            for key, owner in identifiers.items()
            if isinstance(owner, list)
        }
        by_kind = Counter(key.split(":", 1)[0] for key in identifiers)
        shared_by_kind = Counter(key.split(":", 1)[0] for key in shared)
        households = [[self._persons[n].pid for n in house] for house in self._households]
        counts = {
            "lines": self._counts["events"] + self._counts["duplicates"],
            "events": self._counts["events"],
            "duplicates": self._counts["duplicates"],
            "late": sum(self._late.values()),
            "late_by_delay": {name: self._late[name] for name in ("seconds", "minutes", "hours")},
            "placeholders": dict(sorted(self._placeholders.items())),
            "dirty": dict(sorted(self._dirty.items())),
            "expected_dead_letters": dict(sorted(self._expected.items())),
            "types": dict(sorted(self._types.items())),
            "persons": len(self._persons),
            "persons_with_user_id": len(
                {o for k, o in identifiers.items() if k.startswith("user_id:") and isinstance(o, str)}
            ),
            "persons_on_shared_devices": sum(len(house) for house in households),
            "shared_devices": sum(
                1 for k, v in shared.items() if k.startswith("anonymous_id:") and v["why"] == "family_computer"
            ),
            "identifiers": dict(sorted(by_kind.items())),
            "shared_identifiers": dict(sorted(shared_by_kind.items())),
        }
        return {
            "format": TRUTH_FORMAT,
            "email_keys": "clear",
            "config": asdict(self.config),
            "counts": counts,
            "identifiers": identifiers,
            "shared": shared,
            "households": households,
            "linked_groups": self._links.groups(),
        }


def truth_for_salt(truth: dict[str, Any], salt: str) -> dict[str, Any]:
    """``truth`` with every ``email:<clear>`` key rewritten as ``email:<HMAC-SHA256(salt, email)>``: the
    form the job (cleaning with ``email_salt`` = ``salt``) stores, so a run's identifiers can be looked up."""
    if truth.get("email_keys") != "clear":
        raise ValueError("the truth's email keys are already hashed")

    def key(name: str) -> str:
        kind, _, value = name.partition(":")
        return f"email:{hash_email(value, salt)}" if kind == "email" else name

    return {
        **truth,
        "email_keys": "hmac-sha256",
        "identifiers": {key(k): v for k, v in truth["identifiers"].items()},
        "shared": {key(k): v for k, v in truth["shared"].items()},
        "linked_groups": [sorted(key(k) for k in group) for group in truth["linked_groups"]],
    }
