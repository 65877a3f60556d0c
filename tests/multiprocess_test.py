"""A real multi-process run: 2 CPU processes joined by jax.distributed (gloo collectives) read one global order,
each its own rows of every global batch: train with a checkpoint, resume from it, evaluate; process 0 writes the
files. The run equals a 1-process run of the same global batch (losses, eval metrics, parameters)."""
import glob
import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from avl_jax import checkpointing
from avl_jax import input_pipeline
from avl_jax import sharding
from avl_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(binary: str, args: list[str], tmp_path, tag: str, n: int = 2, devices_per_process: int = 1):
  """Starts `python -m avl_jax.{binary} ARGS` as n processes (--distributed when n > 1); returns the pending runs."""
  port = _free_port()
  xla_flags = f"--xla_force_host_platform_device_count={devices_per_process}" if devices_per_process > 1 else ""
  procs = []
  for i in range(n):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags, TF_CPP_MIN_LOG_LEVEL="2")
    flags = []
    if n > 1:
      env.update(AVL_NUM_PROCESSES=str(n), AVL_PROCESS_ID=str(i), JAX_COORDINATOR_ADDRESS=f"localhost:{port}")
      flags = ["--distributed"]
    log = open(tmp_path / f"{tag}_{i}.log", "w")
    procs.append((subprocess.Popen([sys.executable, "-m", f"avl_jax.{binary}"] + flags + args, cwd=REPO,
                                   env=env, stdout=log, stderr=subprocess.STDOUT), log, tmp_path / f"{tag}_{i}.log"))
  return procs


def _wait(procs) -> list[str]:
  """Waits for runs from `_start`; returns their logs (asserting rc 0)."""
  logs = []
  for i, (proc, log, path) in enumerate(procs):
    try:
      proc.wait(timeout=900)
    finally:
      if proc.poll() is None:
        proc.kill()
      log.close()
    text = path.read_text()
    assert proc.returncode == 0, f"process {i} of {path.name}:\n{text[-4000:]}"
    logs.append(text)
  return logs


def _stop(procs) -> None:
  """Kills runs from `_start` that are still going (a failed test leaves nothing behind)."""
  for proc, log, _ in procs:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    log.close()


def _run_processes(binary: str, args: list[str], tmp_path, tag: str, n: int = 2) -> list[str]:
  """Runs `python -m avl_jax.{binary} --distributed ARGS` as n processes; returns their logs (asserting rc 0)."""
  return _wait(_start(binary, args, tmp_path, tag, n))


