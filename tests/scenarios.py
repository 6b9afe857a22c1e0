"""Input streams shared by the engine tests: sample streams with disorder and late events."""

from __future__ import annotations

import json
import random

from transforms.sample_stream import sample_lines

DAY_MS = 86_400_000


def disordered_lines(customers: int, seed: int, shuffle_within_ms: int, late: int = 5) -> list[str]:
    """A sample stream whose events move out of order by less than ``shuffle_within_ms``, plus ``late``
    repeats of mid-stream events under new ids, 3 days behind their customer's clock."""
    rng = random.Random(seed)
    keyed = []
    for index, line in enumerate(sample_lines(customers, seed=seed)):
        try:
            ts = json.loads(line)["ts"]
        except (ValueError, KeyError, TypeError):
            ts = None
        # dirty records (no usable ts) stay at their place in the stream
        order = ts + rng.randrange(shuffle_within_ms) if isinstance(ts, int) else None
        keyed.append((order, index, line))
    last = 0
    ordered = []
    for order, index, line in keyed:
        last = order if order is not None else last
        ordered.append((last, index, line))
    lines = [line for *_, line in sorted(ordered)]
    for n in range(late):
        record = json.loads(lines[len(lines) // 2 + n * 7])
        if isinstance(record, dict) and isinstance(record.get("ts"), int):
            record["event_id"] = f"late-{n}"
            record["ts"] -= 3 * DAY_MS
            lines.insert(len(lines) * 3 // 4, json.dumps(record))
    return lines


def with_rejected_timestamps(customers: int, seed: int) -> list[str]:
    """A sample stream with records that cleaning rejects but whose ``ts`` lies weeks ahead of the
    stream (an unknown event type, a timestamp too far in the future): no watermark may move to them."""
    lines = list(sample_lines(customers, seed=seed))
    records = [_record(line) or {} for line in lines]
    ahead = max(r["ts"] for r in records if isinstance(r.get("ts"), int)) + 40 * DAY_MS
    rejected = [
        {"event_id": "bad-type", "type": "teleport", "ts": ahead, "user_id": "u-bad"},
        {"event_id": "bad-future", "type": "page_view", "ts": 4_102_444_800_000, "user_id": "u-bad"},  # 2100
    ]
    for n, record in enumerate(rejected):
        lines.insert(len(lines) * (n + 1) // 3, json.dumps(record))
    return lines


def with_consent(customers: int, seed: int) -> list[str]:
    """A sample stream in which some customers revoke consent.personalization mid-stream (one of them
    granting it again later) and one never grants it."""
    lines = list(sample_lines(customers, seed=seed))
    records = [_record(line) for line in lines]
    users = sorted({r["user_id"] for r in records if isinstance(r, dict) and isinstance(r.get("user_id"), str)})
    revoked, regranted, never = users[:3], users[1], users[3]
    ofs = [r.get("user_id") if r is not None else None for r in records]
    seen: dict[str, int] = {}
    for record, user in zip(records, ofs, strict=True):
        if record is None or (user not in revoked and user != never):
            continue
        seen[user] = seen.get(user, 0) + 1
        total = ofs.count(user)
        if user == never or seen[user] == total * 2 // 3:  # late enough to be in segments
            record["consent"] = {"personalization": False}
        elif user == regranted and seen[user] == total * 5 // 6:
            record["consent"] = {"personalization": True}
    return [json.dumps(r) if r is not None else line for r, line in zip(records, lines, strict=True)]


def _record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
