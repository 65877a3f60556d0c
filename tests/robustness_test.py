"""Nothing lost, nothing silent: damaged checkpoints fall back, configs are checked before any work, a workdir of
another config is refused with the variable and the config diff, results can go elsewhere than a read-only
workdir, and killed evaluations leave no temporaries behind."""
import errno
import glob
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from avl_jax import checkpointing
from avl_jax import cli
from avl_jax import evaluate
from avl_jax import resolve
from avl_jax import sharding
from avl_jax import train
from avl_jax.evaluation import writers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fast(config):
  """The tiny config with a cheap final evaluation (one split, no ablations, no baselines, no PNG)."""
  config.checkpoint_every_steps = 2
  config.dataset.eval_splits = ("test_single",)
  config.eval.audio_ablations = config.eval.class_ablation = False
  config.eval.baselines = False
  config.eval.num_visualize = 0
  return config


def _params(config, workdir, step):
  mesh = sharding.create_mesh(config.mesh)
  abstract = train.build(config, mesh).abstract_state
  state = checkpointing.restore(checkpointing.create_manager(workdir, create=False), step, abstract)
  return jax.device_get(state.params)


def _truncate_arrays(step_dir):
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  assert files
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def _garbage_iterator(step_dir):
  (path,) = glob.glob(os.path.join(step_dir, "data_iter", "process_*.json"))
  with open(path, "w") as f:
    f.write("{garbage")


def _delete_state(step_dir):
  shutil.rmtree(os.path.join(step_dir, "state"))


def _empty_step_dir(step_dir):
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)


CORRUPTIONS = {"truncated_arrays": _truncate_arrays, "garbage_data_iter": _garbage_iterator,
               "deleted_state": _delete_state}


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_the_previous_step(tiny_config, tmp_path, caplog):
  """Each way of damaging step 4: training warns, moves step 4 aside and resumes from step 2, ending with the
  params of an undamaged resume from step 2; evaluation falls back without moving anything."""
  config = _fast(tiny_config)
  base = str(tmp_path / "base")
  config.num_train_steps = 4
  train.train_and_evaluate(config, base)
  assert sorted(os.listdir(os.path.join(base, "checkpoints"))) == ["2", "4"]

  reference = str(tmp_path / "reference")  # the uninterrupted run from step 2
  shutil.copytree(base, reference)
  shutil.rmtree(os.path.join(reference, "checkpoints", "4"))
  config.num_train_steps = 6
  train.train_and_evaluate(config, reference)
  want = _params(config, reference, 6)

  for name, corrupt in CORRUPTIONS.items():
    workdir = str(tmp_path / name)
    shutil.copytree(base, workdir)
    corrupt(os.path.join(workdir, "checkpoints", "4"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      train.train_and_evaluate(config, workdir)
    warnings = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
    assert len(warnings) == 1 and "checkpoint step 4" in warnings[0], (name, warnings)
    assert "checkpoints_damaged" in warnings[0]
    assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", "4")), name  # moved aside, not deleted
    got = _params(config, workdir, 6)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      np.testing.assert_array_equal(a, b, err_msg=name)

  # Evaluation: the latest (damaged) step is reported and left in place; step 2 is evaluated instead.
  workdir = str(tmp_path / "eval_fallback")
  shutil.copytree(base, workdir)
  _empty_step_dir(os.path.join(workdir, "checkpoints", "4"))
  caplog.clear()
  config.num_train_steps = 4
  with caplog.at_level(logging.WARNING):
    results = evaluate.evaluate(config, workdir, output=str(tmp_path / "elsewhere"))
  assert results["test_single"]["step"] == 2
  assert any("checkpoint step 4" in r.getMessage() for r in caplog.records)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))
  assert os.path.exists(tmp_path / "elsewhere" / "test_single_2.json")  # --output_dir, not WORKDIR/eval
  assert not os.path.exists(os.path.join(workdir, "eval", "test_single_2.json"))
  # --all skips the damaged step (not recorded in the ledger) and evaluates the others.
  evaluated = evaluate.evaluate_checkpoints(config, workdir)
  assert sorted(evaluated) == [2] and sorted(evaluate.read_ledger(workdir)) == [2]


