"""Secrets and personal data stay out of everything a run leaves behind.

A real run (the command line in-process, logging at DEBUG) with a Redis password, a webhook
signing secret, an email salt and a model key, over a stream whose records carry clear email
addresses in every shape the job meets (accepted, rejected, late, not JSON, oversized, a JSON array,
a non-text email).
Then every byte the run produced is searched: stdout, stderr, every log record, the summary file,
every output file, the webhook bodies received, every key and value in Redis and the metric labels.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pyflink
import pytest
import redis
from click.testing import CliRunner
from prometheus_client import generate_latest

from pipelines.cli import main
from pipelines.job import JobSpec
from pipelines.metrics import METRICS
from pipelines.model_publisher import KEY_ENV, KEY_FILE_ENV, model_key
from pipelines.webhook_receiver import WebhookReceiver
from pipelines.webhooks import HttpSender, Signer
from tests.conftest import NOW_MS, free_port, read_jsonl
from tests.redis_tls import protected_redis
from transforms.config import ConfigError, parse_config
from transforms.identifiers import hash_email
from transforms.sample_stream import sample_lines
from transforms.subscribers import parse_webhooks, with_command_line

REDIS_PASSWORD = "redis-Pw-4f1c9e2b7a"
WEBHOOK_SECRET = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LWZvci10ZXN0cy0xMjM0NTY3OA"
SALT = "salt-Of-The-Test-8d2e5b"
MODEL_KEY = "model-Key-of-the-Run-5e7a2c"
SECRETS = (
    REDIS_PASSWORD,
    urllib.parse.quote(REDIS_PASSWORD),
    WEBHOOK_SECRET,
    WEBHOOK_SECRET[len("whsec_") :],
    SALT,
    MODEL_KEY,
)
# Every clear address in the input: the sample stream's (userN@example.com) and the crafted ones below.
CLEAR_EMAIL = re.compile(r"[\w.+-]+@(?:example\.com|privacy\.test)", re.IGNORECASE)
BASE_TS = 1_748_800_000_000  # inside the sample stream's days


def crafted_lines() -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Records with clear emails that take every path to an output (to put after the sample stream,
    but for the "clock" record that goes before it: the late record is behind its clock); the JSON
    ones by name."""
    records = {
        "accepted": {"event_id": "priv-1", "type": "page_view", "ts": BASE_TS, "user_id": "priv-user-1",
                     "email": " Alice.Private@Privacy.test ", "plan": "gold"},
        "rejected": {"event_id": "priv-2", "type": "teleport", "ts": BASE_TS, "user_id": "priv-user-2",
                     "email": "Bob.Rejected@privacy.test", "note": "kept as it is"},
        "clock": {"event_id": "priv-3", "type": "page_view", "ts": BASE_TS, "user_id": "priv-late"},  # goes first
        "late": {"event_id": "priv-4", "type": "page_view", "ts": BASE_TS - 86_400_000, "user_id": "priv-late",
                 "email": "Carol.Late@privacy.test"},
        "not_text": {"event_id": "priv-5", "type": "page_view", "ts": BASE_TS, "user_id": "priv-user-5",
                     "email": ["frank.list@privacy.test"]},
    }  # fmt: skip
    lines = [json.dumps(record) for name, record in records.items() if name != "clock"]
    lines.append('{"event_id": "priv-6", "email": "dave.malformed@privacy.test", ')  # not JSON
    lines.append(json.dumps(["gina.array@privacy.test"]))  # JSON, not an object
    padding = "x" * (70 * 1024)
    lines.append(json.dumps({"email": "erin.big@privacy.test", "event_id": "priv-7", "pad": padding}))  # oversized
    return lines, records


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with protected_redis(tmp_path_factory.mktemp("redis-auth"), REDIS_PASSWORD) as (host, port):
        yield f"redis://:{urllib.parse.quote(REDIS_PASSWORD)}@{host}:{port}/0"


