#!/usr/bin/env bash
# The test suite: bash launch/test.sh [extra pytest args]
# Creates/reuses .venv, installs avl_jax[test], then runs the fast tests and the slow group (never skipped).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" test
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
