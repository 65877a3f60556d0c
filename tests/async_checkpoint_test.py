"""kill -9 while an async checkpoint (config.checkpoint_async='on') is being written: the half-written step never
counts, the rerun resumes from the last committed step and ends bit-identical to a run that was never killed."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from avl_jax import checkpointing
from avl_jax import sharding
from avl_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax writes step N into N.orbax-checkpoint-tmp, renamed to N on commit

# The training binary with the commit of checkpoint step 4 held back: Orbax's background thread has written the
# step's files into its temporary directory and waits before the rename that commits it, so the kill surely
# lands while that save is in flight (without the hold, the tiny state is committed within milliseconds).
HOLD_COMMIT = r"""
import runpy, sys, time
from orbax.checkpoint._src.path import async_path
rename = async_path.rename
async def held_rename(src, dst):
  if dst.name == "4":
    print("HOLDING_COMMIT_OF_STEP_4", file=sys.stderr, flush=True)
    time.sleep(600)
  return await rename(src, dst)
async_path.rename = held_rename
sys.argv = ["avl_jax.main"] + sys.argv[1:]
runpy.run_module("avl_jax.main", run_name="__main__", alter_sys=True)
"""


def _flags(tiny_data_dir, workdir, steps):
  cache = os.environ.get("AVL_JAX_TEST_CACHE", "/tmp/avl_jax_test_jit_cache")  # the suite's (conftest.py)
  return [f"--config={REPO}/configs/synthetic_av.py:tiny,data_dir={tiny_data_dir}", f"--workdir={workdir}",
          "--config.checkpoint_async=on", "--config.checkpoint_every_steps=2", f"--config.num_train_steps={steps}",
          "--config.dataset.eval_splits=()", f"--config.compilation_cache_dir={cache}"]


def _start(args, log_path, hold_commit=False):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="2")
  program = ["-c", HOLD_COMMIT] if hold_commit else ["-m", "avl_jax.main"]
  log = open(log_path, "w")
  return subprocess.Popen([sys.executable] + program + args, cwd=REPO, env=env, stdout=log,
                          stderr=subprocess.STDOUT), log


def _finish(proc, log, log_path, timeout=600):
  try:
    proc.wait(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
    log.close()
  text = log_path.read_text()
  assert proc.returncode == 0, text[-4000:]
  return text


@pytest.mark.slow
def test_kill_during_async_save_resumes_bit_identical(tiny_config, tiny_data_dir, tmp_path):
  killed, straight = tmp_path / "killed", tmp_path / "straight"
  reference = _start(_flags(tiny_data_dir, straight, 6), tmp_path / "straight.log")  # runs beside the killed run
  proc, log = _start(_flags(tiny_data_dir, killed, 6), tmp_path / "killed.log", hold_commit=True)
  checkpoints = killed / "checkpoints"
  deadline = time.monotonic() + 600
  try:
    while True:
      text = (tmp_path / "killed.log").read_text()
      in_flight = os.path.isdir(checkpoints / f"4{TMP_SUFFIX}")
      if "Saved checkpoint for step 4" in text and "HOLDING_COMMIT_OF_STEP_4" in text and in_flight:
        break
      assert proc.poll() is None, f"the run ended before its step-4 save:\n{text[-4000:]}"
      assert time.monotonic() < deadline, text[-4000:]
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
    log.close()
  assert proc.returncode == -signal.SIGKILL
  # Step 2 committed; step 4 written into its temporary directory only, never renamed.
  assert sorted(os.listdir(checkpoints)) == ["2", f"4{TMP_SUFFIX}"], os.listdir(checkpoints)
  assert os.listdir(checkpoints / f"4{TMP_SUFFIX}")  # its files were on the way
  assert checkpointing.create_manager(str(killed), create=False).all_steps() == [2]

  resumed = _finish(*_start(_flags(tiny_data_dir, killed, 6), tmp_path / "resumed.log"), tmp_path / "resumed.log")
  assert "Resumed from step 2" in resumed
  _finish(*reference, tmp_path / "straight.log")
  # The rerun wrote step 4 again (Orbax removes the stale temporary directory first) and finished.
  for workdir in (killed, straight):
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"], os.listdir(workdir / "checkpoints")

  mesh = sharding.create_mesh((("data", 1),), devices=jax.devices()[:1])  # the runs' 1-device mesh
  abstract = train.build(tiny_config, mesh).abstract_state
  for step in (4, 6):
    states = [checkpointing.restore(checkpointing.create_manager(str(w), create=False), step, abstract)
              for w in (killed, straight)]
    assert int(states[0].step) == step
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(states[0]), jax.tree.leaves(states[1])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"step {step} {jax.tree_util.keystr(path)}")
    iterators = [json.loads((w / "checkpoints" / str(step) / "data_iter" / "process_0-of-1.json").read_text())
                 for w in (killed, straight)]
    assert iterators[0] == iterators[1], iterators