class Records(logging.Handler):
    """Every log record of any logger, formatted with its arguments and any traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{self.format(record)} {record.args!r} {record.exc_text or ''}")


@contextlib.contextmanager
def debug_logs() -> Iterator[Records]:
    """Every logger at DEBUG, into one :class:`Records`."""
    root = logging.getLogger()
    handler, level = Records(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _text(value: object) -> str:
    """Redis replies as text: bytes decoded (binary values too, as far as they are text)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return " ".join(f"{_text(k)}={_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return " ".join(_text(item) for item in value)
    return str(value)


def redis_dump(url: str) -> str:
    """Every key and value in the server, as text."""
    client = redis.Redis.from_url(url)
    parts = []
    readers = {
        b"string": client.get,
        b"hash": client.hgetall,
        b"set": client.smembers,
        b"list": lambda key: client.lrange(key, 0, -1),
        b"zset": lambda key: client.zrange(key, 0, -1, withscores=True),
        b"stream": client.xrange,
    }
    for key in client.scan_iter(count=1000):
        parts.append(f"{_text(key)} {_text(readers[client.type(key)](key))}")
    return "\n".join(parts)


def label_values() -> set[str]:
    return {value for metric in METRICS.registry.collect() for s in metric.samples for value in s.labels.values()}


FLINK_LOGS = Path(pyflink.__file__).parent / "log"  # where local PyFlink's JVM and Python workers log


def log_times() -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in FLINK_LOGS.glob("*.log")}


