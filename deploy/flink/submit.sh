#!/usr/bin/env bash
# Submit segstream to a standalone or session Flink cluster (flink run -py ... -pyfs ... -pyexec ...).
#
#   FLINK_HOME=/opt/flink deploy/flink/submit.sh [-D KEY=VALUE ...] -- SEGSTREAM RUN OPTIONS
#   FLINK_HOME=/opt/flink deploy/flink/submit.sh -D parallelism.default=4 -- \
#       --source /data/events.jsonl.gz --redis-url redis://redis:6379/0 --changes-out /data/changes.jsonl
#
# Options before "--" go to `flink run` (e.g. -m HOST:PORT for a remote JobManager, -d to detach,
# -s SAVEPOINT to restore); the rest to `segstream run --engine flink`.
# SEGSTREAM_PYTHON: the Python (3.11 with apache-flink and segstream's dependencies) on the client
# and on the TaskManagers (default: python3 on PATH). The package's code is shipped with -pyfs from
# this checkout, so the cluster runs the submitted version.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
: "${FLINK_HOME:?set FLINK_HOME to the Flink distribution (for a pip install: python -c 'import pyflink, os; print(os.path.dirname(pyflink.__file__))')}"
PYTHON="${SEGSTREAM_PYTHON:-$(command -v python3)}"
FLINK_ARGS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do FLINK_ARGS+=("$1"); shift; done
[ $# -gt 0 ] && shift
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/segstream-submit.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
mkdir "$STAGE/segstream"
for package in pipelines transforms online_models schemas; do
  cp -r "$ROOT/$package" "$STAGE/segstream/"
done
find "$STAGE/segstream" -name __pycache__ -prune -exec rm -rf {} +
"$FLINK_HOME/bin/flink" run "${FLINK_ARGS[@]}" \
  -pyexec "$PYTHON" -pyclientexec "$PYTHON" \
  -pyfs "$STAGE/segstream" \
  -py "$ROOT/deploy/flink/job.py" \
  run --engine flink --no-progress "$@"
