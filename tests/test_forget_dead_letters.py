"""Forget and broken dead letters (issue 21): a dead letter carrying any identifier of the forgotten
customer leaves Redis and the output files alike, however its payload is broken (not JSON, cut
short, padded with Unicode whitespace, escaped, the identifier nested, an address in clear in
another case); nobody else's dead letter goes (``u-erase-70``, ``U-Erase-7``, ``a-erase-7-b`` stay);
the receipt counts what went from each place.

The traces are looked for by a finder of their own (:func:`traced`: Python's ``unicode_escape``
codec, word boundaries), not by :class:`pipelines.forget.Traces`.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.cli import main
from pipelines.forget import SinkForgets, Traces, _unescape
from pipelines.redis_store import RedisSink
from pipelines.sources import decode_json
from tests.conftest import read_jsonl
from tests.redis_scan import file_items, is_forget_exit, redis_items
from tests.test_forget import DEFAULT_CONFIG
from tests.test_parity import run as run_engine
from transforms.cleaning import Cleaner, CleaningConfig
from transforms.dead_letters import DeadLetter, Reason, Rejection
from transforms.identifiers import hash_email, normalize_identifier
from transforms.privacy import Forget

SALT = "forget-dead-letters-salt"
HOUR = 3_600_000
T0 = 1_748_736_000_000  # 2025-06-01T00:00:00Z
EMAIL = "Erase.Seven@Example.com"
MAX_RECORD_BYTES = 1024
NEEDLES = ("u-erase-7", "a-erase-7", "d-erase-7", hash_email(EMAIL, SALT))
_NEEDLE = re.compile(rf"(?<![\w.\-])(?:{'|'.join(map(re.escape, NEEDLES))})(?![\w.\-])")
SPACES = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())  # what str.strip() (cleaning) trims


def _at(hours: float) -> int:
    return T0 + int(hours * HOUR)


def _line(record: dict[str, Any], ascii_only: bool = False) -> str:
    return json.dumps(record, ensure_ascii=ascii_only)


def _oversized(record: dict[str, Any]) -> str:
    """A line longer than ``MAX_RECORD_BYTES``: its dead letter keeps the first 256 bytes, escapes and all."""
    return _line({**record, "blob": "x" * 2 * MAX_RECORD_BYTES}, ascii_only=True)


def _bad_currency(event_id: str, user: str) -> str:
    """A purchase cleaning rejects (currency), its user id as given."""
    record = {"event_id": event_id, "type": "purchase", "ts": _at(2), "user_id": user, "order_id": "o", "amount": 5}
    return _line({**record, "currency": "EURO"})


# Each shape: the lines of the customer (dead letters carrying one of its identifiers) and decoys
# (dead letters of others, with ids the customer's are a part of, or that differ in case only).
SHAPES: dict[str, tuple[list[str], list[str]]] = {
    "not_json": (
        ['{"event_id": "b1", "type": "page_view", "ts": 1748739600000, "user_id": "u-erase-7", "price": '],
        ['{"event_id": "b2", "type": "page_view", "ts": 1748739600000, "user_id": "u-erase-70", "price": '],
    ),
    "free_text": (
        ["legacy tracker: user_id=\u00a0u-erase-7\u2003&step=3 (no JSON)"],
        ["legacy tracker: user_id=U-Erase-7&step=3 (no JSON)", "legacy tracker: user_id=u-erase-7.5&step=3"],
    ),
    "oversized_escaped": (
        [_oversized({"event_id": "b3", "type": "page_view", "ts": _at(1), "anonymous_id": "\u00a0a-erase-7\u2003"})],
        [_oversized({"event_id": "b4", "type": "page_view", "ts": _at(1), "anonymous_id": "a-erase-7-b"})],
    ),
    "padded": ([_bad_currency("b5", "\u3000u-erase-7\u00a0")], [_bad_currency("b6", "\u3000u-erase-70\u00a0")]),
    "nested": (
        [_line({"event_id": "b7", "type": "shake", "ts": _at(2), "properties": {"ref": {"devices": ["d-erase-7"]}}})],
        [_line({"event_id": "b8", "type": "shake", "ts": _at(2), "properties": {"ref": {"devices": ["d-erase-7x"]}}})],
    ),
    "email_in_clear": (
        [
            "bounce from \u2002ERASE.SEVEN@example.COM\u2002 (not JSON: cleaning hashes the address)",
            _line({"event_id": "b9", "type": "shake", "ts": _at(2), "contact": {"mail": " erase.SEVEN@Example.com "}}),
        ],
        [
            "bounce from erase.seven@example.co (not JSON)",
            _line({"event_id": "b10", "type": "shake", "ts": _at(2), "contact": {"mail": "erase.seven@example.co"}}),
        ],
    ),
}


def _forms(text: str) -> Iterator[str]:
    """``text`` and up to four levels of its escapes undone (Python's codec, not the job's)."""
    yield text
    for _ in range(4):
        text = text.encode("latin-1", "backslashreplace").decode("unicode_escape", "replace")
        yield text


def traced(text: str) -> bool:
    """Whether ``text`` holds an identifier of the customer in any form: an id or the email hash as a
    word (case kept: cleaning keeps the case of ids), the address in clear in any case."""
    return any(_NEEDLE.search(form) or EMAIL.lower() in form.lower() for form in _forms(text))


def leftovers(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(where, text) for where, text in items if traced(text) and not is_forget_exit(text)]


def _others(start_h: float, n: int) -> list[dict[str, Any]]:
    return [
        {"event_id": f"o{start_h}-{i}", "type": "purchase", "ts": _at(start_h + i), "user_id": f"other-{i % 3}",
         "order_id": f"oo-{start_h}-{i}", "amount": 120, "currency": "EUR"}
        for i in range(n)
    ]  # fmt: skip


def stream() -> tuple[list[str], dict[str, str]]:
    """The input lines, and the tag (``customer:SHAPE`` or ``decoy:SHAPE``) of each broken line by position.

    The customer: a device, a login linking it to an anonymous id, a user id and an email (identity
    stitching links them all), a purchase; then broken lines of every shape, some carrying only an
    identifier the stitching linked (the device id)."""
    valid = [
        *_others(0, 4),
        {"event_id": "x1", "type": "page_view", "ts": _at(4), "anonymous_id": "a-erase-7", "device_id": "d-erase-7"},
        {"event_id": "x2", "type": "login", "ts": _at(5), "anonymous_id": "a-erase-7", "user_id": "u-erase-7",
         "email": EMAIL},
        {"event_id": "x3", "type": "purchase", "ts": _at(6), "user_id": "u-erase-7", "order_id": "o-x3",
         "amount": 600, "currency": "EUR"},
    ]  # fmt: skip
    lines = [_line(record) for record in valid]
    tags: dict[str, str] = {}
    for shape, (theirs, decoys) in SHAPES.items():
        for tag, group in (("customer", theirs), ("decoy", decoys)):
            for text in group:
                lines.append(text)
                tags[str(len(lines))] = f"{tag}:{shape}"
    lines += [_line(record) for record in _others(7, 4)]
    return lines, tags


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    cleaning = f"cleaning:\n  email_salt: {SALT}\n  max_record_bytes: {MAX_RECORD_BYTES}\n"
    path.write_text(DEFAULT_CONFIG.read_text() + f"\n{cleaning}identity:\n  stitch: true\n")
    return path


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


OUTPUTS = ("changes.jsonl", "profiles.jsonl", "dead_letters.jsonl")


def _letters_in_redis(client: redis.Redis, prefix: str) -> dict[bytes, dict[str, Any]]:
    """Entry id -> dead letter of the dead-letter stream."""
    return {entry: json.loads(fields[b"dead_letter"]) for entry, fields in client.xrange(f"{prefix}:dead_letters")}


def _snapshot(client: redis.Redis, prefix: str, out: Path) -> dict[str, Any]:
    """What the job left: its dead letters (Redis and file) by position, less their source (the file
    read), and every output file's lines."""
    lines = {name: (out / name).read_text(encoding="utf-8").splitlines() for name in OUTPUTS}
    letters = {
        "redis": _letters_in_redis(client, prefix).values(),
        "file": [json.loads(line) for line in lines["dead_letters.jsonl"]],
    }
    return {
        **{where: {d["position"]: {**d, "source": None} for d in found} for where, found in letters.items()},
        "lines": lines,
    }


