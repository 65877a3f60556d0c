"""The training stack: sharded step == 1-device step, end-to-end train -> checkpoint -> resume -> evaluate,
config typos, non-finite losses."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from avl_jax import checkpointing
from avl_jax import evaluate
from avl_jax import input_pipeline
from avl_jax import optimizers
from avl_jax import sharding
from avl_jax import train
import models_test  # the structurally-zero gradient leaves

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch(config, seed=0):
  it = iter(input_pipeline.create_train_dataset(config, per_host_batch=config.batch_size, seed=seed))
  return next(it)


def test_sharded_step_matches_single_device(tiny_config):
  assert len(jax.devices()) == 8
  host_batch = _batch(tiny_config)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.create_mesh((("data", -1),), devices=devices)
    setup = train.build(tiny_config, mesh)
    state = setup.init_fn(jax.random.PRNGKey(0))
    batch = sharding.host_to_global(host_batch, mesh)
    state, metrics = setup.step_fn(state, batch, {})
    jax.block_until_ready(state)  # Never queue sharded steps back to back on fake devices (can deadlock).
    assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == len(devices)
    results.append((jax.device_get(state), jax.device_get(metrics)))
  (state1, metrics1), (state8, metrics8) = results
  # Same loss terms, gradient norm and batch statistics on 1 and 8 devices (the batch is global in both).
  for key in metrics1:
    np.testing.assert_allclose(metrics8[key], metrics1[key], rtol=1e-4, atol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(state1.batch_stats), jax.tree.leaves(state8.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The gradients (Adam's first moment after one step is 0.1 * grad) agree leaf by leaf, relative to each leaf's
  # scale. Adam's first update is lr * g / (|g| + eps): gradients at rounding-noise level may flip sign between
  # reduction orders and move such a parameter by up to 2 * lr, so parameters are compared at that bound.
  mu1, mu8 = ({"/".join(str(k.key) for k in path): np.asarray(leaf)
                for path, leaf in jax.tree_util.tree_leaves_with_path(s.opt_state[-2].mu)} for s in (state1, state8))
  assert len(mu1) == len(jax.tree.leaves(state1.params))
  scale = max(np.max(np.abs(a)) for a in mu1.values())
  for path, a in mu1.items():
    # Structurally-zero gradients are pure cancellation noise of the large ones: compare at that scale.
    floor = 1e-4 * scale if path in models_test.STRUCTURALLY_ZERO_GRADIENTS else 1e-7 * scale
    assert np.max(np.abs(a - mu8[path])) <= 1e-3 * np.max(np.abs(a)) + floor, path
  lr = tiny_config.optimizer.learning_rate
  for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state8.params)):
    assert np.max(np.abs(a - b)) <= 2 * lr * 1.01


def test_batch_not_divisible_by_devices_is_a_clear_error():
  mesh = sharding.create_mesh((("data", -1),))
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    sharding.per_host_batch_size(12, mesh)
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.create_mesh((("data", 16),))


@pytest.mark.slow
def test_train_checkpoint_resume_evaluate(tiny_config, tmp_path):
  """Train 4 steps straight vs 2 steps + restart + 2 steps: identical states; then evaluate the checkpoint."""
  workdir_a, workdir_b = str(tmp_path / "a"), str(tmp_path / "b")
  tiny_config.num_train_steps = 4
  tiny_config.checkpoint_every_steps = 2
  straight = train.train_and_evaluate(tiny_config, workdir_a)

  tiny_config.num_train_steps = 2
  train.train_and_evaluate(tiny_config, workdir_b)
  tiny_config.num_train_steps = 4
  resumed = train.train_and_evaluate(tiny_config, workdir_b)

  mesh = sharding.create_mesh(tiny_config.mesh)
  abstract = train.build(tiny_config, mesh).abstract_state
  states = [checkpointing.restore(checkpointing.create_manager(w, create=False), 4, abstract)
            for w in (workdir_a, workdir_b)]
  assert int(states[0].step) == int(states[1].step) == 4
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  for split in tiny_config.dataset.eval_splits:
    want, got = straight[split]["metrics"]["model"], resumed[split]["metrics"]["model"]
    numeric = [k for k, v in want.items() if isinstance(v, (int, float))]
    assert "ciou_mean" in numeric and want["protocol"] == got["protocol"] == "official"
    assert {k: got[k] for k in numeric} == pytest.approx({k: want[k] for k in numeric}, rel=1e-4, nan_ok=True)

  # Outputs of training.
  assert os.path.exists(os.path.join(workdir_a, "config.json"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir_a))
  for split in tiny_config.dataset.eval_splits:
    with open(os.path.join(workdir_a, "eval", f"{split}_4.json")) as f:
      result = json.load(f)
    assert result["num_examples"] == 12 and result["step"] == 4
    assert result["num_items"] == (24 if split == "test_duet" else 12)
    assert set(result["metrics"]) == {"model", "silent_audio", "shuffled_audio", "swapped_classes", "center_prior",
                                      "random"}
    for summary in result["metrics"].values():
      assert 0.0 <= summary["ciou_mean"] <= 1.0 and 0.0 <= summary["auc"] <= 1.0
    assert os.path.getsize(os.path.join(workdir_a, "eval", f"{split}_4.png")) > 1000

  # The eval binary's library entry restores the latest (or a given) step.
  results = evaluate.evaluate(tiny_config, workdir_a, step=2)
  assert results["test_duet"]["step"] == 2
  with pytest.raises(FileNotFoundError, match="No checkpoint for step 3"):
    evaluate.evaluate(tiny_config, workdir_a, step=3)
  with pytest.raises(FileNotFoundError, match="No checkpoint found"):
    evaluate.evaluate(tiny_config, str(tmp_path / "empty"))


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_config, tmp_path, monkeypatch):
  workdir = str(tmp_path / "nan")
  tiny_config.num_train_steps = 2
  tiny_config.checkpoint_every_steps = 2
  tiny_config.dataset.eval_splits = ()
  train.train_and_evaluate(tiny_config, workdir)
  # From the 2nd batch after the restart on (global step 4), the waveforms are NaN.
  calls = []
  host_to_global = sharding.host_to_global

  def poisoned(batch, mesh):
    calls.append(1)
    if len(calls) >= 2:
      batch = dict(batch, waveform=np.full_like(batch["waveform"], np.nan))
    return host_to_global(batch, mesh)

  monkeypatch.setattr(sharding, "host_to_global", poisoned)
  tiny_config.num_train_steps = 6
  with pytest.raises(train.NonFiniteLossError, match=r"Non-finite loss at step 4"):
    train.train_and_evaluate(tiny_config, workdir)
  assert checkpointing.create_manager(workdir, create=False).all_steps() == [2]


def test_stop_request_saves_a_checkpoint_and_returns(tiny_config, tmp_path, monkeypatch):
  workdir = str(tmp_path / "stop")
  tiny_config.num_train_steps = 4
  tiny_config.checkpoint_every_steps = 2
  monkeypatch.setattr(train.StopRequest, "should_stop", lambda self, manager, step: step == 3)
  assert train.train_and_evaluate(tiny_config, workdir) == {}
  assert checkpointing.create_manager(workdir, create=False).all_steps() == [2, 3]


def test_stop_request_handles_sigterm():
  import signal  # pylint: disable=g-import-not-at-top
  with train.StopRequest() as stop:
    assert not stop.requested
    signal.raise_signal(signal.SIGTERM)
    assert stop.requested and stop.should_stop(None, 0)
  assert signal.getsignal(signal.SIGTERM) is not stop._handle  # pylint: disable=protected-access


def test_config_typo_fails_with_a_clear_message(tiny_data_dir, tmp_path):
  cmd = [sys.executable, "-m", "avl_jax.main", f"--config={REPO}/configs/synthetic_av.py:tiny",
         "--config.optimizer.lerning_rate=0.1", f"--workdir={tmp_path}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode != 0
  assert "lerning_rate" in proc.stderr and "learning_rate" in proc.stderr
  bad_arg = [sys.executable, "-m", "avl_jax.main", f"--config={REPO}/configs/synthetic_av.py:tinny",
             f"--workdir={tmp_path}"]
  proc = subprocess.run(bad_arg, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode != 0 and "Unknown config argument 'tinny'" in proc.stderr


@pytest.mark.slow
def test_worker_processes_leave_no_shared_memory_behind(tiny_data_dir, tmp_path):
  """With grain worker processes, a finished run frees every shared-memory batch (no resource-tracker warning)."""
  cmd = [sys.executable, "-m", "avl_jax.main", f"--config={REPO}/configs/synthetic_av.py:tiny,steps=2,"
         f"data_dir={tiny_data_dir}", "--config.dataset.num_workers=2", "--config.eval.baselines=False",
         "--config.eval.audio_ablations=False", "--config.eval.class_ablation=False", f"--workdir={tmp_path}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "test_duet (step 2," in proc.stdout + proc.stderr
  assert "leaked shared_memory" not in proc.stderr, proc.stderr[-3000:]


def test_learning_rate_schedules(tiny_config):
  tiny_config.optimizer.schedule = "cosine"
  tiny_config.optimizer.warmup_steps = 2
  schedule = optimizers.learning_rate_schedule(tiny_config)
  assert float(schedule(0)) == 0.0 and float(schedule(2)) == pytest.approx(tiny_config.optimizer.learning_rate)
  tiny_config.optimizer.schedule = "linear"
  with pytest.raises(ValueError, match="schedule='linear'"):
    optimizers.learning_rate_schedule(tiny_config)


