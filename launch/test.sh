#!/usr/bin/env bash
# The test suite: bash launch/test.sh [extra pytest args]
# Creates/reuses .venv, installs avl_jax[test], then runs the fast tests and the slow group (never skipped).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" test
# The Beam data path is compared with the local one (tests/datasets_beam_test.py) in its own virtualenv:
# apache-beam pins older protobuf/Pillow/pyarrow than the main stack. AVL_SKIP_BEAM_VENV=1 skips creating it.
if [ "${AVL_SKIP_BEAM_VENV:-0}" != "1" ]; then
  (AVL_VENV="${AVL_BEAM_VENV:-$REPO/.venv-beam}" source "$REPO/launch/env.sh" beam,test)
fi
run() {
  # pytest exits 5 when a selection collects no tests: that is not a failure of the suite.
  set +e; python -m pytest "$@"; local rc=$?; set -e
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
}
echo "[avl_jax] fast tests"
run -q -m "not slow" -n 2 --dist loadfile "$@"
echo "[avl_jax] slow tests (full-size parity, end-to-end training)"
run -q -m "slow" -n 2 --dist loadfile "$@"
echo "[avl_jax] all tests passed"