def _assert_produced(before: dict[str, Any], tags: dict[str, str], client: redis.Redis, prefix: str) -> None:
    """Every broken line is a dead letter in Redis and in the file, and the finder sees the customer's
    (so what is checked after the forget can fail)."""
    assert set(before["redis"]) == set(before["file"]) == set(tags)
    raw = {
        json.loads(fields[b"dead_letter"])["position"]: fields for _, fields in client.xrange(f"{prefix}:dead_letters")
    }
    for position, tag in tags.items():
        stored = json.dumps({k.decode(): v.decode() for k, v in raw[position].items()})
        line = json.dumps(before["file"][position], ensure_ascii=False)
        assert traced(stored) == traced(line) == tag.startswith("customer:"), (tag, stored)


def _assert_erased(
    before: dict[str, Any], after: dict[str, Any], tags: dict[str, str], removed: dict[str, int]
) -> None:
    """The customer's dead letters left Redis and the file, the others' are there as they were, and the
    receipt's ``dead_letters`` is how many went from Redis (as many as from the file)."""
    kept = {position for position, tag in tags.items() if tag.startswith("decoy:")}
    assert set(after["redis"]) == set(after["file"]) == kept
    assert all(after["redis"][p] == before["redis"][p] and after["file"][p] == before["file"][p] for p in kept)
    assert removed["dead_letters"] == len(before["redis"]) - len(after["redis"]) == len(tags) - len(kept)
    assert len(before["file"]) - len(after["file"]) == removed["dead_letters"]


