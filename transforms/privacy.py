"""Consent and the right to erasure, engine-free: what :class:`transforms.customer.CustomerLogic` does
with ``consent.personalization`` and with ``forget`` events, and the deletion receipt of a forget.

Consent: an event's ``consent.personalization`` (true or false) sets its customer's consent; an event
without it keeps the customer's current state, which is *granted* until an event says otherwise. A
customer without consent is in no segment and has an empty profile: a revocation exits every segment
(reason ``consent``) and clears the profile; their events are accepted but not profiled
(``no_consent``). A later event with ``personalization: true`` grants consent again.

Forget: a ``forget`` event, as it arrives (:meth:`PrivacyLogic.forget_now`), exits every segment
(reason ``forget``) and erases the customer's state; the engine then removes the customer from its
own state and from the sinks (:class:`Forget` says what to remove) and writes a
:class:`DeletionReceipt`.

>>> personalization(Event("e1", "page_view", 1, user_id="u1", consent={"personalization": False}))
False
>>> personalization(Event("e2", "page_view", 1, user_id="u1", consent={"marketing": True})) is None
True
>>> key_identifier("user:u1"), key_identifier("shared:anon:a1")
(('user_id', 'u1'), None)
>>> customer_ref("user:u1", "salt") == customer_ref("user:u1", "salt") != customer_ref("user:u2", "salt")
True
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from transforms.events import FORGET, Event
from transforms.features import Features
from transforms.identity import KIND_OF_PREFIX

if TYPE_CHECKING:
    from transforms.customer import CustomerLogic, CustomerState, Step

__all__ = ["FORGET", "DeletionReceipt", "Forget", "PrivacyLogic", "customer_ref", "key_identifier", "personalization"]


def personalization(event: Event) -> bool | None:
    """The event's ``consent.personalization``; None when the event does not say."""
    return None if event.consent is None else event.consent.get("personalization")


def key_identifier(customer_id: str) -> tuple[str, str] | None:
    """The identifier a customer id is made of (``user:u1`` -> ``("user_id", "u1")``); None for others."""
    prefix, _, value = customer_id.partition(":")
    kind = KIND_OF_PREFIX.get(prefix)
    return (kind, value) if kind is not None and value else None


@dataclass(frozen=True, slots=True)
class Forget:
    """A customer forgotten at a ``forget`` event: what the engine and the sinks must erase."""

    customer_id: str
    event_id: str
    event_time: int
    identifiers: tuple[tuple[str, str], ...]  # (kind, value) the customer held, the key's own included
    segments: int  # segments the customer exited