def test_checkpoint_of_another_config_names_the_variable_and_keeps_config_json(tiny_config, tmp_path):
  workdir = str(tmp_path / "w")
  mesh = sharding.create_mesh(tiny_config.mesh)
  setup = train.build(tiny_config, mesh)
  manager = checkpointing.create_manager(workdir)
  checkpointing.save(manager, 2, setup.init_fn(jax.random.PRNGKey(0)), None, force=True)
  manager.wait_until_finished()
  train.write_config(workdir, resolve.resolve(tiny_config), 0)
  with open(os.path.join(workdir, "config.json")) as f:
    saved = f.read()

  wider = resolve.resolve(tiny_config)
  wider.model.dim = 2 * tiny_config.model.dim
  with pytest.raises(checkpointing.CheckpointMismatchError) as error:
    train.train_and_evaluate(wider, workdir)
  message = str(error.value)
  assert "has shape" in message and "this config's model expects" in message
  assert f"model.dim: {tiny_config.model.dim} -> {wider.model.dim}" in message
  assert "strict" not in message
  with open(os.path.join(workdir, "config.json")) as f:
    assert f.read() == saved  # the refused run wrote nothing
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]


def test_write_config_keeps_the_previous_config(tiny_config, tmp_path):
  workdir = str(tmp_path)
  train.write_config(workdir, tiny_config, 0)
  train.write_config(workdir, tiny_config, 4)  # unchanged: nothing new
  assert sorted(os.listdir(workdir)) == ["config.json"]
  changed = resolve.resolve(tiny_config, check_data=False)
  changed.optimizer.learning_rate = 0.5
  train.write_config(workdir, changed, 4)
  assert sorted(os.listdir(workdir)) == ["config-before-4.json", "config.json"]
  with open(os.path.join(workdir, "config-before-4.json")) as f:
    assert json.load(f)["optimizer"]["learning_rate"] == tiny_config.optimizer.learning_rate
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["optimizer"]["learning_rate"] == 0.5
  assert "optimizer.learning_rate" in train.config_diff(workdir, tiny_config)


@pytest.mark.parametrize("field,value,match", [
    ("checkpoint_every_steps", 0, "config.checkpoint_every_steps=0"),
    ("log_every_steps", 0, "config.log_every_steps=0"),
    ("num_train_steps", -5, "config.num_train_steps=-5"),
    ("keep_checkpoints", 0, "delete every one"),
    ("batch_size", 0, "config.batch_size=0"),
    ("optimizer.learning_rate", float("nan"), "config.optimizer.learning_rate=nan"),
    ("optimizer.schedule", "cosin", "expected one of"),
    ("model.dim", 30, "not divisible by config.model.num_heads=4"),
    ("model.tau", 0.0, "config.model.tau=0.0"),
    ("dataset.eval_resize", "bicubic", "config.dataset.eval_resize='bicubic'"),
    ("dataset.eval_splits", ("test_single", ""), "must be a tuple of split names"),
    ("dataset.resize_size", 8, "config.dataset.resize_size=8"),
    ("eval.protocol", "offical", "config.eval.protocol='offical'"),
    ("model_name", "avgm", "Unknown model 'avgm'"),
])
def test_resolve_rejects_values_that_cannot_run(tiny_config, field, value, match):
  node = tiny_config
  *groups, name = field.split(".")
  for group in groups:
    node = node[group]
  node[name] = value
  with pytest.raises(ValueError, match=match):
    resolve.resolve(tiny_config, check_data=False)


def test_resolve_checks_splits_and_resolves_epochs(tiny_config):
  assert resolve.resolve(tiny_config).num_train_steps == tiny_config.num_train_steps
  tiny_config.dataset.eval_splits = ("test_single", "test_duett")
  with pytest.raises(resolve.ConfigError, match="no split 'test_duett'.*test_duet"):
    resolve.resolve(tiny_config)
  tiny_config.dataset.eval_splits = ("test_single",)
  tiny_config.dataset.name = "synthetic_av/nope"
  with pytest.raises(FileNotFoundError, match="synthetic_av/nope"):
    resolve.resolve(tiny_config)
  tiny_config.dataset.name = "synthetic_av/tiny"
  tiny_config.num_epochs = 2.0  # what `evaluate --all --watch` waits for: the resolved final step
  resolved = resolve.resolve(tiny_config)
  assert resolved.num_train_steps != tiny_config.num_train_steps
  assert resolve.resolve(resolved).num_train_steps == resolved.num_train_steps


def test_resolve_checks_max_boxes_against_the_built_dataset(tiny_config, monkeypatch):
  class Info:  # what a raw builder records (datasets/builder_lib.py, metadata 'boxes')
    splits = {"train": None, "test_single": None, "test_duet": None}
    metadata = {"boxes": {"test_duet": {"max_boxes": 17, "max_sources": 2}}}
  monkeypatch.setattr(resolve.data_source, "prepared_info", lambda name, data_dir: Info)
  with pytest.raises(resolve.ConfigError, match="max_boxes=16: split 'test_duet'.*17"):
    resolve.resolve(tiny_config)
  tiny_config.dataset.max_boxes = 17
  assert resolve.resolve(tiny_config).dataset.max_boxes == 17


