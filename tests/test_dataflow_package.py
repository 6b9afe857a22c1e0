"""What Dataflow would stage: Beam's stager builds an sdist from ``--setup_file ./setup.py`` and each
worker pip-installs it with its declared dependencies. Offline, the test builds that sdist, checks
the dependencies it declares and imports the Beam pipeline and its package data from the unpacked
sdist (not from this checkout)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
import pipelines.beam_pipeline, pipelines.beam_replay, pipelines.cli
from schemas import load_schema
from transforms.config import load_config
assert pipelines.cli.__file__.startswith(sys.argv[1]), pipelines.cli.__file__
assert load_config(None).rules.segments and load_schema("SegmentChange")
print("ok", pipelines.cli.__file__)
"""


def test_the_staged_package_holds_the_beam_pipeline_and_its_worker_dependencies(tmp_path: Path) -> None:
    dist, unpacked = tmp_path / "dist", tmp_path / "staged"
    built = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(dist)],
                           cwd=ROOT, capture_output=True, text=True, check=False)  # fmt: skip
    assert built.returncode == 0, built.stderr
    (sdist,) = dist.glob("segstream-*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    (package,) = unpacked.iterdir()  # what `pip install` copies for this pure-Python package
    requires = (package / "segstream.egg-info" / "requires.txt").read_text().splitlines()
    for needed in ("redis", "river", "fastavro", "orjson", "prometheus-client", "[beam]", "apache-beam"):
        assert any(line.startswith(needed) for line in requires), f"{needed} is not declared for the workers"
    # -I: no user site, no PYTHONPATH, no .pth files (this checkout's editable install stays out); the
    # dependencies a Dataflow worker installs from requires.txt come from this venv's site-packages.
    path = f"sys.path[:0] = [{str(package)!r}, {sysconfig.get_paths()['purelib']!r}]"
    probe = subprocess.run([sys.executable, "-I", "-c", f"import sys; {path}\n{PROBE}", str(package)],
                           cwd=tmp_path, capture_output=True, text=True, check=False)  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith("ok")