def customer_ref(customer_id: str, salt: str) -> str:
    """A receipt's reference to the customer: HMAC-SHA256(salt, customer id), no personal data in clear.

    Whoever holds the salt and the id can find the receipt again; the receipt alone reveals neither."""
    return hmac.new(salt.encode(), b"forget\x1f" + customer_id.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class DeletionReceipt:
    """Proof that a forget ran: who asked, when, what was removed (counts only) and the customer's ref."""

    customer_ref: str
    requested_by: str  # "event:<event id>" or "cli"
    event_time: int | None  # event time of the forget event (None: the command line)
    wall_time: int  # epoch ms when it was carried out
    removed: dict[str, int] = field(default_factory=dict)  # kind -> count
    receipt_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_dict(self) -> dict[str, Any]:
        return {
            "receipt_id": self.receipt_id,
            "customer_ref": self.customer_ref,
            "requested_by": self.requested_by,
            "event_time": self.event_time,
            "wall_time": self.wall_time,
            "removed": dict(sorted(self.removed.items())),
        }


class PrivacyLogic:
    """Consent and forget, as part of :class:`transforms.customer.CustomerLogic` (a mixin: it uses the
    logic's segment evaluation and profile model)."""

    def _consented(self: CustomerLogic, state: CustomerState, event: Event, now: int, step: Step) -> bool:
        """Apply the event's consent; False when the event is not profiled (accepted, ``no_consent``)."""
        granted = personalization(event)
        if granted is not None and granted != state.consent:
            if granted:
                state.consent = True
                step.touched = True
            else:
                self._revoke(state, now, step)
        if state.consent:
            return True
        step.accepted.append(event)
        step.no_consent.append(event)
        return False

    def _revoke(self: CustomerLogic, state: CustomerState, now: int | None, step: Step) -> None:
        """Consent revoked: exit every segment (reason ``consent``), clear the profile, keep the key."""
        if now is not None:
            self._evaluate(state, now, from_timer=False, step=step, reason="consent", leave=True)
        if state.consent:
            step.revocations += 1
        self._wipe(state, keep=("customer_id", "clock", "seq", "rules_version"))
        key = key_identifier(state.customer_id)
        state.identifiers = {key[0]: [key[1]]} if key is not None else {}
        state.consent = False
        step.touched = True

    def _forget(self: CustomerLogic, state: CustomerState, event: Event, now: int, step: Step) -> None:
        """A ``forget`` event: exit every segment (reason ``forget``), then erase the whole state (the
        events after it in event time start a new customer). ``step.forgotten`` tells the engine.
        Engines call :meth:`forget_now` as the event arrives; this runs it within :meth:`advance`."""
        before = len(step.changes)
        self._evaluate(state, now, from_timer=False, step=step, reason="forget", leave=True)
        held = [(kind, value) for kind, values in state.identifiers.items() for value in values]
        key = key_identifier(state.customer_id)
        if key is not None and key not in held:
            held.insert(0, key)
        step.forgotten.append(
            Forget(state.customer_id, event.event_id, event.ts, tuple(held), len(step.changes) - before)
        )
        self._wipe(state, keep=("customer_id",))
        step.accepted.append(event)
        step.touched = False  # nothing left to write; events after the forget set it again

    def _wipe(self: CustomerLogic, state: CustomerState, keep: tuple[str, ...]) -> None:
        """Reset every field of ``state`` but ``keep`` to a new customer's, leaving the RFM population."""
        self.model.population.move(state.profile.rfm, Features())
        fresh = self.new_state(state.customer_id)
        for spec in fields(state):
            if spec.name not in keep:
                setattr(state, spec.name, getattr(fresh, spec.name))

    def forget_now(self: CustomerLogic, state: CustomerState, pending: list[Event], event: Event) -> Step:
        """Engine hook for an arriving ``forget`` event: erasure does not wait for the watermark.

        The customer exits the segments it holds now (reason ``forget``) and its state is erased;
        its pending events up to the forget's event time are erased unapplied, and so are those
        that arrive later (``forgotten_until``, until the customer's clock is past the forget by
        the out-of-orderness and the allowed lateness); later ones stay pending and start a new
        customer. ``step.remaining`` are the events to keep pending, ``step.wake`` the next timer.
        """
        from transforms.customer import Step  # here: transforms.customer imports this module

        step = Step(accepted=[e for e in pending if e.ts <= event.ts])
        step.remaining = [e for e in pending if e.ts > event.ts]
        if state.forgotten_until is not None and event.ts <= state.forgotten_until:
            step.accepted.append(event)  # an earlier forget of this customer covers it
        else:
            now = event.ts if state.clock is None else max(event.ts, state.clock)
            self._forget(state, event, now, step)
            state.forgotten_until = event.ts
        wakes = [e.ts for e in step.remaining] + [t for t in (self.next_wake(state),) if t is not None]
        step.wake = min(wakes, default=None)
        return step

    @staticmethod
    def is_blank(state: CustomerState) -> bool:
        """Whether ``state`` holds nothing (a forgotten customer with no event since): engines drop it."""
        return (
            state.seq == 0
            and state.consent
            and state.features.last_seen is None
            and not state.segments
            and state.forgotten_until is None
        )

    def erased(self: CustomerLogic, state: CustomerState, step: Step) -> bool:
        """Whether nothing is left of the customer after ``step`` (a forget erased it and nothing
        of theirs came after): every engine drops it then (no state, no final profile)."""
        return not step.remaining and self.is_blank(state)
