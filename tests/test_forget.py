"""Forget (right to erasure): a ``forget`` event (on every engine) and ``segstream forget`` remove the
customer from engine state, the identity graph, Redis and the JSONL outputs, leaving only the forget
exits (the notification downstream) and a deletion receipt without personal data."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

import pipelines.core_engine as core_engine
from pipelines.cli import main
from pipelines.core_engine import CoreEngine
from pipelines.customer_store import STATE_FILE, promote_state
from pipelines.delivery_queue import DeadDelivery, DeliveryQueue, register
from pipelines.forget import parse_identifier
from pipelines.metrics import METRICS
from pipelines.outputs import OutputPaths, OutputSink
from pipelines.snapshot_store import SnapshotStore
from tests.conftest import free_port, make_spec, read_jsonl
from tests.redis_scan import file_items, redis_items, traces
from tests.test_end_to_end import outputs, run_cli
from tests.test_flink_job import drop, wait_until
from tests.test_live_stream import drain, start_job, stream_source
from tests.test_parity import run as run_engine
from transforms.config import load_config
from transforms.events import Event
from transforms.identifiers import hash_email
from transforms.identity import IdentityGraph
from transforms.subscribers import Subscriber, make_subscriber

SALT = "forget-test-salt"
HOUR = 3_600_000
T0 = 1_748_736_000_000  # 2025-06-01T00:00:00Z
EMAIL = "Erase.Seven@Example.com"
NEEDLES = ["u-erase-7", "a-erase-7", "d-erase-7", "erase.seven", hash_email(EMAIL, SALT)]
DEFAULT_CONFIG = Path(__file__).parents[1] / "transforms" / "default_config.yaml"


# -- units ------------------------------------------------------------------------------------------------


def test_the_identity_graph_forgets_a_customer_and_every_trace_of_it() -> None:
    graph = IdentityGraph()
    graph.resolve([("anonymous_id", "a1"), ("device_id", "d1")], ts=1)
    graph.resolve([("user_id", "u1"), ("anonymous_id", "a1")], ts=2)
    graph.resolve([("user_id", "u2"), ("anonymous_id", "a2")], ts=3)
    graph.resolve([("user_id", "u1"), ("anonymous_id", "a2")], ts=4)  # refused (user_conflict): u1 seen with a2
    assert graph.lookup("device_id", "d1") == "user:u1" and "user:u1" in repr(graph.__getstate__())
    assert graph.forget("anon:a1") == 3  # any member finds its customer
    assert [graph.lookup(k, v) for k, v in (("user_id", "u1"), ("anonymous_id", "a1"), ("device_id", "d1"))] == [
        None,
        None,
        None,
    ]
    assert "u1" not in repr(graph.__getstate__()) and graph.lookup("anonymous_id", "a2") == "user:u2"
    assert graph.forget("user:u1") == 0 and graph.forget("shared:anon:a2") == 0
    assert graph.resolve([("user_id", "u1")], ts=5).customer_id == "user:u1"  # a new customer


def test_a_forget_event_exits_every_segment_and_erases_the_state() -> None:
    logic = load_config(None).logic()
    state = logic.new_state("user:u1")
    buy = Event("e1", "purchase", T0, user_id="u1", anonymous_id="a1", order_id="o1", amount=600.0, currency="EUR")
    logic.advance(state, [buy], T0)
    forget = Event("e2", "forget", T0 + HOUR, user_id="u1")
    later = Event("e3", "page_view", T0 + 2 * HOUR, user_id="u1")
    step = logic.advance(state, [forget, buy, later], T0 + 2 * HOUR)  # buy: a repeat of e1, before the forget
    assert [(c.change, c.reason, c.seq) for c in step.changes] == [("exited", "forget", n) for n in (4, 5, 6)]
    assert [e.event_id for e in step.duplicates] == ["e1"]
    (forgotten,) = step.forgotten
    assert forgotten.identifiers == (("user_id", "u1"), ("anonymous_id", "a1")) and forgotten.segments == 3
    assert (forgotten.event_id, forgotten.event_time) == ("e2", T0 + HOUR)
    # The event after the forget starts a new customer: seq from 1, only what came after.
    assert state.seq == 0 and logic.profile(state)["features"]["counts"] == {"page_view": 1} and step.touched
    assert state.identifiers == {"user_id": ["u1"]} and state.profile.rfm is None
    assert logic.model.population.buyers == 0
    alone = logic.new_state("user:u1")
    logic.advance(alone, [buy], T0)
    step = logic.advance(alone, [forget], T0 + HOUR)
    assert logic.is_blank(alone) and not step.touched and logic.next_wake(alone) is None


def test_a_forget_is_carried_out_as_it_arrives_and_erases_its_past_whatever_the_arrival_order() -> None:
    """No wait for the watermark: the exits and the erasure come with the forget. The customer's
    events up to its event time are erased unapplied, pending or arriving later (until the clock is
    past the out-of-orderness); later ones start a new customer, in either arrival order."""
    logic = load_config(None).logic()
    bound = logic.config.max_out_of_orderness_ms
    buy = Event("e1", "purchase", T0, user_id="u1", order_id="o1", amount=600.0, currency="EUR")
    forget = Event("f", "forget", T0 + 2 * HOUR, user_id="u1")
    before = Event("e2", "page_view", T0 + HOUR, user_id="u1")  # pending when the forget comes
    after = Event("e3", "add_to_cart", forget.ts + 1_000, user_id="u1", price=5.0)  # pending too
    early = Event("e4", "page_view", forget.ts - 1_000, user_id="u1")  # comes after the forget
    outcomes = []
    for order in ("early last", "early first"):
        state = logic.new_state("user:u1")
        logic.advance(state, [buy], T0)
        pending = [before, after] + ([early] if order == "early first" else [])
        step = logic.forget_now(state, pending, forget)
        assert [(c.change, c.reason) for c in step.changes] == [("exited", "forget")] * 3
        assert len(step.forgotten) == 1 and not logic.erased(state, step)  # it waits for stragglers
        assert {e.event_id for e in step.accepted} == {"f", "e2"} | ({"e4"} if order == "early first" else set())
        assert step.remaining == [after] and step.wake == after.ts
        rest = step.remaining + ([early] if order == "early last" else [])
        later = logic.advance(state, rest, after.ts)
        assert later.changes == [] and ({"e3", "e4"} if order == "early last" else {"e3"}) == {
            e.event_id for e in later.accepted
        }  # e4 accepted and erased: the profile counts only e3
        outcomes.append(logic.profile(state)["features"]["counts"])
        # A second forget of the same past is covered: no second receipt.
        assert logic.forget_now(state, [], Event("f2", "forget", forget.ts - 1, user_id="u1")).forgotten == []
        # Once the clock is past the forget by the bound, nothing of the customer is left to guard.
        step = logic.advance(state, [], forget.ts + bound + 1)
        assert state.forgotten_until is None and logic.profile(state)["features"]["counts"] == {"add_to_cart": 1}
    assert outcomes == [{"add_to_cart": 1}] * 2
    # A forget with nothing after it: the customer is dropped once the guard ends (a live job idles).
    alone = logic.new_state("user:u1")
    logic.advance(alone, [buy], T0)
    step = logic.forget_now(alone, [], forget)
    assert step.wake == forget.ts + bound + 1
    assert logic.erased(alone, logic.on_timer(alone, [], step.wake, None, bounded=False))
    assert logic.admit(T0 + 10 * HOUR, None, forget)[0] is False  # an erasure request is never late


def test_identifiers_of_the_command_line_are_cleaned_like_events() -> None:
    assert parse_identifier(f"email: {EMAIL} ", SALT) == ("email", hash_email("erase.seven@example.com", SALT))
    assert parse_identifier("user: u1 ", SALT) == ("user_id", "u1")
    assert parse_identifier("anon:a1", SALT) == ("anonymous_id", "a1")
    assert parse_identifier("device:d1", SALT) == ("device_id", "d1")
    for bad in ("phone:1", "user:", "user:undefined", "email:test@test.com", "u1"):
        with pytest.raises(ValueError):
            parse_identifier(bad, SALT)


# -- end to end -------------------------------------------------------------------------------------------


def _at(hours: float) -> int:
    return T0 + int(hours * HOUR)


def target_events() -> list[dict[str, Any]]:
    """The customer to forget: a device, a login linking it to a user id and an email, purchases, a bad record."""
    return [
        {"event_id": "x1", "type": "page_view", "ts": _at(1), "anonymous_id": "a-erase-7", "device_id": "d-erase-7"},
        {"event_id": "x2", "type": "login", "ts": _at(2), "anonymous_id": "a-erase-7", "user_id": "u-erase-7",
         "email": EMAIL},
        {"event_id": "x3", "type": "purchase", "ts": _at(3), "user_id": "u-erase-7", "order_id": "o-x3",
         "amount": 600, "currency": "EUR"},
        {"event_id": "x4", "type": "purchase", "ts": _at(3.5), "user_id": " u-erase-7 ", "order_id": "o-x4",
         "amount": 5, "currency": "EURO"},  # a dead letter carrying the user id
        {"event_id": "x5", "type": "add_to_cart", "ts": _at(4), "email": EMAIL, "price": 80, "product_id": "p1"},
    ]  # fmt: skip


def others(start_h: float, n: int, step_h: float = 1.0) -> list[dict[str, Any]]:
    return [
        {"event_id": f"o{start_h}-{i}", "type": "purchase", "ts": _at(start_h + i * step_h),
         "user_id": f"other-{i % 4}", "order_id": f"oo-{start_h}-{i}", "amount": 120, "currency": "EUR"}
        for i in range(n)
    ]  # fmt: skip


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "stitch.yaml"
    path.write_text(DEFAULT_CONFIG.read_text() + f"\ncleaning:\n  email_salt: {SALT}\nidentity:\n  stitch: true\n")
    return path


@pytest.fixture
def subscriber(redis_url: str) -> Subscriber:
    """A webhook subscriber registered in Redis (no worker: its deliveries stay queued)."""
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    sub = make_subscriber({"name": "crm", "url": "http://127.0.0.1:9/hooks", "secrets": [secret]}, "test")
    register(redis.Redis.from_url(redis_url), "segstream", [sub])
    return sub


def test_a_forget_event_erases_the_customer_everywhere_but_its_forget_exits(
    tmp_path: Path, redis_url: str, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis.Redis.from_url(redis_url)
    config = load_config(_config(tmp_path))
    out = tmp_path / "out"
    paths = OutputPaths(out / "changes.jsonl", out / "profiles.jsonl", out / "dead_letters.jsonl", None,
                        out / "receipts.jsonl")  # fmt: skip
    state_file = tmp_path / "state" / STATE_FILE
    first = _write(tmp_path / "first.jsonl", others(0, 6) + target_events() + others(6, 6))
    before = METRICS.snapshot()
    CoreEngine(make_spec(first, redis_url, out, config=config, outputs=paths, state_file=state_file)).run()
    promote_state(state_file)  # as the command does at the end of a run
    # Deliveries of the customer: one failed for good (a webhook dead letter), the others still queued.
    queue = DeliveryQueue(client, "segstream", subscriber.name)
    queue.ensure_group()
    queued = [c for c in queue.read(1000, None) if c.customer_id == "user:u-erase-7"]
    assert len(queued) >= 3
    queue.finish([], [DeadDelivery(queued[0], "status_410", 1, 410, "gone")])
    assert client.hget("segstream:profile:device:d-erase-7", "merged_into") == b"user:u-erase-7"
    files = [p for p in (paths.changes, paths.profiles, paths.dead_letters, paths.receipts) if p is not None]
    assert traces(redis_items(client), NEEDLES) and traces(file_items(files), NEEDLES)

    # The second run: one more purchase, the forget, then other customers' events.
    forget_event = {"event_id": "fx", "type": "forget", "ts": _at(51), "email": EMAIL}
    second = _write(
        tmp_path / "second.jsonl",
        [{**others(50, 1)[0], "user_id": "u-erase-7", "event_id": "x6"}, forget_event]
        + [
            {**e, "ts": _at(51) + ms, "event_id": f"w{ms}"}
            for ms, e in zip((2_000, 5_000, 5_001), others(51, 3), strict=True)
        ]
        + others(52, 30, step_h=0.5),
    )
    read: list[int] = []
    forgets: list[tuple[int, float, Any]] = []
    original_read, original_forget = core_engine.read_records, OutputSink.forget

    def reading(*args: Any) -> Iterator[Any]:
        for record in original_read(*args):
            if isinstance(record.payload, dict):
                read.append(record.payload["ts"])
            yield record

    def forgetting(self: OutputSink, forget: Any, *args: Any) -> Any:
        started = time.perf_counter()
        receipt = original_forget(self, forget, *args)
        forgets.append((read[-1] - forget.event_time, time.perf_counter() - started, receipt))
        return receipt

    monkeypatch.setattr(core_engine, "read_records", reading)
    monkeypatch.setattr(OutputSink, "forget", forgetting)
    CoreEngine(make_spec(second, redis_url, out, config=config, outputs=paths, state_file=state_file)).run()
    promote_state(state_file)  # as the command does at the end of a run
    counts = METRICS.snapshot().minus(before)
    assert counts.balanced() and counts.totals["forgets"] == 1

    # Carried out as the forget arrived: no record after it was read first (0 ms of event time).
    ((delay_ms, seconds, receipt),) = forgets
    print(f"forget delay: {delay_ms} ms of event time, {seconds * 1000:.1f} ms wall")
    assert delay_ms == 0

    # Nothing is left but the forget exits: in Redis (every key and value) and in every output file.
    assert traces(redis_items(client), NEEDLES) == []
    assert traces(file_items(files), NEEDLES) == []
    exits = [c for c in read_jsonl(paths.changes) if c.get("customer_id") == "user:u-erase-7"]
    assert exits and {(c["change"], c["reason"]) for c in exits} == {("exited", "forget")}
    stream = [json.loads(f[b"change"]) for _, f in client.xrange("segstream:changes") if b"change" in f]
    assert [c for c in stream if c["customer_id"] == "user:u-erase-7"] == exits
    delivered = [
        json.loads(f[b"body"]) for _, f in client.xrange(queue.queue) if f.get(b"customer_id") == b"user:u-erase-7"
    ]
    assert delivered == exits and client.xlen(queue.dead) == 0
    assert all(p["customer_id"] != "user:u-erase-7" for p in read_jsonl(paths.profiles)[-13:])

    # The receipt: counts of what went, a salted reference, no personal data.
    (line,) = read_jsonl(paths.receipts)
    ((_, fields),) = client.xrange("segstream:receipts")
    assert json.loads(fields[b"receipt"]) == line == receipt.to_dict()
    assert line["requested_by"] == "event:fx" and line["event_time"] == _at(51)
    removed = line["removed"]
    assert removed["segments"] == len(exits) and removed["identity_graph"] == 4 and removed["identifiers"] == 4
    assert removed["redis_keys"] == 2 and removed["deliveries"] >= 3 and removed["dead_letters"] == 1
    assert removed["stream_entries"] >= 4 and removed["output_lines"] >= 6 and removed["identifier_index"] == 4

    # The saved state: no snapshot, no identifier in the identity graph.
    store = SnapshotStore(state_file)
    try:
        assert store.get("user:u-erase-7") is None
        graph = store.get_shared("identity")
        assert graph.lookup("device_id", "d-erase-7") is None and graph.lookup("email", hash_email(EMAIL, SALT)) is None
        assert not [n for n in NEEDLES if n in repr(graph.__getstate__())]
    finally:
        store.close()


def test_segstream_forget_erases_a_customer_from_redis_saved_state_and_files(
    tmp_path: Path, redis_url: str, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGSTREAM_EMAIL_SALT", SALT)
    config = _config(tmp_path)
    config.write_text(config.read_text().replace(f"cleaning:\n  email_salt: {SALT}\n", ""))
    source = _write(tmp_path / "events.jsonl", others(0, 6) + target_events() + others(6, 6))
    state = ["--state-dir", str(tmp_path / "state"), "--redis-url", redis_url]
    run_cli("--source", str(source), "--engine", "core", "--config", str(config), "--resume", *state,
            *outputs(tmp_path / "out"))  # fmt: skip
    files = [tmp_path / "out" / name for name in ("changes.jsonl", "profiles.jsonl", "dead_letters.jsonl")]
    client = redis.Redis.from_url(redis_url)
    register(client, "segstream", [subscriber])  # the run registered its own (none)
    assert traces(redis_items(client), NEEDLES) and traces(file_items(files), NEEDLES)
    receipts = tmp_path / "receipts.jsonl"
    scrub = [arg for path in files for arg in ("--scrub", str(path))]
    result = CliRunner().invoke(
        main,
        ["forget", "--identifier", f"email:{EMAIL}", "--config", str(config), *state, *scrub,
         "--receipts-out", str(receipts)],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith("forgot customer ") and "u-erase-7" not in result.output
    assert traces(redis_items(client), NEEDLES) == [] and traces(file_items(files), NEEDLES) == []
    (receipt,) = read_jsonl(receipts)
    assert receipt["requested_by"] == "cli" and receipt["event_time"] is None
    assert receipt["removed"]["state_entries"] == 1 and receipt["removed"]["identity_graph"] == 4
    assert receipt["removed"]["output_lines"] > 0 and receipt["removed"]["redis_keys"] == 2
    # The notification downstream: exits with reason forget, in the change stream and the webhook queue.
    exits = [json.loads(f[b"change"]) for _, f in client.xrange("segstream:changes") if b"change" in f]
    exits = [c for c in exits if c["customer_id"] == "user:u-erase-7"]
    assert exits and {(c["change"], c["reason"]) for c in exits} == {("exited", "forget")}
    assert receipt["removed"]["segments"] == len(exits)
    queued = [f for _, f in client.xrange("segstream:webhooks:crm:queue") if f[b"customer_id"] == b"user:u-erase-7"]
    assert [json.loads(f[b"body"]) for f in queued] == exits
    store = SnapshotStore(tmp_path / "state" / STATE_FILE)
    try:
        assert (
            store.get("user:u-erase-7") is None and store.get_shared("identity").lookup("user_id", "u-erase-7") is None
        )
    finally:
        store.close()
    # The other customers are untouched, and a second forget finds nothing more to remove.
    assert any(p["customer_id"] == "user:other-1" for p in read_jsonl(files[1]))
    again = CliRunner().invoke(main, ["forget", "--identifier", "user:u-erase-7", *state], catch_exceptions=False)
    assert again.exit_code == 0 and "redis_keys 0" in again.output and "stream_entries 0" in again.output
    bad = CliRunner().invoke(main, ["forget", "--identifier", "phone:1", *state])
    assert bad.exit_code == 2 and "KIND" in bad.output


# -- every engine -----------------------------------------------------------------------------------------


def unstitched_target() -> list[dict[str, Any]]:
    """The customer to forget without identity stitching (Beam and Flink refuse it): every event of
    theirs carries the user id, the other identifiers ride along (they are in the profile)."""
    return [
        {**event, "user_id": " u-erase-7 " if event["event_id"] == "x4" else "u-erase-7"} for event in target_events()
    ]


# What the forget of unstitched_target removes, the same on every engine: its 4 identifiers (user id,
# anonymous id, device id, email hash), one profile hash, a dead letter carrying the user id, its 7
# changes other than the 3 forget exits in the change stream, and 8 lines (those 7 and the dead
# letter) in the files. No identifier index entry and no membership are left to remove without
# stitching (the exits already left the segments).
REMOVED = {"dead_letters": 1, "deliveries": 0, "identifier_index": 0, "identifiers": 4, "output_lines": 8,
           "redis_keys": 1, "segment_memberships": 0, "segments": 3, "stream_entries": 7}  # fmt: skip


@pytest.mark.parametrize("engine", ["core", "beam", "flink"])
def test_a_forget_event_leaves_no_trace_on_every_engine(engine: str, tmp_path: Path, redis_url: str) -> None:
    """The same stream and the same scan on the core loop, the Beam DirectRunner and local PyFlink:
    after the forget event, Redis (every key and value) and every output file hold nothing of the
    customer but its forget exits, and one receipt says what went."""
    config = tmp_path / "salted.yaml"
    config.write_text(DEFAULT_CONFIG.read_text() + f"\ncleaning:\n  email_salt: {SALT}\n")
    forget_event = {"event_id": "fx", "type": "forget", "ts": _at(51), "user_id": "u-erase-7"}
    source = _write(
        tmp_path / "events.jsonl",
        others(0, 6) + unstitched_target() + others(6, 6)
        + [{**others(50, 1)[0], "user_id": "u-erase-7", "event_id": "x6"}, forget_event]
        + others(51.5, 30, step_h=0.5),
    )  # fmt: skip
    out = tmp_path / engine
    receipts = out / "receipts.jsonl"
    summary = run_engine(engine, source, out, redis_url, ["--config", str(config), "--receipts-out", str(receipts)])
    assert summary["forgets"] == 1 and summary["customers"] == 4  # the four others; the forgotten one is gone

    client = redis.Redis.from_url(redis_url)
    files = [out / name for name in ("changes.jsonl", "profiles.jsonl", "dead_letters.jsonl", "summary.json")]
    assert traces(redis_items(client), NEEDLES) == []
    assert traces(file_items([*files, receipts]), NEEDLES) == []

    # The forget exits, in the changes file and the change stream alike: the notification downstream.
    exits = [c for c in read_jsonl(files[0]) if c["customer_id"] == "user:u-erase-7"]
    assert len(exits) >= 2 and {(c["change"], c["reason"]) for c in exits} == {("exited", "forget")}
    stream = [json.loads(f[b"change"]) for _, f in client.xrange(f"{engine}:changes") if b"change" in f]
    assert [c for c in stream if c["customer_id"] == "user:u-erase-7"] == exits
    assert {p["customer_id"] for p in read_jsonl(files[1])} == {f"user:other-{n}" for n in range(4)}

    # One receipt, in Redis and the file: counts of what went, a salted reference, no personal data.
    (receipt,) = read_jsonl(receipts)
    ((_, fields),) = client.xrange(f"{engine}:receipts")
    assert json.loads(fields[b"receipt"]) == receipt
    assert receipt["requested_by"] == "event:fx" and receipt["event_time"] == _at(51)
    removed = receipt["removed"]
    print(f"{engine}: receipt removed {removed}")
    # The identifier index holds the identifiers once a profile of the customer has reached Redis
    # (Beam's replay writes one at the end of the chunk before the forget): none are left (the scan).
    assert removed["identifier_index"] in (0, 4) and {**removed, "identifier_index": 0} == REMOVED
    assert removed["segments"] == len(exits)


@pytest.mark.parametrize("engine", ["beam", "flink"])
def test_a_live_forget_erases_redis_while_running_and_the_files_at_the_drain(
    engine: str, tmp_path: Path, redis_url: str
) -> None:
    """Live runs (Beam: a Redis stream; Flink: a watched directory): once the customer's profile is in
    Redis, a forget is handed over; the customer is gone from Redis while the job still runs (the
    forget is carried out as it arrives); the drain scrubs the files and writes the receipt."""
    config = tmp_path / "salted.yaml"
    config.write_text(DEFAULT_CONFIG.read_text() + f"\ncleaning:\n  email_salt: {SALT}\n")
    forget_event = {"event_id": "fx", "type": "forget", "ts": _at(51), "user_id": "u-erase-7"}
    records = (
        others(0, 6) + unstitched_target() + others(6, 6)
        + [{**others(50, 1)[0], "user_id": "u-erase-7", "event_id": "x6"}]
        + others(51.5, 30, step_h=0.5)
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    out, receipts = tmp_path / "out", tmp_path / "out" / "receipts.jsonl"
    if engine == "beam":
        source = stream_source(redis_url, "clicks", "?group=jobs")
    else:
        source = str(tmp_path / "inbox")
        (tmp_path / "inbox").mkdir()
    job = start_job(
        source, redis_url, "--engine", engine, "--config", str(config), "--no-progress",
        "--metrics-port", str(free_port()), "--changes-out", str(out / "changes.jsonl"),
        "--profiles-out", str(out / "profiles.jsonl"), "--dead-letter-out", str(out / "dead_letters.jsonl"),
        "--summary-out", str(out / "summary.json"), "--receipts-out", str(receipts),
    )  # fmt: skip

    def outputs_in_redis() -> list[tuple[str, str]]:  # the job's keys (the source stream is the producer's)
        return [item for item in redis_items(client) if item[0].startswith("segstream:")]

    def erased() -> bool:
        stream = [json.loads(f[b"change"]) for _, f in client.xrange("segstream:changes") if b"change" in f]
        exits = [c for c in stream if c["customer_id"] == "user:u-erase-7" and c["reason"] == "forget"]
        return bool(exits) and traces(outputs_in_redis(), NEEDLES) == []

    def hand_over(part: str, batch: list[dict[str, Any]]) -> None:
        if engine == "beam":
            for record in batch:
                client.xadd("clicks", {"event": json.dumps(record)})
        else:
            drop(tmp_path / "inbox", f"{part}.jsonl", [json.dumps(record) for record in batch])

    try:
        hand_over("part-1", records)
        wait_until(lambda: client.exists("segstream:profile:user:u-erase-7"), job, 180)  # its profile is out
        hand_over("part-2", [forget_event])
        started = time.monotonic()
        wait_until(erased, job, 180, poll_s=0.05)
        print(f"{engine} live: erased from Redis {time.monotonic() - started:.2f} s after the forget was handed over")
        assert not receipts.exists()  # the files are not scrubbed yet: the receipt waits for them
        drain(job)
    finally:
        if job.poll() is None:
            job.kill()
    assert json.loads((out / "summary.json").read_text())["forgets"] == 1
    files = [out / name for name in ("changes.jsonl", "profiles.jsonl", "dead_letters.jsonl", "summary.json")]
    assert traces(outputs_in_redis(), NEEDLES) == [] and traces(file_items([*files, receipts]), NEEDLES) == []
    exits = [c for c in read_jsonl(files[0]) if c["customer_id"] == "user:u-erase-7"]
    assert len(exits) == 3 and {(c["change"], c["reason"]) for c in exits} == {("exited", "forget")}
    assert {p["customer_id"] for p in read_jsonl(files[1])} == {f"user:other-{n}" for n in range(4)}
    (receipt,) = read_jsonl(receipts)
    ((_, fields),) = client.xrange("segstream:receipts")
    assert json.loads(fields[b"receipt"]) == receipt
    # Live, the customer's profile (with its identifiers) may reach Redis before the forget: then the
    # identifier index held them too. No membership is left: the exits were written before the erase.
    removed = receipt["removed"]
    print(f"{engine} live: receipt removed {removed}")
    assert removed["identifier_index"] in (0, 4) and {**removed, "identifier_index": 0} == REMOVED
