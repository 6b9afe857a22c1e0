"""A real standalone Flink cluster for the tests, from the distribution inside the apache-flink wheel.

``FLINK_HOME`` is made of the wheel's ``bin``, ``lib``, ``opt`` and ``plugins`` (linked) plus a
writable ``conf`` and a ``log`` folder in a temporary directory; a JobManager and TaskManagers
listen on 127.0.0.1 on free ports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyflink

from tests.conftest import free_port

WHEEL_HOME = Path(pyflink.__file__).parent
# Thread mode loads libpython through pemja once per class loader; a second job on the same
# TaskManager fails on Java 17 ("NoSuchFieldException: loadedLibraryNames") unless flink-python
# (with pemja) sits in lib/ and pemja is loaded parent-first, once per TaskManager.
PYTHON_IN_LIB = {"classloader.parent-first-patterns.additional": "pemja."}


def make_flink_home(root: Path, settings: dict[str, Any]) -> Path:
    """A FLINK_HOME under ``root`` whose ``conf/config.yaml`` holds ``settings`` (flat keys)."""
    home = root / "flink"
    shutil.copytree(WHEEL_HOME / "bin", home / "bin")  # copied: the scripts find FLINK_HOME from their own path
    for name in ("lib", "opt"):  # real folders of linked jars: the scripts `find` in them
        (home / name).mkdir()
        for jar in (WHEEL_HOME / name).iterdir():
            (home / name / jar.name).symlink_to(jar)
    for jar in (WHEEL_HOME / "opt").glob("flink-python-*.jar"):  # see PYTHON_IN_LIB
        (home / "lib" / jar.name).symlink_to(jar)
    (home / "plugins").symlink_to(WHEEL_HOME / "plugins")
    (home / "conf").mkdir()
    for path in (WHEEL_HOME / "conf").iterdir():
        if path.name != "config.yaml":
            (home / "conf" / path.name).write_bytes(path.read_bytes())
    (home / "log").mkdir()
    lines = [f"{key}: {json.dumps(value) if isinstance(value, str) else value}" for key, value in settings.items()]
    (home / "conf" / "config.yaml").write_text("\n".join(lines) + "\n")
    return home


@dataclass
class FlinkCluster:
    home: Path
    rest_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def env(self) -> dict[str, str]:
        """The environment the cluster's processes and ``flink run`` need (thread mode imports this venv)."""
        path = os.pathsep.join([str(Path(__file__).resolve().parents[1]), *site.getsitepackages()])
        return {**os.environ, "FLINK_HOME": str(self.home), "PYTHONPATH": path}

    def daemon(self, script: str, *args: str) -> None:
        subprocess.run([str(self.home / "bin" / script), *args], env=self.env(), check=True, capture_output=True)

    def rest(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def jobs(self) -> list[dict[str, Any]]:
        return self.rest("/jobs/overview")["jobs"]

    def cancel_unfinished(self) -> None:
        """Cancel every job still running (so one test's stuck job cannot slow the next one down)."""
        for job in self.jobs():
            if job["state"] not in ("FINISHED", "FAILED", "CANCELED"):
                request = urllib.request.Request(f"{self.url}/jobs/{job['jid']}?mode=cancel", method="PATCH")
                urllib.request.urlopen(request, timeout=10).close()

    def diagnostics(self) -> str:
        """What to read when a test on the cluster fails: the jobs, their exceptions, the logs' errors."""
        parts = []
        try:
            for job in self.jobs():
                parts.append(f"job {job['jid']} {job['state']} tasks {job.get('tasks')}")
                history = self.rest(f"/jobs/{job['jid']}/exceptions").get("exceptionHistory", {}).get("entries", [])
                parts += [entry.get("stacktrace", "")[:2000] for entry in history[-2:]]
        except OSError as error:
            parts.append(f"REST API not answering: {error}")
        for log in sorted((self.home / "log").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()
            errors = [line for line in lines if "ERROR" in line or "Exception" in line]
            parts.append(f"--- {log.name}: {len(lines)} lines, last errors:\n" + "\n".join(errors[-15:]))
        return "\n".join(parts)

    def taskmanager_pids(self) -> list[int]:
        pid_file = self.home / "pids" / f"flink-{os.environ.get('USER', '')}-taskexecutor.pid"
        if not pid_file.exists():
            return []
        return [int(line) for line in pid_file.read_text().split() if _alive(int(line))]

    def wait_for_taskmanagers(self, n: int, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if len(self.rest("/taskmanagers")["taskmanagers"]) >= n:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{n} TaskManagers did not register; logs in {self.home / 'log'}")

    def stop(self) -> None:
        for script in ("taskmanager.sh", "jobmanager.sh"):
            subprocess.run([str(self.home / "bin" / script), "stop-all"], env=self.env(), capture_output=True)
        for pid_file in (self.home / "pids").glob("*.pid"):
            for line in pid_file.read_text().split():
                if _alive(int(line)):
                    os.kill(int(line), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def start_cluster(root: Path, taskmanagers: int = 2, slots: int = 2) -> FlinkCluster:
    """A JobManager and ``taskmanagers`` TaskManagers on 127.0.0.1 (call ``stop`` when done)."""
    rest_port = free_port()
    home = make_flink_home(
        root,
        {
            "env.pid.dir": str(root / "flink" / "pids"),
            "env.log.dir": str(root / "flink" / "log"),
            "io.tmp.dirs": str(root),
            "web.tmpdir": str(root),
            "env.java.opts.all": _wheel_java_opts(),
            "jobmanager.rpc.address": "127.0.0.1",
            "jobmanager.rpc.port": free_port(),
            "jobmanager.bind-host": "127.0.0.1",
            "jobmanager.memory.process.size": "1024m",
            "rest.address": "127.0.0.1",
            "rest.bind-address": "127.0.0.1",
            "rest.port": rest_port,
            "blob.server.port": free_port(),
            "taskmanager.host": "127.0.0.1",
            "taskmanager.bind-host": "127.0.0.1",
            "taskmanager.numberOfTaskSlots": slots,
            "taskmanager.memory.process.size": "1280m",
            "taskmanager.memory.managed.size": "64m",
            "taskmanager.load-balance.mode": "slots",  # the job spreads over both TaskManagers
            "heartbeat.interval": 1000,
            "heartbeat.timeout": 5000,
            **PYTHON_IN_LIB,
            "python.executable": sys.executable,
            "python.client.executable": sys.executable,
        },
    )
    (home / "pids").mkdir()
    cluster = FlinkCluster(home, rest_port)
    cluster.daemon("jobmanager.sh", "start")
    for _ in range(taskmanagers):
        cluster.daemon("taskmanager.sh", "start")
    cluster.wait_for_taskmanagers(taskmanagers)
    return cluster


def _wheel_java_opts() -> str:
    """The JVM options the wheel's own config.yaml sets (module opens that Flink needs on Java 17)."""
    text = (WHEEL_HOME / "conf" / "config.yaml").read_text()
    return next(line.split("all:", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("all:"))