@pytest.fixture(scope="module", params=["core", "beam", "flink"])
def secret_run(
    request: pytest.FixtureRequest, protected: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The run (once per engine), and everything it left: texts by where they were found."""
    redis.Redis.from_url(protected).flushall()
    tmp_path = tmp_path_factory.mktemp(f"secrets-{request.param}")
    lines, records = crafted_lines()
    source = tmp_path / "events.jsonl"
    first = json.dumps(records["clock"])
    source.write_text("\n".join([first, *sample_lines(customers=60), *lines]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    receiver = WebhookReceiver([WEBHOOK_SECRET], tmp_path / "received.jsonl")
    server = receiver.serve()
    args = [
        "run", "--engine", request.param, "--source", str(source), "--redis-url", protected, "--now", str(NOW_MS),
        "--no-progress", "--state-dir", str(out / "state"),
        "--webhook", server.url, "--webhook-secret", WEBHOOK_SECRET,
        "--changes-out", str(out / "changes.jsonl"), "--profiles-out", str(out / "profiles.jsonl"),
        "--dead-letter-out", str(out / "dead_letters.jsonl"), "--summary-out", str(out / "summary.json"),
    ]  # fmt: skip
    if request.param == "beam":
        args += ["--chunk-events", "200"]  # chunk ends are watermarks: the late record is late on Beam too
    if request.param != "flink":
        args.append("--resume")  # the customers saved for the next run are searched too
    logged_before = log_times()
    try:
        with pytest.MonkeyPatch.context() as env, debug_logs() as logs:
            env.setenv("SEGSTREAM_EMAIL_SALT", SALT)
            env.setenv(KEY_ENV, MODEL_KEY)  # signed model snapshots go to Redis, searched too
            result = CliRunner().invoke(main, args, catch_exceptions=False)
    finally:
        server.stop()
        receiver.close()
    assert result.exit_code == 0, result.output
    files = {str(path): path.read_text(encoding="utf-8", errors="replace") for path in out.rglob("*") if path.is_file()}
    flink_logs = {  # those this run wrote (a local JVM rewrites its file), read whole
        str(path): path.read_text(errors="replace") for path, at in log_times().items() if at != logged_before.get(path)
    }
    texts = {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "logs": "\n".join(logs.lines),
        **flink_logs,
        "webhooks": (tmp_path / "received.jsonl").read_text(encoding="utf-8"),
        "redis": redis_dump(protected),
        "metrics": generate_latest(METRICS.registry).decode(),
        **files,
    }
    return {"texts": texts, "out": out, "records": records, "receiver": receiver, "url": protected, "hook": server.url,
            "engine": request.param}  # fmt: skip


def test_the_run_went_through_every_path(secret_run: dict[str, Any]) -> None:
    """The places searched below are not empty: the run delivered, logged, dead-lettered."""
    out = secret_run["out"]
    assert secret_run["receiver"].accepted > 0
    assert {"profiles.jsonl", "changes.jsonl", "dead_letters.jsonl", "summary.json"} <= {
        Path(p).name for p in secret_run["texts"]
    }
    reasons = {letter["reason"] for letter in read_jsonl(out / "dead_letters.jsonl")}
    assert {"unknown_event_type", "late", "malformed", "oversized", "wrong_type"} <= reasons
    assert "segstream_dead_letters_total" in secret_run["texts"]["metrics"]
    assert "segstream:model:churn:v1" in secret_run["texts"]["redis"]  # signed with the model key, searched too
    if secret_run["engine"] == "flink":  # the JVM's and the embedded interpreter's logs
        assert any(where.startswith(str(FLINK_LOGS)) and text for where, text in secret_run["texts"].items())
    state = out / "state" / "customers.db"  # --resume: the customers saved for the next run, searched too
    assert state.exists() == (secret_run["engine"] != "flink")
    assert not state.exists() or (state.stat().st_size > 0 and b"priv-user-1" in state.read_bytes())


def test_no_secret_appears_anywhere(secret_run: dict[str, Any]) -> None:
    for where, text in secret_run["texts"].items():
        for secret in SECRETS:
            assert secret not in text, f"{secret[:6]}... found in {where}"
    assert secret_run["hook"] not in secret_run["texts"]["redis"]  # Redis holds subscriber names, not URLs


def test_no_clear_email_appears_anywhere(secret_run: dict[str, Any]) -> None:
    for where, text in secret_run["texts"].items():
        found = CLEAR_EMAIL.search(text)
        assert found is None, f"{found.group()} found in {where}" if found else ""


def test_a_rejected_record_keeps_its_payload_with_only_the_email_hashed(secret_run: dict[str, Any]) -> None:
    out, records = secret_run["out"], secret_run["records"]
    letters = {letter["event_id"]: letter for letter in read_jsonl(out / "dead_letters.jsonl")}
    for name in ("rejected", "late"):
        record = records[name]
        payload = json.loads(letters[record["event_id"]]["payload"])
        assert payload["email"] == hash_email(record["email"], SALT)
        if name == "rejected":  # the payload is the record, every other field as it came
            assert payload == {**record, "email": hash_email(record["email"], SALT)}
    assert json.loads(letters["priv-5"]["payload"])["email"] == "<redacted>"
    stored = redis.Redis.from_url(secret_run["url"], decode_responses=True).xrange("segstream:dead_letters")
    assert {json.loads(fields["dead_letter"])["payload"] for _, fields in stored} == {
        letter["payload"] for letter in read_jsonl(out / "dead_letters.jsonl")
    }


def test_the_accepted_email_is_stored_only_as_its_salted_hash(secret_run: dict[str, Any]) -> None:
    out = secret_run["out"]
    [profile] = [p for p in read_jsonl(out / "profiles.jsonl") if p["customer_id"] == "user:priv-user-1"]
    assert profile["identifiers"]["email"] == [hash_email("alice.private@privacy.test", SALT)]


def test_no_metric_label_carries_a_customer_or_an_identifier(secret_run: dict[str, Any]) -> None:
    profiles = read_jsonl(secret_run["out"] / "profiles.jsonl")
    personal = {p["customer_id"] for p in profiles}
    personal |= {value for p in profiles for values in p.get("identifiers", {}).values() for value in values}
    personal |= {value.split(":", 1)[1] for value in personal if ":" in value}
    labels = label_values()
    assert labels and not labels & personal
    assert not any("@" in value or "priv-" in value for value in labels)


def test_a_bad_webhook_secret_is_not_echoed(tmp_path: Path) -> None:
    bad = "whsec_not*base64*Secret99"
    source = tmp_path / "events.jsonl"
    source.write_text(next(iter(sample_lines(customers=1))) + "\n", encoding="utf-8")
    result = CliRunner().invoke(
        main, ["run", "--source", str(source), "--webhook", "http://127.0.0.1:9/h", "--webhook-secret", bad]
    )
    assert result.exit_code == 2
    assert bad not in result.output and "not*base64" not in result.output


def test_a_malformed_stream_source_does_not_echo_its_password(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["run", "--source", f"redis-stream://:{REDIS_PASSWORD}@127.0.0.1:6379", "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "is not redis-stream://" in result.output
    assert REDIS_PASSWORD not in result.output


# /metrics: loopback unless told otherwise.


def _non_loopback_address() -> str | None:
    """An address of this machine other than 127.0.0.1 (None when it has none)."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_metrics_bind_to_loopback_by_default() -> None:
    options = {param.name: param for param in main.commands["run"].params}
    assert options["metrics_address"].default == "127.0.0.1"
    assert JobSpec.__dataclass_fields__["metrics_address"].default == "127.0.0.1"
    port = free_port()
    server = METRICS.serve(port)  # what a live run does with the defaults
    try:
        assert server.socket.getsockname() == ("127.0.0.1", port)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "segstream_events_in_total" in body
        other = _non_loopback_address()
        if other is not None:  # the machine's other address does not answer
            assert not _reachable(other, port)
    finally:
        server.shutdown()
        server.server_close()


def test_another_metrics_address_is_honoured() -> None:
    port = free_port()
    server = METRICS.serve(port, "0.0.0.0")
    try:
        assert server.socket.getsockname() == ("0.0.0.0", port)
        assert _reachable("127.0.0.1", port)
        other = _non_loopback_address()
        if other is not None:
            assert _reachable(other, port)
    finally:
        server.shutdown()
        server.server_close()


def _listening(pid: int, port: int) -> list[str]:
    """The addresses process ``pid`` listens on at ``port``."""
    return [
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]


@pytest.mark.parametrize(("options", "expected"), [((), "127.0.0.1"), (("--metrics-address", "0.0.0.0"), "0.0.0.0")])
def test_a_live_run_serves_metrics_where_it_is_told(
    redis_url: str, tmp_path: Path, options: tuple[str, ...], expected: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    for line in list(sample_lines(customers=3))[:20]:
        client.xadd("clicks", {"event": line})
    port = free_port()
    source = redis_url.replace("redis://", "redis-stream://").rsplit("/", 1)[0] + "/clicks"
    job = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "--source", source, "--redis-url", redis_url,
         "--now", str(NOW_MS), "--metrics-port", str(port), "--state-dir", str(tmp_path), *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (addresses := _listening(job.pid, port)):
            assert job.poll() is None, job.communicate()[1]
            assert time.monotonic() < deadline, "the live run never served /metrics"
            time.sleep(0.2)
        assert addresses == [expected]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "segstream_events_in_total" in body
        job.send_signal(signal.SIGINT)
        _, stderr = job.communicate(timeout=180)
        assert job.returncode == 0, stderr
    finally:
        job.kill()


# Salt rotation: a replay with the new salt into a fresh prefix; the old prefix stays as it was.


def test_salt_rotation_replays_into_a_fresh_prefix(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_email = {"event_id": "rot-1", "type": "page_view", "ts": BASE_TS, "email": "Ivy.Only@privacy.test"}
    source = tmp_path / "history.jsonl"
    source.write_text("\n".join([*sample_lines(customers=30), json.dumps(only_email)]) + "\n", encoding="utf-8")
    old_salt, new_salt = "old-Salt-1a2b3c", "new-Salt-4d5e6f"

    def replay(salt: str, prefix: str, out: Path, *webhook: str) -> list[dict[str, Any]]:
        monkeypatch.setenv("SEGSTREAM_EMAIL_SALT", salt)
        result = CliRunner().invoke(
            main,
            ["run", "--engine", "core", "--source", str(source), "--redis-url", redis_url, "--now", str(NOW_MS),
             "--no-progress", "--redis-prefix", prefix, "--state-dir", str(out / "state"), "--resume",
             "--profiles-out", str(out / "profiles.jsonl"), *webhook],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return read_jsonl(out / "profiles.jsonl")

    receiver = WebhookReceiver([WEBHOOK_SECRET], tmp_path / "received.jsonl")
    server = receiver.serve()
    try:  # the old deployment: live with a subscriber
        old = replay(
            old_salt, "segstream", tmp_path / "old", "--webhook", server.url, "--webhook-secret", WEBHOOK_SECRET
        )
    finally:
        server.stop()
        receiver.close()
    new = replay(new_salt, "segstream-v2", tmp_path / "new")  # the rotation replay: no subscriber
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    # Every email-derived id changed; ids that come from user or anonymous ids did not.
    old_hash, new_hash = hash_email(only_email["email"], old_salt), hash_email(only_email["email"], new_salt)
    assert f"email:{old_hash}" in {p["customer_id"] for p in old}
    assert f"email:{new_hash}" in {p["customer_id"] for p in new}
    assert {p["customer_id"] for p in old} - {p["customer_id"] for p in new} == {f"email:{old_hash}"}
    old_emails = {e for p in old for e in p["identifiers"].get("email", [])}
    new_emails = {e for p in new for e in p["identifiers"].get("email", [])}
    assert old_emails and new_emails and not old_emails & new_emails
    new_keys = client.hkeys("segstream-v2:identifiers")
    assert f"email:{new_hash}" in new_keys and not {f"email:{h}" for h in old_emails} & set(new_keys)
    assert client.hget("segstream:identifiers", f"email:{old_hash}") == f"email:{old_hash}"

    # The replay queued nothing for the old deployment's subscriber: the fresh prefix has no routes.
    assert not list(client.scan_iter(match="segstream-v2:webhooks:*"))
    assert list(client.scan_iter(match="segstream:webhooks:*"))

    # Readers switch to segstream-v2; then the old prefix goes, and only it ('segstream:*' has the colon).
    for key in client.scan_iter(match="segstream:*"):
        client.unlink(key)
    assert not list(client.scan_iter(match="segstream:*"))
    assert client.hget("segstream-v2:identifiers", f"email:{new_hash}") == f"email:{new_hash}"
    assert len(list(client.scan_iter(match="segstream-v2:profile:*"))) == len(new)


# Secrets from environment variables or files, never needed on the command line.

ENV_WITH_A_KEY = {"SEGSTREAM_MODEL_KEY": "a-model-key-of-24-chars!"}
OTHER_SECRET = "whsec_b3RoZXItc2lnbmluZy1zZWNyZXQtZm9yLXRlc3Rz"


def test_the_model_key_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "model.key"
    key_file.write_text("  a-model-key-from-a-file \n")
    assert model_key(ENV_WITH_A_KEY) == b"a-model-key-of-24-chars!"
    assert model_key({KEY_FILE_ENV: str(key_file)}) == b"a-model-key-from-a-file"
    assert model_key({}) is None


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        (None, {KEY_FILE_ENV: "{dir}/missing.key"}, "SEGSTREAM_MODEL_KEY_FILE: cannot read {dir}/missing.key: No such"),
        (None, {KEY_FILE_ENV: "{dir}"}, "SEGSTREAM_MODEL_KEY_FILE: cannot read {dir}: Is a directory"),
        ("\n \n", {KEY_FILE_ENV: "{dir}/model.key"}, "SEGSTREAM_MODEL_KEY_FILE: {dir}/model.key is empty"),
        ("first-key-of-16-bytes\nsecond-key-of-16-bytes\n", {KEY_FILE_ENV: "{dir}/model.key"}, "must hold one line"),
        ("short-Key-7\n", {KEY_FILE_ENV: "{dir}/model.key"}, "MODEL_KEY_FILE: the model key must be at least 16"),
        (None, {KEY_ENV: "short-Key-7"}, "SEGSTREAM_MODEL_KEY: the model key must be at least 16 bytes"),
        (None, {KEY_FILE_ENV: ""}, "SEGSTREAM_MODEL_KEY_FILE is set but empty"),
        (None, {KEY_FILE_ENV: "{dir}/model.key", KEY_ENV: "a-model-key-of-24-chars!"}, "not both"),
    ],
)  # fmt: skip
def test_a_bad_model_key_is_one_clear_line_without_the_key(
    content: str | None, env: dict[str, str], message: str, tmp_path: Path
) -> None:
    if content is not None:
        (tmp_path / "model.key").write_text(content)
    env = {name: value.format(dir=tmp_path) for name, value in env.items()}
    with pytest.raises(ValueError) as error:
        model_key(env)
    assert message.format(dir=tmp_path) in str(error.value) and "\n" not in str(error.value)
    assert "short-Key-7" not in str(error.value) and "first-key" not in str(error.value)


def test_the_job_refuses_a_bad_model_key_and_warns_without_one(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(sample_lines(customers=3)) + "\n", encoding="utf-8")
    args = ["run", "--engine", "core", "--source", str(source), "--redis-url", redis_url, "--now", str(NOW_MS)]
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "missing.key"))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"Error: {KEY_FILE_ENV}: cannot read {tmp_path}/missing.key: No such file or directory"
    )
    monkeypatch.delenv(KEY_FILE_ENV)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"warning: without {KEY_FILE_ENV} or {KEY_ENV} model snapshots are neither published" in result.stderr
    assert not redis.Redis.from_url(redis_url).keys("segstream:model:*")


