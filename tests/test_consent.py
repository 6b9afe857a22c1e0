"""Consent: ``consent.personalization`` false keeps a customer out of profiling and segments; a
revocation exits every segment (reason ``consent``) and clears the profile; true grants it again."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from tests.conftest import read_jsonl
from tests.test_end_to_end import outputs, run_cli
from transforms.config import load_config
from transforms.customer import CustomerLogic, CustomerState
from transforms.events import Event

HOUR = 3_600_000
T0 = 1_748_736_000_000  # 2025-06-01T00:00:00Z


def logic() -> CustomerLogic:
    return load_config(None).logic()


def buy(event_id: str, hours: int, consent: dict[str, bool] | None = None, amount: float = 600.0) -> Event:
    return Event(
        event_id, "purchase", T0 + hours * HOUR, user_id="u1", anonymous_id="a1", order_id=event_id,
        amount=amount, currency="EUR", consent=consent,
    )  # fmt: skip


def view(event_id: str, hours: int, consent: dict[str, bool] | None = None) -> Event:
    return Event(event_id, "page_view", T0 + hours * HOUR, user_id="u1", anonymous_id="a9", consent=consent)


def test_a_customer_without_consent_is_neither_profiled_nor_segmented() -> None:
    core = logic()
    state = core.new_state("user:u1")
    step = core.advance(state, [buy("e1", 0, {"personalization": False}), buy("e2", 1)], T0 + HOUR)
    assert step.changes == [] and [e.event_id for e in step.no_consent] == ["e1", "e2"]
    assert [e.event_id for e in step.accepted] == ["e1", "e2"]  # accepted, so the counts add up
    profile = core.profile(state)
    assert profile["consent"] == "revoked" and profile["segments"] == [] and profile["features"]["counts"] == {}
    assert profile["identifiers"] == {"user_id": ["u1"]} and core.next_wake(state) is None


def test_a_revocation_exits_every_segment_and_clears_the_profile_then_a_grant_profiles_again() -> None:
    core = logic()
    state = core.new_state("user:u1")
    entered = core.advance(state, [buy("e1", 0)], T0).changes
    assert {c.segment for c in entered} == {"big_spender", "high_value", "recent_buyer"}
    assert state.profile.rfm is not None and core.model.population.buyers == 1
    step = core.advance(state, [view("e2", 1, {"personalization": False})], T0 + HOUR)
    assert [(c.segment, c.change, c.reason) for c in step.changes] == [
        (s, "exited", "consent") for s in ("big_spender", "high_value", "recent_buyer")
    ]
    assert step.revocations == 1 and [e.event_id for e in step.no_consent] == ["e2"]
    profile = core.profile(state)
    assert (
        profile["consent"] == "revoked" and profile["segments"] == [] and profile["identifiers"] == {"user_id": ["u1"]}
    )
    assert profile["features"]["counts"] == {} and profile["features"]["spend"] == 0
    assert state.recent_event_ids == {} and state.segment_wakes == {} and core.model.population.buyers == 0
    # Without a consent field the customer's state holds: not profiled.
    assert core.advance(state, [buy("e3", 2)], T0 + 2 * HOUR).changes == []
    assert core.profile(state)["features"]["counts"] == {}
    # A later event with personalization true grants it again: profiled from that event on, seq goes on.
    step = core.advance(state, [buy("e4", 3, {"personalization": True}, amount=20.0)], T0 + 3 * HOUR)
    assert [(c.segment, c.change, c.seq) for c in step.changes] == [("recent_buyer", "entered", 7)]
    assert core.profile(state)["consent"] == "granted" and core.profile(state)["features"]["counts"] == {"purchase": 1}


def test_an_event_without_the_personalization_key_keeps_the_consent_state() -> None:
    core = logic()
    state = core.new_state("user:u1")
    core.advance(state, [view("e1", 0, {"marketing": False})], T0)
    assert state.consent and core.profile(state)["features"]["counts"] == {"page_view": 1}


def test_revocation_and_grant_in_one_millisecond_follow_event_id_order() -> None:
    core = logic()
    state = core.new_state("user:u1")
    step = core.advance(state, [buy("b", 0, {"personalization": True}), view("a", 0, {"personalization": False})], T0)
    # "a" (revoke) comes first, then "b" grants again and is profiled: every rule is evaluated anew.
    assert step.revocations == 1 and [e.event_id for e in step.no_consent] == ["a"]
    assert {c.segment for c in step.changes} == {"big_spender", "high_value", "recent_buyer"}


def test_consent_pickles_and_old_snapshots_load_as_granted() -> None:
    core = logic()
    state = core.new_state("user:u1")
    core.advance(state, [view("e1", 0, {"personalization": False})], T0)
    assert pickle.loads(pickle.dumps(state)).consent is False
    old = CustomerState("user:u2")
    object.__delattr__(old, "consent")  # what a snapshot written before the field existed unpickles to
    assert pickle.loads(pickle.dumps(old)).consent is True


def test_an_identity_merge_with_a_revoked_customer_revokes_the_survivor() -> None:
    core = logic()
    into, other = core.new_state("user:u1"), core.new_state("anon:a1")
    core.advance(into, [buy("e1", 0)], T0)
    core.advance(other, [view("e2", 1, {"personalization": False})], T0 + HOUR)
    step = core.absorb(into, other)
    assert {(c.change, c.reason) for c in step.changes} == {("exited", "consent")} and len(step.changes) == 3
    assert not into.consent and core.profile(into)["features"]["counts"] == {}


def _lines(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _event(event_id: str, user: str, hours: float, kind: str = "purchase", **extra: Any) -> dict[str, Any]:
    record = {"event_id": event_id, "type": kind, "ts": T0 + int(hours * HOUR), "user_id": user, **extra}
    if kind == "purchase":
        record.update(order_id=f"o-{event_id}", amount=300.0, currency="EUR")
    return record


def test_end_to_end_on_the_core_engine_with_resume(tmp_path: Path, redis_url: str) -> None:
    """A revocation in a --resume run: exits with reason consent, a cleared profile in the file and in
    Redis, counts that add up; the next --resume run keeps the revoked state."""
    import redis as redis_client

    first = tmp_path / "first.jsonl"
    first.write_text(
        _lines([
            _event("e1", "u1", 0), _event("e2", "u2", 0),
            _event("e3", "u1", 2, "page_view", consent={"personalization": False}),
            _event("e4", "u1", 3), _event("e5", "u3", 3, "page_view", consent={"personalization": False}),
        ])
    )  # fmt: skip
    state = ["--engine", "core", "--resume", "--state-dir", str(tmp_path / "state"), "--redis-url", redis_url]
    summary = run_cli("--source", str(first), *state, *outputs(tmp_path / "one"))
    assert (summary["events_in"], summary["accepted"], summary["no_consent"]) == (5, 5, 3)
    assert summary["consent_revocations"] == 2 and summary["events_in"] == summary["accepted"] + summary["duplicates"]
    changes = read_jsonl(tmp_path / "one" / "changes.jsonl")
    u1 = [(c["segment"], c["change"], c["reason"]) for c in changes if c["customer_id"] == "user:u1"]
    assert u1 == [(s, "entered", "rule") for s in ("high_value", "recent_buyer")] + [
        (s, "exited", "consent") for s in ("high_value", "recent_buyer")
    ]
    assert not any(c["customer_id"] == "user:u3" for c in changes)
    profiles = {p["customer_id"]: p for p in read_jsonl(tmp_path / "one" / "profiles.jsonl")}
    for key in ("user:u1", "user:u3"):
        assert profiles[key]["consent"] == "revoked" and profiles[key]["segments"] == []
        assert profiles[key]["features"]["counts"] == {} and profiles[key]["identifiers"] == {"user_id": [key[5:]]}
    assert profiles["user:u2"]["consent"] == "granted" and profiles["user:u2"]["segments"]
    client = redis_client.Redis.from_url(redis_url)
    stored = json.loads(client.hget("segstream:profile:user:u1", "profile"))
    assert stored["consent"] == "revoked" and stored["features"]["counts"] == {}
    assert not client.sismember("segstream:segment:recent_buyer", "user:u1")
    # The next run continues from the saved state: u1 stays revoked until an event grants consent.
    second = tmp_path / "second.jsonl"
    second.write_text(_lines([_event("e6", "u1", 5), _event("e7", "u3", 5, consent={"personalization": True})]))
    summary = run_cli("--source", str(second), *state, *outputs(tmp_path / "two"))
    assert summary["no_consent"] == 1 and summary["accepted"] == 2
    changes = read_jsonl(tmp_path / "two" / "changes.jsonl")
    assert {c["customer_id"] for c in changes} == {"user:u3"}
    profiles = {p["customer_id"]: p for p in read_jsonl(tmp_path / "two" / "profiles.jsonl")}
    assert profiles["user:u1"]["consent"] == "revoked" and profiles["user:u1"]["features"]["counts"] == {}
    assert profiles["user:u3"]["consent"] == "granted" and profiles["user:u3"]["features"]["counts"] == {"purchase": 1}
