"""Delivery workers against real Redis and real HTTP receivers on 127.0.0.1: queueing with the change
write, per-customer order, isolation, circuit breaker, rate limit, restart, and the commands."""

from __future__ import annotations

import time
from pathlib import Path

import redis
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.delivery import Deliveries
from pipelines.delivery_queue import DeliveryQueue, register
from pipelines.redis_store import RedisSink, shared_client
from pipelines.webhook_receiver import Reply
from tests.conftest import NOW_MS, free_port
from tests.delivery_harness import (
    SECRET,
    check_customer_order,
    check_delivered,
    receiving,
    run_job,
    subscriber,
    with_subscribers,
)
from transforms.changes import SegmentChange, change_id
from transforms.subscribers import WebhooksConfig, make_subscriber


def changes_of(customers: int, per_customer: int) -> list[SegmentChange]:
    """``per_customer`` changes for each customer (in seq order), alternately entering and leaving "s"."""
    changes = []
    for seq in range(1, per_customer + 1):
        for n in range(customers):
            customer, direction = f"user:{n}", "entered" if seq % 2 else "exited"
            changes.append(
                SegmentChange(change_id(customer, "s", direction, seq), customer, "s", direction, seq, seq, "rule", "v")
            )
    return changes


def as_dicts(changes: list[SegmentChange]) -> list[dict[str, object]]:
    return [c.to_dict() for c in changes]


