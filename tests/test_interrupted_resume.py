"""A ``--resume`` run stopped any way leaves the saved state of the last run that ended well, and the
same input run again gives exactly the changes of an uninterrupted run (core and Beam).

Each case runs the first half of a sample stream, then the second half as a child process that is
stopped (SIGKILL at a random point of its run, SIGINT, or a full disk: a file size limit), then the
second half again to the end. The rerun's change ids and profiles must equal those of the same two
halves run without a stop.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipelines.customer_store import STATE_FILE
from tests.conftest import NOW_MS, read_jsonl, without_scores
from tests.test_end_to_end import outputs
from transforms.sample_stream import sample_lines

SEED = int(os.environ.get("SEGSTREAM_TEST_SEED", random.randrange(2**32)))


def halves(tmp_path: Path) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    lines = list(sample_lines(customers=120))
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    second.write_text("\n".join(lines[len(lines) // 2 :]) + "\n")
    return first, second


def command(engine: str, source: Path, state: Path, out: Path, redis_url: str) -> list[str]:
    return [
        sys.executable, "-m", "pipelines.cli", "run", "--now", str(NOW_MS), "--no-progress", "--engine", engine,
        "--source", str(source), "--resume", "--state-dir", str(state), "--redis-url", redis_url, *outputs(out),
    ]  # fmt: skip


def run(args: list[str], preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, preexec_fn=preexec)


def changes_and_profiles(out: Path) -> tuple[list[str], list[dict[str, Any]]]:
    ids = sorted(change["change_id"] for change in read_jsonl(out / "changes.jsonl"))
    profiles = sorted(without_scores(read_jsonl(out / "profiles.jsonl")), key=lambda p: p["customer_id"])
    return ids, profiles


def baseline(engine: str, tmp_path: Path, redis_url: str) -> tuple[float, tuple[list[str], list[dict[str, Any]]]]:
    """The second half's changes and profiles after an uninterrupted first half; how long the second
    run worked on its copy of the state (from the copy's start to the run's end)."""
    first, second = halves(tmp_path)
    state = tmp_path / "state"
    assert run(command(engine, first, state, tmp_path / "one", redis_url)).returncode == 0
    child = subprocess.Popen(command(engine, second, state, tmp_path / "two", redis_url), stderr=subprocess.PIPE)
    started = working(child, state)
    _, stderr = child.communicate(timeout=600)
    assert child.returncode == 0, stderr
    return time.monotonic() - started, changes_and_profiles(tmp_path / "two")


def working(child: subprocess.Popen, state: Path) -> float:
    """When the child started to work on its copy of the state (monotonic clock)."""
    work = state / (STATE_FILE + ".run")
    deadline = time.monotonic() + 120
    while not work.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    return time.monotonic()


def stopped_then_rerun(
    engine: str, tmp_path: Path, redis_url: str, stop: Callable[[subprocess.Popen[str], Path], None]
) -> tuple[list[str], list[dict[str, Any]]]:
    first, second = halves(tmp_path)
    state = tmp_path / "state"
    assert run(command(engine, first, state, tmp_path / "one", redis_url)).returncode == 0
    saved = (state / STATE_FILE).read_bytes()
    child = subprocess.Popen(
        command(engine, second, state, tmp_path / "stopped", redis_url),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stop(child, state)
    child.communicate(timeout=600)
    finished = child.returncode == 0 or (state / STATE_FILE).read_bytes() != saved
    rerun = run(command(engine, second, state, tmp_path / "rerun", redis_url))
    if finished:
        # It saved its state (its last step) before the stop: its outputs are whole, and the same
        # input again is refused rather than counted twice.
        assert rerun.returncode == 2 and "was already applied" in rerun.stderr, rerun.stderr
        return changes_and_profiles(tmp_path / "stopped")
    assert rerun.returncode == 0, rerun.stderr
    return changes_and_profiles(tmp_path / "rerun")


def kill_at(delay: float, signum: int) -> Callable[[subprocess.Popen[str], Path], None]:
    """Once the child works on its copy of the state, wait ``delay`` seconds and send ``signum``."""

    def stop(child: subprocess.Popen[str], state: Path) -> None:
        working(child, state)
        time.sleep(delay)
        if child.poll() is None:
            child.send_signal(signum)

    return stop


@pytest.mark.parametrize("engine", ["core", "beam"])
def test_a_resume_run_killed_at_random_points_reruns_to_the_uninterrupted_changes(
    engine: str, tmp_path: Path, redis_url: str
) -> None:
    seconds, expected = baseline(engine, tmp_path / "baseline", redis_url)
    rng = random.Random(SEED)
    delays = sorted(rng.uniform(0, seconds * 0.9) for _ in range(3))
    for number, delay in enumerate(delays):
        got = stopped_then_rerun(engine, tmp_path / f"kill{number}", redis_url, kill_at(delay, signal.SIGKILL))
        assert got == expected, f"SIGKILL {delay:.2f} of {seconds:.2f} s into the run (seed {SEED})"


@pytest.mark.parametrize("engine", ["core", "beam"])
def test_a_resume_run_stopped_by_ctrl_c_reruns_to_the_uninterrupted_changes(
    engine: str, tmp_path: Path, redis_url: str
) -> None:
    seconds, expected = baseline(engine, tmp_path / "baseline", redis_url)
    assert stopped_then_rerun(engine, tmp_path / "int", redis_url, kill_at(seconds / 3, signal.SIGINT)) == expected


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # a write past it fails with EFBIG, as on a full disk (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def newcomers(path: Path) -> Path:
    """The same lines as ``path`` from other customers (every identifier renamed)."""
    renamed = path.with_name("newcomers.jsonl")
    text = path.read_text()
    for old, new in (("anon-", "anon-n"), ("user-", "user-n"), ("User", "Usern"), ("ev-", "ev-n"), ("s-0", "sn-0")):
        text = text.replace(old, new)
    renamed.write_text(text)
    return renamed


@pytest.mark.parametrize("engine", ["core", "beam"])
def test_a_resume_run_on_a_full_disk_fails_and_keeps_the_saved_state(
    engine: str, tmp_path: Path, redis_url: str
) -> None:
    first, second = halves(tmp_path)
    later = newcomers(second)  # new customers: the saved state has to grow
    for name, limit in (("full", True), ("uninterrupted", False)):
        state = tmp_path / name / "state"
        assert run(command(engine, first, state, tmp_path / name / "one", redis_url)).returncode == 0
        saved = (state / STATE_FILE).read_bytes()
        if limit:  # the copy of the state fits; the customers the input adds to it do not
            full = run(command(engine, later, state, tmp_path / name / "full", redis_url), _file_size_limit(len(saved)))
            assert full.returncode == 1 and (state / STATE_FILE).read_bytes() == saved
            assert not (state / (STATE_FILE + ".run")).exists()
            last = full.stderr.strip().splitlines()[-1]
            assert last.startswith("Error: the run stopped: ") and "as the last run that ended well" in last
            assert engine == "beam" or "Traceback" not in full.stderr  # Beam's runner logs its worker's
        done = run(command(engine, later, state, tmp_path / name / "two", redis_url))
        assert done.returncode == 0, done.stderr
    assert changes_and_profiles(tmp_path / "full" / "two") == changes_and_profiles(tmp_path / "uninterrupted" / "two")


def test_an_input_already_applied_to_the_saved_state_is_refused(tmp_path: Path, redis_url: str) -> None:
    first, second = halves(tmp_path)
    state = tmp_path / "state"
    assert run(command("core", first, state, tmp_path / "one", redis_url)).returncode == 0
    saved = (state / STATE_FILE).read_bytes()
    again = run(command("core", first, state, tmp_path / "again", redis_url))
    assert again.returncode == 2 and "was already applied" in again.stderr.strip().splitlines()[-1]
    assert (state / STATE_FILE).read_bytes() == saved
    assert run(command("core", second, state, tmp_path / "two", redis_url)).returncode == 0


def test_a_damaged_state_file_is_refused_with_one_line(tmp_path: Path, redis_url: str) -> None:
    first, _ = halves(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    failed = run(command("core", first, state, tmp_path / "out", redis_url))
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr and f"{STATE_FILE} is" in failed.stderr.strip().splitlines()[-1]