def test_run_signs_with_the_secrets_of_a_file(redis_url: str, tmp_path: Path) -> None:
    secrets = tmp_path / "webhook.secrets"
    secrets.write_text(f"{WEBHOOK_SECRET}\n\n  {OTHER_SECRET}  \n")  # one per line; blank lines, spaces ignored
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(sample_lines(customers=20)) + "\n", encoding="utf-8")
    receiver = WebhookReceiver([OTHER_SECRET], tmp_path / "received.jsonl")  # only the file's second secret
    server = receiver.serve()
    try:
        result = CliRunner().invoke(
            main,
            ["run", "--engine", "core", "--source", str(source), "--redis-url", redis_url, "--now", str(NOW_MS),
             "--webhook", server.url],
            env={"SEGSTREAM_WEBHOOK_SECRET_FILE": str(secrets), "SEGSTREAM_WEBHOOK_SECRET": None},
        )  # fmt: skip
    finally:
        server.stop()
        receiver.close()
    assert result.exit_code == 0, result.output
    assert receiver.accepted > 0 and receiver.rejected == 0


@pytest.mark.parametrize("command", ["run", "webhook-receiver"])
@pytest.mark.parametrize(
    ("content", "given", "message"),
    [
        (None, "missing", "-file: cannot read {path}: No such file or directory"),
        ("\n  \n", "file", "-file: {path} is empty"),
        ("not-a-whsec-Secret\n", "file", "-file: a webhook secret starts with 'whsec_'"),
        (f"{WEBHOOK_SECRET}\n", "file and option", "-file and --"),
    ],
)
def test_a_bad_webhook_secret_file_is_one_clear_line_without_its_content(
    command: str, content: str | None, given: str, message: str, tmp_path: Path
) -> None:
    path = tmp_path / ("missing" if given == "missing" else "secrets")
    if content is not None:
        path.write_text(content)
    option = "--webhook-secret" if command == "run" else "--secret"
    source = tmp_path / "events.jsonl"
    source.write_text(next(iter(sample_lines(customers=1))) + "\n", encoding="utf-8")
    args = ["--source", str(source), "--webhook", "http://127.0.0.1:9/h"] if command == "run" else []
    env = {"SEGSTREAM_WEBHOOK_SECRET_FILE": str(path), "SEGSTREAM_WEBHOOK_SECRET": None}
    if given == "file and option":
        env["SEGSTREAM_WEBHOOK_SECRET"] = OTHER_SECRET
    result = CliRunner().invoke(main, [command, *args], env=env)
    assert result.exit_code == 2
    [line] = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert line.startswith(f"Error: {option}") and message.format(path=path) in line
    assert "not-a-whsec" not in line and WEBHOOK_SECRET not in line and OTHER_SECRET not in line