def test_a_change_is_queued_with_its_write_for_each_subscriber_that_wants_it_and_only_once(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    everything = subscriber("everything", "http://127.0.0.1:9/")
    buyers = subscriber("buyers", "http://127.0.0.1:9/", segments=["recent_buyer"])
    register(client, "q", [everything, buyers])
    changes = [
        SegmentChange(change_id("user:1", seg, "entered", seq), "user:1", seg, "entered", seq, 0, "rule", "v")
        for seq, seg in enumerate(["recent_buyer", "big_spender", "recent_buyer"], start=1)
    ]
    sink = RedisSink(shared_client(redis_url), "q")
    sink.write(changes, [])
    sink.write(changes, [])  # a replay: the seq guard queues nothing again
    RedisSink(shared_client(redis_url), "q").write(changes[:2], [])  # a restarted job
    assert DeliveryQueue(client, "q", "everything").depth().queued == 3
    assert DeliveryQueue(client, "q", "buyers").depth().queued == 2
    [(_, entries)] = client.xread({"q:webhooks:buyers:queue": "0"})
    assert [fields[b"change_id"].decode() for _, fields in entries] == [changes[0].change_id, changes[2].change_id]
    assert entries[0][1][b"customer_id"] == b"user:1"


def test_every_change_of_a_run_reaches_every_subscriber_signed_and_in_customer_order(
    redis_url: str, sample_file: Path, tmp_path: Path
) -> None:
    with receiving(tmp_path / "a.jsonl") as (a, url_a), receiving(tmp_path / "b.jsonl") as (b, url_b):
        everything = subscriber("everything", url_a)
        buyers = subscriber("buyers", url_b, segments=["recent_buyer"])
        changes = run_job(sample_file, redis_url, tmp_path / "out", "run", with_subscribers(everything, buyers))
    assert changes and len(wanted_ids := {c["change_id"] for c in changes}) == len(changes)
    check_delivered(changes, everything, a)
    check_delivered(changes, buyers, b)
    assert len(b.lines()) < len(wanted_ids)  # the filter applied
    check_customer_order(a)
    check_customer_order(b)
    assert a.rejected == b.rejected == 0


def test_a_customer_waits_behind_its_retrying_change_while_other_customers_go_on(
    redis_url: str, tmp_path: Path
) -> None:
    changes = changes_of(customers=5, per_customer=3)
    stuck = changes[0]  # user:0, seq 1

    def script(webhook_id: str, attempt: int) -> Reply | None:
        if webhook_id != stuck.change_id or attempt > 3:
            return None
        return Reply(503, {"Retry-After": "1"}) if attempt == 1 else Reply(503)

    with receiving(tmp_path / "a.jsonl", script) as (receiver, url):
        config = WebhooksConfig((subscriber("a", url, breaker_threshold=100),))
        with Deliveries(config, redis_url, "order"):
            RedisSink(shared_client(redis_url), "order").write(changes, [])
    check_delivered(as_dicts(changes), config.subscribers[0], receiver)
    check_customer_order(receiver)
    accepted = [line["webhook_id"] for line in receiver.lines()]
    others = [c.change_id for c in changes if c.customer_id != "user:0"]
    assert max(accepted.index(i) for i in others) < accepted.index(stuck.change_id)  # nobody waited for user:0
    assert len(receiver.requests[stuck.change_id]) == 4


def test_a_failing_subscriber_does_not_delay_a_healthy_one(redis_url: str, tmp_path: Path) -> None:
    changes = changes_of(customers=20, per_customer=2)

    def hang(webhook_id: str, attempt: int) -> float:
        return 0.3  # beyond the 100 ms timeout: every attempt fails

    with receiving(tmp_path / "ok.jsonl") as (healthy, ok_url), receiving(tmp_path / "bad.jsonl", hang) as (_, bad):
        config = WebhooksConfig(
            (subscriber("healthy", ok_url), subscriber("failing", bad, timeout="100ms", max_retry_age="5s")),
            drain_timeout_ms=0,
        )
        with Deliveries(config, redis_url, "iso") as deliveries:
            started = time.monotonic()
            RedisSink(shared_client(redis_url), "iso").write(changes, [])
            while deliveries.depths()["healthy"].queued:
                assert time.monotonic() - started < 5
                time.sleep(0.01)
            healthy_done = time.monotonic() - started
            assert deliveries.depths()["failing"].queued == len(changes)
    check_delivered(as_dicts(changes), config.subscribers[0], healthy)
    assert healthy_done < 2.0


def test_the_circuit_breaker_stops_hammering_a_failing_endpoint(redis_url: str, tmp_path: Path) -> None:
    changes = changes_of(customers=30, per_customer=1)
    with receiving(tmp_path / "x.jsonl", lambda _id, _n: Reply(503)) as (receiver, url):
        config = WebhooksConfig(
            (subscriber("down", url, breaker_threshold=3, breaker_cooldown="400ms", concurrency=1),),
            drain_timeout_ms=1_000,
        )
        with Deliveries(config, redis_url, "cb"):
            RedisSink(shared_client(redis_url), "cb").write(changes, [])
        requests = sum(len(times) for times in receiver.requests.values())
    # closed: 3 failures, then one trial per 400 ms cooldown (without the breaker: one every ~10-100 ms)
    assert 3 <= requests <= 8


def test_the_rate_limit_paces_sends(redis_url: str, tmp_path: Path) -> None:
    changes = changes_of(customers=21, per_customer=1)
    with receiving(tmp_path / "r.jsonl") as (receiver, url):
        config = WebhooksConfig((subscriber("paced", url, rate_limit=40),))
        with Deliveries(config, redis_url, "rl"):
            RedisSink(shared_client(redis_url), "rl").write(changes, [])
    times = sorted(t for arrivals in receiver.requests.values() for t in arrivals)
    assert len(times) == 21 and times[-1] - times[0] >= 0.45  # 20 intervals at 40/s = 0.5 s


def test_a_restarted_worker_resends_what_it_had_read_with_the_same_webhook_id(redis_url: str, tmp_path: Path) -> None:
    changes = changes_of(customers=3, per_customer=2)
    client = redis.Redis.from_url(redis_url)
    with receiving(tmp_path / "w.jsonl") as (receiver, url):
        config = WebhooksConfig((subscriber("w", url),))
        register(client, "rs", config.subscribers)
        RedisSink(shared_client(redis_url), "rs").write(changes, [])
        queue = DeliveryQueue(client, "rs", "w")
        queue.ensure_group()
        assert len(queue.read(4, None)) == 4  # a worker read these, then crashed before finishing them
        with Deliveries(config, redis_url, "rs", register_routes=False):
            pass
    check_delivered(as_dicts(changes), config.subscribers[0], receiver)
    check_customer_order(receiver)
    assert queue.depth().queued == 0 and client.xpending("rs:webhooks:w:queue", "delivery")["pending"] == 0


def test_deliver_command_sends_what_is_queued_and_status_shows_the_queues(redis_url: str, tmp_path: Path) -> None:
    changes = changes_of(customers=4, per_customer=2)
    client = redis.Redis.from_url(redis_url)
    with receiving(tmp_path / "d.jsonl") as (receiver, url):
        register(client, "dc", [make_subscriber({"url": url, "secrets": [SECRET]}, "test")])
        RedisSink(shared_client(redis_url), "dc").write(changes, [])
        runner = CliRunner()
        status = runner.invoke(main, ["deliveries", "status", "--redis-url", redis_url, "--redis-prefix", "dc"])
        assert status.exit_code == 0 and "8 queued, 0 dead letters" in status.output
        result = runner.invoke(
            main,
            ["deliver", "--webhook", url, "--webhook-secret", SECRET, "--redis-url", redis_url,
             "--redis-prefix", "dc", "--until-empty"],
            catch_exceptions=False,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    assert "8 / 0 / 0; 0 / 0" in result.output
    assert {line["webhook_id"] for line in receiver.lines()} == {c.change_id for c in changes}


def test_deliver_without_subscribers_is_a_user_error(redis_url: str) -> None:
    result = CliRunner().invoke(main, ["deliver", "--redis-url", redis_url])
    assert result.exit_code == 2 and "no subscribers" in result.output
    result = CliRunner().invoke(main, ["deliver", "--redis-url", redis_url, "--webhook", "http://127.0.0.1:9/"])
    assert result.exit_code == 2 and "needs --webhook-secret" in result.output


def test_run_takes_webhooks_on_the_command_line(redis_url: str, sample_file: Path, tmp_path: Path) -> None:
    with receiving(tmp_path / "cli.jsonl") as (receiver, url):
        result = CliRunner().invoke(
            main,
            ["run", "--source", str(sample_file), "--engine", "core", "--redis-url", redis_url, "--now", str(NOW_MS),
             "--no-progress", "--webhook", url, "--webhook-secret", SECRET,
             "--changes-out", str(tmp_path / "changes.jsonl")],
            catch_exceptions=False,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    assert "webhook deliveries" in result.output
    emitted = (tmp_path / "changes.jsonl").read_text().count("\n")
    assert emitted > 0 and len(receiver.lines()) == emitted
    unreachable = CliRunner().invoke(
        main, ["run", "--source", str(sample_file), "--webhook", f"http://127.0.0.1:{free_port()}/", "--webhook-secret",
               "nope", "--redis-url", redis_url],
    )  # fmt: skip
    assert unreachable.exit_code == 2 and "whsec_" in unreachable.output