@pytest.mark.parametrize("engine", ["core", "beam", "flink"])
def test_a_forget_event_removes_the_customers_broken_dead_letters_from_redis_and_files(
    engine: str, tmp_path: Path, redis_url: str
) -> None:
    """The same stream twice, without and with a forget event at its end: what the forget removed
    is the difference, and the receipt says so, on every engine."""
    client = redis.Redis.from_url(redis_url)
    lines, tags = stream()
    config = ["--config", str(_config(tmp_path))]
    run_engine(engine, _write(tmp_path / "base" / "events.jsonl", lines), tmp_path / "base", redis_url, config)
    before = _snapshot(client, engine, tmp_path / "base")
    _assert_produced(before, tags, client, engine)
    assert leftovers(redis_items(client)) and leftovers(file_items(tmp_path / "base" / n for n in OUTPUTS))

    client.flushall()
    out, receipts = tmp_path / "forget", tmp_path / "forget" / "receipts.jsonl"
    forget = {"event_id": "fx", "type": "forget", "ts": _at(20), "email": EMAIL}
    source = _write(out / "events.jsonl", [*lines, _line(forget)])
    summary = run_engine(engine, source, out, redis_url, [*config, "--receipts-out", str(receipts)])
    assert summary["forgets"] == 1
    after = _snapshot(client, engine, out)

    files = [*(out / name for name in OUTPUTS), out / "summary.json", receipts]
    assert leftovers(redis_items(client)) == [] and leftovers(file_items(files)) == []
    (receipt,) = read_jsonl(receipts)
    ((_, fields),) = client.xrange(f"{engine}:receipts")
    assert json.loads(fields[b"receipt"]) == receipt
    _assert_erased(before, after, tags, receipt["removed"])
    # Every line the forget took from the files: those of the base run missing, but the forget exits it
    # added, and the customer's final profile (a forgotten customer has none: never written, not removed).
    exits = [c for c in read_jsonl(out / "changes.jsonl") if c["reason"] == "forget"]
    assert exits and len(exits) == receipt["removed"]["segments"]
    final = [p for p in read_jsonl(tmp_path / "base" / "profiles.jsonl") if p["customer_id"] == "user:u-erase-7"]
    went = sum(len(before["lines"][name]) - len(after["lines"][name]) for name in OUTPUTS) + len(exits) - len(final)
    assert receipt["removed"]["output_lines"] == went
    assert {p["customer_id"] for p in read_jsonl(out / "profiles.jsonl")} == {f"user:other-{n}" for n in range(3)}