def test_unknown_config_field_messages(tiny_config):
  message = cli.unknown_field_message(tiny_config, "lerning_rate")
  assert "'optimizer.learning_rate'" in message and "Fields of the config: batch_size" in message
  message = cli.unknown_field_message(tiny_config, "optimizer.lerning_rate")
  assert "config.optimizer has no field 'lerning_rate'" in message and "'learning_rate'?" in message
  assert "is a value (int)" in cli.unknown_field_message(tiny_config, "batch_size.x")
  assert cli.unknown_field_message(tiny_config, "optimizer.learning_rate") is None
  assert "renamed to config.eval.official_duet_gt_bug" in cli.unknown_field_message(tiny_config,
                                                                                     "eval.avgn_duet_gt_bug")


def test_binaries_report_config_mistakes_without_a_traceback(tiny_data_dir, tmp_path):
  base = [sys.executable, "-m", "avl_jax.main", f"--config={REPO}/configs/synthetic_av.py:tiny,data_dir={tiny_data_dir}"]
  cases = [("--config.lerning_rate=1", "'optimizer.learning_rate'"),
           ("--config.checkpoint_every_steps=0", "config.checkpoint_every_steps=0")]
  for override, expected in cases:
    workdir = tmp_path / override.split("=")[0].split(".")[-1]
    proc = subprocess.run(base + [override, f"--workdir={workdir}"], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(workdir / "config.json")  # refused before any work


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  stale = tmp_path / f".tmp-{dead.pid}-test_duet_400.png"
  live = tmp_path / f".tmp-{os.getpid()}-test_duet_400.json"
  other = tmp_path / ".tmp-notapid-x"
  for path in (stale, live, other):
    path.write_text("partial")
  evaluate.prepare_output(str(tmp_path))
  assert not stale.exists() and live.exists() and other.exists()


def test_read_only_results_directory_offers_output_dir(tmp_path, monkeypatch):
  def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system")
  monkeypatch.setattr(writers.os, "makedirs", read_only)
  with pytest.raises(writers.OutputNotWritableError, match="Read-only file system.*--output_dir"):
    evaluate.prepare_output(str(tmp_path / "eval"))


def test_init_runtime_turns_on_the_persistent_compilation_cache(tiny_config, monkeypatch):
  updates = {}
  monkeypatch.setattr(cli.jax.config, "update", lambda name, value: updates.__setitem__(name, value))
  tiny_config.compilation_cache_dir = "~/jit_cache_test"
  cli.init_runtime(tiny_config)
  assert updates["jax_compilation_cache_dir"] == os.path.expanduser("~/jit_cache_test")
  updates.clear()
  tiny_config.compilation_cache_dir = ""
  cli.init_runtime(tiny_config)
  assert "jax_compilation_cache_dir" not in updates and updates["jax_threefry_partitionable"]


def test_distributed_args_from_the_environment():
  assert cli.distributed_args({}) == {}
  env = {"AVL_NUM_PROCESSES": "2", "AVL_PROCESS_ID": "1", "JAX_COORDINATOR_ADDRESS": "localhost:1234"}
  assert cli.distributed_args(env) == {"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1}
  with pytest.raises(ValueError, match="AVL_PROCESS_ID"):
    cli.distributed_args({"AVL_NUM_PROCESSES": "2"})


@pytest.mark.slow
def test_async_checkpoints_equal_sync_ones(tiny_config, tmp_path):
  """Orbax async saves (config.checkpoint_async='on') hold the same state and grain iterator as sync saves."""
  config = _fast(tiny_config)
  config.dataset.eval_splits = ()
  config.num_train_steps = 4
  for mode in ("off", "on"):
    config.checkpoint_async = mode
    train.train_and_evaluate(config, str(tmp_path / mode))
  mesh = sharding.create_mesh(config.mesh)
  abstract = train.build(config, mesh).abstract_state
  for step in (2, 4):
    states = [checkpointing.restore(checkpointing.create_manager(str(tmp_path / m), create=False), step, abstract)
              for m in ("off", "on")]
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    iterators = [(tmp_path / m / "checkpoints" / str(step) / "data_iter" / "process_0-of-1.json").read_text()
                 for m in ("off", "on")]
    assert iterators[0] == iterators[1]
  assert checkpointing.use_async("auto") == (jax.default_backend() != "cpu")
  with pytest.raises(ValueError, match="checkpoint_async"):
    checkpointing.use_async("yes")