def _train_scalars(workdir) -> dict[tuple[str, int], float]:
  """{(tag, step): value} of every train/ scalar in the workdir's TensorBoard files (float32, exact)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (already loaded by clu)
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag.startswith("train/"):
          out[(value.tag, int(event.step))] = float(tf.make_ndarray(value.tensor))
  return out


def _numbers(tree, prefix="") -> dict[str, float]:
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _numbers(sub, f"{prefix}{key}/").items()}
  if isinstance(tree, (int, float)) and not isinstance(tree, bool):
    return {prefix[:-1]: float(tree)}
  return {}


def _state(config, workdir, step, data_iter=None):
  mesh = sharding.create_mesh((("data", 1),), devices=jax.devices()[:1])
  abstract = train.build(config, mesh).abstract_state
  return jax.device_get(checkpointing.restore(checkpointing.create_manager(str(workdir), create=False), step,
                                              abstract, data_iter))


def _named(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
def test_two_processes_train_resume_evaluate_and_equal_one_process(tiny_config, tiny_data_dir, tmp_path):
  workdir, single = tmp_path / "w", tmp_path / "single"
  config = [f"--config={REPO}/configs/synthetic_av.py:tiny,data_dir={tiny_data_dir}",
            "--config.checkpoint_every_steps=2", "--config.eval.audio_ablations=False",
            "--config.eval.class_ablation=False", "--config.eval.baselines=False",
            "--config.eval.num_visualize=0", "--config.dataset.eval_splits=('test_single',)",
            f"--config.compilation_cache_dir={tmp_path / 'jit'}"]
  # The reference: one process with 2 devices, the same global batch of 8, 4 steps straight. It runs beside the
  # 2-process runs (they leave about one of the 2 cores idle).
  reference = _start("main", config + ["--config.num_train_steps=4", f"--workdir={single}"], tmp_path, "single", n=1,
                     devices_per_process=2)
  try:
    logs = _run_processes("main", config + ["--config.num_train_steps=2", f"--workdir={workdir}"], tmp_path, "train")
    for log in logs:
      assert "process 0/2" in log or "process 1/2" in log
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]

    logs = _run_processes("main", config + ["--config.num_train_steps=4", f"--workdir={workdir}"], tmp_path, "resume")
    for log in logs:
      assert "Resumed from step 2" in log
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]

    logs = _run_processes("evaluate", config + [f"--workdir={workdir}", "--step=4",
                                                f"--output_dir={tmp_path / 'out'}"], tmp_path, "eval")
    _wait(reference)
  finally:
    _stop(reference)
  # Each host predicted its own half of the 12 test examples; process 0 wrote the result, counting every item once.
  for log in logs:
    counts = re.findall(r"Predicted (\d+) examples of test_single on this host", log)
    assert counts == ["6"], counts
  with open(tmp_path / "out" / "test_single_4.json") as f:
    result = json.load(f)
  assert result["num_examples"] == 12 and result["num_items"] == 12 and result["step"] == 4

  # 2 processes == 1 process, bit for bit. The global batches are the same, and so is the program: one SPMD step
  # over a 2-device mesh, each device computing on its 4 rows; every cross-device sum (gradients, the loss, the
  # BatchNorm statistics, which bn_groups=1 takes over the global batch) adds 2 partial values, a + b, which is the
  # same float32 whether gloo adds them across processes or XLA within one. (Against a 1-device run the
  # reduction order differs: losses agree to ~1e-6 relative, parameters with structurally-zero gradients drift by
  # ~lr per step under Adam, docs/sharding.md §6.)
  scalars2, scalars1 = _train_scalars(workdir), _train_scalars(single)
  assert {s for _, s in scalars1} == {2, 4} and ("train/loss", 4) in scalars1
  print("train/loss at steps 2, 4:", scalars1[("train/loss", 2)], scalars1[("train/loss", 4)])
  assert scalars2 == scalars1

  with open(workdir / "eval" / "test_single_4.json") as f:
    metrics2 = _numbers(json.load(f)["metrics"])
  with open(single / "eval" / "test_single_4.json") as f:
    metrics1 = _numbers(json.load(f)["metrics"])
  assert "model/ciou_mean" in metrics1
  assert metrics2 == pytest.approx(metrics1, rel=0, abs=0, nan_ok=True)

  # This (1-process) pytest restores both step-4 checkpoints, each with a fresh iterator: the 2 processes'
  # iterator states move to 1 process at the same global position (checkpointing.moved_iterator_state).
  iterators = [iter(input_pipeline.create_train_dataset(tiny_config, 8, seed=0)) for _ in range(2)]
  state2, state1 = (_state(tiny_config, w, 4, it) for w, it in zip((workdir, single), iterators))
  next2, next1 = (next(it) for it in iterators)
  for key, value in next1.items():
    np.testing.assert_array_equal(next2[key], value, err_msg=key)
  assert int(state2.step) == int(state1.step) == 4
  named2 = _named(state2)
  for path, value in _named(state1).items():
    np.testing.assert_array_equal(named2[path], value, err_msg=path)
  iterators = [(w / "checkpoints" / "4" / "data_iter").glob("process_*.json") for w in (workdir, single)]
  assert [sorted(p.name for p in it) for it in iterators] == [["process_0-of-2.json", "process_1-of-2.json"],
                                                              ["process_0-of-1.json"]]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_hosts_make_the_global_batches(config, steps: int, seed: int = 3):
  """Simulated hosts (process_index/process_count given): their batches, stacked in process order, are the
  1-process batches of the same global batch size; and each host's iterator state resumes exactly."""
  single = iter(input_pipeline.create_train_dataset(config, 8, seed, process_index=0, process_count=1))
  reference = _take(single, steps)
  single.close()
  hosts = [iter(input_pipeline.create_train_dataset(config, 4, seed, process_index=p, process_count=2))
           for p in range(2)]
  per_host = [_take(it, steps) for it in hosts]
  for k, want in enumerate(reference):
    for key, value in want.items():
      np.testing.assert_array_equal(np.concatenate([per_host[0][k][key], per_host[1][k][key]]), value,
                                    err_msg=f"batch {k} {key}")
  return hosts