def test_the_webhook_receiver_needs_a_secret() -> None:
    result = CliRunner().invoke(
        main, ["webhook-receiver"], env={"SEGSTREAM_WEBHOOK_SECRET": None, "SEGSTREAM_WEBHOOK_SECRET_FILE": None}
    )
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == "Error: webhook-receiver needs --secret-file FILE or SEGSTREAM_WEBHOOK_SECRET_FILE (or --secret)"
    )


@pytest.mark.timeout(60)
def test_the_webhook_receiver_reads_its_secret_from_a_file_out_of_the_process_list(tmp_path: Path) -> None:
    secrets = tmp_path / "webhook.secrets"
    secrets.write_text(WEBHOOK_SECRET + "\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSTREAM_WEBHOOK_SECRET")}
    receiver = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "webhook-receiver", "--port", str(port), "--out",
         str(tmp_path / "received.jsonl")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**env, "SEGSTREAM_WEBHOOK_SECRET_FILE": str(secrets)},
    )  # fmt: skip
    try:
        body = json.dumps({"change_id": "c1"})
        sender = HttpSender(f"http://127.0.0.1:{port}/hooks", timeout_ms=1_000)
        deadline = time.monotonic() + 30
        while (
            attempt := sender.post(body.encode(), Signer([WEBHOOK_SECRET]).headers("c1", body, time.time()))
        ).status is None:
            assert time.monotonic() < deadline, attempt.error
            time.sleep(0.1)
        assert attempt.status == 204
        assert sender.post(body.encode(), Signer([OTHER_SECRET]).headers("c2", body, time.time())).status == 401
        sender.close()
        command_line = " ".join(psutil.Process(receiver.pid).cmdline())
        assert "webhook-receiver" in command_line and WEBHOOK_SECRET[len("whsec_") :] not in command_line
        receiver.send_signal(signal.SIGINT)
        stdout, stderr = receiver.communicate(timeout=30)
    finally:
        receiver.kill()
    assert receiver.returncode == 0, stderr
    assert "accepted 1" in stdout


