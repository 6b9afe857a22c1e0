# Sourced by scripts/demo and scripts/test: create .venv (Python 3.11) and install segstream with
# the extras named in $EXTRAS, pinned by constraints.txt. Re-runs only install what changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEGSTREAM_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
stamp="$VENV/.installed-$(cat "$ROOT/setup.py" "$ROOT/constraints.txt" | sha1sum | cut -c1-12)-${EXTRAS}"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" -e "$ROOT[$EXTRAS]"
  touch "$stamp"
fi
