"""The PyFlink execution environment: Python thread mode, checkpoints, state backend, parallelism.

Defaults (:data:`DEFAULTS`) can be overridden with any Flink configuration key
(``segstream run --engine flink --flink-conf KEY=VALUE``, or ``-D KEY=VALUE`` on ``flink run``).
Locally (a mini-cluster in a JVM that PyFlink starts) the embedded Python interpreter of thread
mode must see this virtual environment and this package: ``python.executable`` and
``PYTHONPATH`` point at them. Under ``flink run`` (a cluster) ``-pyexec`` and ``-pyfs`` do that.
"""

from __future__ import annotations

import os
import site
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyflink.datastream import StreamExecutionEnvironment

DEFAULTS: dict[str, str] = {
    "python.execution-mode": "thread",  # 'process' runs Python in separate worker processes (slower)
    "parallelism.default": "1",
    "execution.checkpointing.interval": "10s",
    # Barriers overtake the records in flight (a fast file source fills every buffer), so a
    # checkpoint completes within seconds under backpressure; the records in flight are part of it.
    "execution.checkpointing.unaligned.enabled": "true",
    "state.backend.type": "hashmap",  # or 'rocksdb' for state larger than memory
    "restart-strategy.type": "fixed-delay",
    "restart-strategy.fixed-delay.attempts": "3",
    "restart-strategy.fixed-delay.delay": "2s",
    "pipeline.auto-watermark-interval": "200ms",
}

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def parse_conf(pairs: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings to a dict; a ValueError names a malformed one."""
    conf = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--flink-conf {pair!r}: expected KEY=VALUE")
        conf[key.strip()] = value.strip()
    return conf


def under_flink_cli() -> bool:
    """Whether this process was started by ``flink run`` (which hands it a gateway to the cluster)."""
    return "PYFLINK_GATEWAY_PORT" in os.environ


def local_python_settings() -> dict[str, str]:
    """What thread mode's embedded interpreter needs to import this venv's packages and this project."""
    path = os.pathsep.join([str(PROJECT_ROOT), *site.getsitepackages()])
    os.environ["PYTHONPATH"] = path  # inherited by the JVM that PyFlink launches next
    return {
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.pythonpath": path,
    }


def configuration(overrides: dict[str, str]) -> dict[str, str]:
    """The Flink configuration of a run: defaults, the local Python settings unless on a cluster, overrides."""
    conf = dict(DEFAULTS)
    if not under_flink_cli():
        conf.update(local_python_settings())
    conf.update(overrides)
    return conf


def environment(overrides: dict[str, str]) -> StreamExecutionEnvironment:
    """A StreamExecutionEnvironment in streaming mode with :func:`configuration` applied."""
    from pyflink.common import Configuration
    from pyflink.datastream import RuntimeExecutionMode, StreamExecutionEnvironment

    j_conf = Configuration()
    for key, value in configuration(overrides).items():
        j_conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(j_conf)
    env.set_runtime_mode(RuntimeExecutionMode.STREAMING)  # keyed order and timers as in a live run
    return env