def test_segstream_forget_removes_the_customers_broken_dead_letters_from_redis_and_files(
    tmp_path: Path, redis_url: str
) -> None:
    """``segstream forget`` after the run, the email given in clear in another case and padded: the
    saved identity graph finds every identifier linked to it, and the receipt counts what went."""
    client = redis.Redis.from_url(redis_url)
    lines, tags = stream()
    out, state = tmp_path / "out", ["--state-dir", str(tmp_path / "state"), "--redis-url", redis_url]
    config = ["--config", str(_config(tmp_path))]
    run_engine("core", _write(tmp_path / "events.jsonl", lines), out, redis_url, [*config, "--resume", *state])
    before = _snapshot(client, "core", out)
    _assert_produced(before, tags, client, "core")

    receipts = tmp_path / "receipts.jsonl"
    scrub = [arg for name in OUTPUTS for arg in ("--scrub", str(out / name))]
    result = CliRunner().invoke(
        main,
        ["forget", "--identifier", f"email:\u00a0{EMAIL.upper()} ", "--redis-prefix", "core", *config, *state,
         *scrub, "--receipts-out", str(receipts)],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    after = _snapshot(client, "core", out)

    assert leftovers(redis_items(client)) == [] and leftovers(file_items([*(out / n for n in OUTPUTS), receipts])) == []
    (receipt,) = read_jsonl(receipts)
    _assert_erased(before, after, tags, receipt["removed"])
    went = sum(len(before["lines"][name]) - len(after["lines"][name]) for name in OUTPUTS)
    assert receipt["removed"]["output_lines"] == went
    # The other lines are kept byte for byte, in order.
    for name in OUTPUTS:
        assert [line for line in before["lines"][name] if line in after["lines"][name]] == after["lines"][name]


# -- the rule, over random ids --------------------------------------------------------------------------------

CLEANER = Cleaner(CleaningConfig(email_salt=SALT, max_record_bytes=MAX_RECORD_BYTES))
IDS = st.from_regex(r"u[0-9][a-z0-9._\-é]{0,14}", fullmatch=True)  # "u" + a digit: no other token of a letter
PADDING = st.text(alphabet=SPACES, max_size=3)
TAIL = st.sampled_from("0a9z._-é")


def _letters(value: str, ascii_only: bool) -> list[DeadLetter]:
    """The dead letters of broken records carrying ``value`` as a user id: a JSON record rejected by
    cleaning (no event id), the same nested, a line that is not JSON, an oversized line."""
    record = {"type": "page_view", "user_id": value}
    nested = {"type": "page_view", "anonymous_id": "a", "properties": {"refs": [{"user": value}]}}
    raw = [
        _line(record, ascii_only)[:-1].encode(),  # the closing brace cut: not JSON
        _line({**record, "blob": "x" * MAX_RECORD_BYTES}, ascii_only).encode(),  # oversized
    ]
    letters = [CLEANER.clean(r, "s", "1", T0) for r in (record, nested)]
    decoded = [decode_json(data, "s", "1", MAX_RECORD_BYTES) for data in raw]
    letters += [CLEANER.dead_letter(r.payload, r.error, "s", "1") for r in decoded if r.error is not None]
    assert len(letters) == 4 and all(isinstance(letter, DeadLetter) for letter in letters)
    return letters  # type: ignore[return-value]


def _stored(letter: DeadLetter) -> list[str]:
    """A dead letter as the Redis stream holds it and as the file holds it."""
    return [json.dumps(letter.to_dict()), json.dumps(letter.to_dict(), ensure_ascii=False, separators=(",", ":"))]


@settings(max_examples=150, deadline=None)
@given(IDS, PADDING, PADDING, TAIL, st.booleans())
def test_a_padded_id_is_the_customers_in_every_broken_shape_and_a_longer_id_is_not(
    user: str, left: str, right: str, tail: str, ascii_only: bool
) -> None:
    """Whatever Unicode whitespace pads an id (the same customer to cleaning), its dead letters are the
    customer's, in Redis and in the file alike; an id it is a part of, or one in another case, is not."""
    assert normalize_identifier(left + user + right) == user  # cleaning reads the padded id as the customer's
    carries = Traces([f"user_id:{user}"], SALT)
    for letter in _letters(left + user + right, ascii_only):
        assert all(carries(text) for text in _stored(letter)), letter
    for other in (user + tail, tail + user, user.upper()):
        for letter in _letters(left + other + right, ascii_only):
            assert not any(carries(text) for text in _stored(letter)), (other, letter)


@settings(max_examples=100, deadline=None)
@given(st.from_regex(r"[a-z][a-z0-9.]{0,10}@[a-z]{1,8}\.(com|org|co)", fullmatch=True), PADDING, st.booleans())
def test_an_address_in_clear_in_any_case_is_found_by_its_hash(address: str, pad: str, upper: bool) -> None:
    """An email address left in clear in a dead letter (nested in a rejected record, in a line that is
    not JSON), in any case and padding, is the customer whose hashed email it hashes to; another
    address is not."""
    carries = Traces([f"email:{hash_email(address, SALT)}"], SALT)
    shown = pad + (address.upper() if upper else address) + pad
    record = {"event_id": "e", "type": "shake", "contact": {"mail": shown}}
    malformed = Rejection(Reason.MALFORMED, None, "not valid JSON")
    letters = [CLEANER.clean(record, "s", "1", T0), CLEANER.dead_letter(f"mail {shown} bounced", malformed, "s", "1")]
    assert all(isinstance(letter, DeadLetter) and all(map(carries, _stored(letter))) for letter in letters)
    assert not carries(json.dumps({"payload": f"mail {address}x bounced"}))


@settings(max_examples=300, deadline=None)
@given(st.text(), st.booleans())
def test_one_level_of_escapes_undone_is_what_json_decodes(text: str, ascii_only: bool) -> None:
    """The matcher's unescaping (string replacements, for speed) decodes a JSON string as json does,
    surrogate pairs of ``ensure_ascii`` joined."""
    assert _unescape(json.dumps(text, ensure_ascii=ascii_only)[1:-1]) == text


# -- Beam and Flink: dead letters that reach Redis after the erase ---------------------------------------------


def test_a_dead_letter_reaching_redis_after_the_erase_goes_at_the_finish_as_its_line_does(
    tmp_path: Path, redis_url: str
) -> None:
    """Beam and Flink write dead letters from other operators than the one that erases: a letter of the
    customer written to Redis after the erase goes at the finish (from where the erase stopped reading,
    also after a restore from a checkpoint), as its line goes from the file; the receipt counts each."""
    client = redis.Redis.from_url(redis_url)
    sink, path, receipts = RedisSink(client, "job"), tmp_path / "dead_letters.jsonl", tmp_path / "receipts.jsonl"
    malformed = Rejection(Reason.MALFORMED, None, "not valid JSON")

    def write(*texts: tuple[str, str]) -> None:
        letters = [CLEANER.dead_letter(text, malformed, "s", position) for position, text in texts]
        sink.write([], [], letters)
        with path.open("a", encoding="utf-8") as out:
            out.writelines(json.dumps(letter.to_dict(), ensure_ascii=False) + "\n" for letter in letters)

    def positions() -> tuple[list[str], list[str]]:  # a torn line (a crash while writing) by its head
        lines = path.read_text(encoding="utf-8").splitlines()
        in_file = [json.loads(line)["position"] if line.endswith("}") else line[:8] for line in lines]
        return sorted(letter["position"] for letter in _letters_in_redis(client, "job").values()), in_file

    write(("1", 'user_id: "\u00a0u-erase-7'), ("2", 'user_id: "u-erase-70'))
    forgets = SinkForgets(client, "job", SALT, [path], receipts)
    forgets.forget(Forget("user:u-erase-7", "fx", T0, (("user_id", "u-erase-7"),), 0))
    assert positions() == (["2"], ["1", "2"])  # Redis at once, the file at the finish
    write(("3", "{'user_id': 'u-erase-7'\u2003"), ("4", "user_id=U-Erase-7"))
    with path.open("a", encoding="utf-8") as out:
        out.write(
            '{"reason": "malformed", "payload": "user_id: u-erase-7\n{"reason": "malformed", "payload": "u-erase-70\n'
        )
    restored = pickle.loads(pickle.dumps(forgets.pending))  # Flink's checkpointed state
    (receipt,) = SinkForgets(client, "job", SALT, [path], receipts).finish(restored)
    assert positions() == (["2", "4"], ["2", "4", '{"reason'])
    assert receipt.removed["dead_letters"] == 2 and receipt.removed["output_lines"] == 3
    assert read_jsonl(receipts) == [receipt.to_dict()]
