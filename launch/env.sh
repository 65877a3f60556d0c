# Sourced by the launch scripts: create or reuse the virtualenv at $AVL_VENV (default .venv in the repository)
# and install avl_jax from setup.py with the given extras. Re-installs only when setup.py changed.
#   source launch/env.sh EXTRAS     (pass "" for none: a bare `source` would hand over the caller's arguments)
# AVL_SKIP_INSTALL=1 uses the python on PATH as is (no virtualenv set-up).
# It changes directory to the repository; `absolute PATH` resolves a path given by the caller against the
# directory the command was run from (URLs such as gs://... pass unchanged).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLER_DIR="${CALLER_DIR:-$(pwd)}"
absolute() { case "$1" in *://*|/*) echo "$1" ;; *) realpath -m -- "$CALLER_DIR/$1" ;; esac; }
if [ "${AVL_SKIP_INSTALL:-0}" != "1" ]; then
  VENV="${AVL_VENV:-$REPO/.venv}"
  PYTHON_BIN="${PYTHON:-python3.11}"
  command -v "$PYTHON_BIN" >/dev/null 2>&1 || PYTHON_BIN=python3
  "$PYTHON_BIN" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"avl_jax needs Python 3.11, found {sys.version}"'
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[avl_jax] creating virtualenv $VENV"
    "$PYTHON_BIN" -m venv "$VENV"
  fi
  EXTRAS="${1:-}"
  STAMP="$VENV/.avl_jax_installed${EXTRAS:+_$EXTRAS}"
  if [ ! -f "$STAMP" ] || [ "$REPO/setup.py" -nt "$STAMP" ]; then
    echo "[avl_jax] installing avl_jax${EXTRAS:+[$EXTRAS]} and its pinned dependencies into $VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
    "$VENV/bin/python" -m pip install --quiet -e "$REPO${EXTRAS:+[$EXTRAS]}"
    touch "$STAMP"
  fi
  export PATH="$VENV/bin:$PATH"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
cd "$REPO"