SUBSCRIBER = {"name": "crm", "url": "https://crm.example/hook"}


def test_a_config_file_names_where_its_secrets_are_and_holds_none(tmp_path: Path) -> None:
    secrets = tmp_path / "crm.secrets"
    secrets.write_text(f"{WEBHOOK_SECRET}\n{OTHER_SECRET}\n")
    segments = {"big": {"feature": "spend", ">=": 100}}

    def subscribers(webhooks: dict[str, Any], env: dict[str, str]) -> dict[str, tuple[str, ...]]:
        config = parse_config({"segments": segments, "webhooks": webhooks}, env=env)
        return {s.name: s.secrets for s in config.webhooks.subscribers}

    from_file = {"subscribers": [{**SUBSCRIBER, "secrets_file": str(secrets)}]}
    assert subscribers(from_file, {}) == {"crm": (WEBHOOK_SECRET, OTHER_SECRET)}
    from_env = {"subscribers": [{**SUBSCRIBER, "secrets_env": "CRM_SECRETS"}]}
    assert subscribers(from_env, {"CRM_SECRETS": f"{WEBHOOK_SECRET} {OTHER_SECRET}"}) == {
        "crm": (WEBHOOK_SECRET, OTHER_SECRET)
    }
    inherited = {  # the defaults' source for every subscriber; a subscriber's own replaces it
        "defaults": {"secrets_file": str(secrets)},
        "subscribers": [SUBSCRIBER, {"name": "erp", "url": "https://erp.example/hook", "secrets_env": "ERP"}],
    }
    assert subscribers(inherited, {"ERP": OTHER_SECRET}) == {
        "crm": (WEBHOOK_SECRET, OTHER_SECRET),
        "erp": (OTHER_SECRET,),
    }
    merged = with_command_line(
        parse_webhooks(inherited, env={"ERP": OTHER_SECRET}), ["https://x.example/"], [OTHER_SECRET]
    )
    assert merged.subscribers[-1].secrets == (OTHER_SECRET,)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"secrets_env": "UNSET_VARIABLE"}, "secrets_env: environment variable UNSET_VARIABLE is not set or empty"),
        ({"secrets_file": "{dir}/missing"}, "webhooks.subscribers[0].secrets_file: cannot read {dir}/missing: No such"),
        ({"secrets_file": "{dir}/bad"}, "webhooks.subscribers[0].secrets_file: a webhook secret starts with 'whsec_'"),
        ({"secrets_file": "{dir}/empty"}, "webhooks.subscribers[0].secrets_file: {dir}/empty is empty"),
        ({"secrets_file": ["a", "b"]}, "webhooks.subscribers[0].secrets_file must be a file name"),
        ({"secrets_env": ""}, "webhooks.subscribers[0].secrets_env must be a name"),
        ({"secrets": [WEBHOOK_SECRET], "secrets_file": "{dir}/bad"}, "got secrets and secrets_file"),
        ({}, "secrets is required: secrets_file: FILE or secrets_env: VARIABLE"),
    ],
)  # fmt: skip
def test_bad_secret_sources_in_the_config_are_clear_errors(
    settings: dict[str, Any], message: str, tmp_path: Path
) -> None:
    (tmp_path / "bad").write_text("not-a-whsec-Secret\n")
    (tmp_path / "empty").write_text("\n")
    settings = {k: v.format(dir=tmp_path) if isinstance(v, str) else v for k, v in settings.items()}
    document = {
        "segments": {"big": {"feature": "spend", ">=": 1}},
        "webhooks": {"subscribers": [{**SUBSCRIBER, **settings}]},
    }
    with pytest.raises(ConfigError) as error:
        parse_config(document, env={})
    assert message.format(dir=tmp_path) in str(error.value) and "not-a-whsec" not in str(error.value)