def test_hosts_read_their_rows_of_one_global_order(tiny_config):
  hosts = _assert_hosts_make_the_global_batches(tiny_config, steps=4)
  # Iterator checkpoints: a fresh host iterator set to host 1's state continues exactly as host 1 does.
  state = hosts[1].get_state()
  want = _take(hosts[1], 2)
  fresh = iter(input_pipeline.create_train_dataset(tiny_config, 4, 3, process_index=1, process_count=2))
  fresh.set_state(state)
  for a, b in zip(want, _take(fresh, 2)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  with pytest.raises(ValueError, match="process_index=2"):
    input_pipeline.create_train_dataset(tiny_config, 4, 3, process_index=2, process_count=2)


@pytest.mark.slow
def test_hosts_read_their_rows_with_grain_workers(tiny_config):
  """With mp_prefetch workers (each takes every W-th element and the workers' batches interleave) too."""
  tiny_config.dataset.num_workers = 2
  hosts = _assert_hosts_make_the_global_batches(tiny_config, steps=4)
  for it in hosts:
    it.close()


def test_iterator_state_moves_to_another_process_count(tiny_config, tmp_path):
  """A checkpoint whose iterator was saved by 2 processes restores on 1 (this pytest) at the same global position;
  states that cannot move (grain workers, processes out of step) are a CheckpointMismatchError, not damage."""
  data = iter(input_pipeline.create_train_dataset(tiny_config, 8, seed=0))
  _take(data, 2)
  manager = checkpointing.create_manager(str(tmp_path))
  state = {"x": np.arange(4, dtype=np.float32)}
  assert checkpointing.save(manager, 2, state, data, force=True)
  manager.wait_until_finished()
  want = _take(data, 2)
  directory = tmp_path / "checkpoints" / "2" / "data_iter"
  assert json.loads((directory / "process_0-of-1.json").read_text()) == {"next_index": 16}
  (directory / "process_0-of-1.json").unlink()
  for p in range(2):  # what 2 processes write after 2 global batches of 8: 4 rows each per batch
    (directory / f"process_{p}-of-2.json").write_text(json.dumps({"next_index": 8}))
  fresh = iter(input_pipeline.create_train_dataset(tiny_config, 8, seed=0))
  abstract = {"x": jax.ShapeDtypeStruct((4,), np.float32, sharding=sharding.replicated(
      sharding.create_mesh((("data", 1),), devices=jax.devices()[:1])))}
  restored = checkpointing.restore(checkpointing.create_manager(str(tmp_path), create=False), 2, abstract, fresh)
  np.testing.assert_array_equal(restored["x"], state["x"])
  for a, b in zip(want, _take(fresh, 2)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])

  assert checkpointing.moved_iterator_state({0: {"next_index": 16}}, {"next_index": 0}, 2) == {"next_index": 8}
  with pytest.raises(checkpointing.CheckpointMismatchError, match="without grain workers"):
    checkpointing.moved_iterator_state({0: {"workers_state": {}}, 1: {"workers_state": {}}}, {"next_index": 0}, 1)
  with pytest.raises(checkpointing.CheckpointMismatchError, match="do not split into 3 equal shares"):
    checkpointing.moved_iterator_state({0: {"next_index": 8}, 1: {"next_index": 8}}, {"next_index": 0}, 3)
  with pytest.raises(checkpointing.CheckpointMismatchError, match="do not split"):
    checkpointing.moved_iterator_state({0: {"next_index": 8}, 1: {"next_index": 4}}, {"next_index": 0}, 1)
