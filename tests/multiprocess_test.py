"""A real multi-process run: 2 CPU processes joined by jax.distributed (gloo collectives), each reading its own
shard: train with a checkpoint, resume from it, evaluate; process 0 writes the files."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_processes(binary: str, args: list[str], tmp_path, tag: str, n: int = 2) -> list[str]:
  """Runs `python -m avl_jax.{binary} --distributed ARGS` as n processes; returns their logs (asserting rc 0)."""
  port = _free_port()
  procs = []
  for i in range(n):
    env = dict(os.environ, JAX_PLATFORMS="cpu", AVL_NUM_PROCESSES=str(n), AVL_PROCESS_ID=str(i),
               JAX_COORDINATOR_ADDRESS=f"localhost:{port}", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="2")
    log = open(tmp_path / f"{tag}_{i}.log", "w")
    procs.append((subprocess.Popen([sys.executable, "-m", f"avl_jax.{binary}", "--distributed"] + args, cwd=REPO,
                                   env=env, stdout=log, stderr=subprocess.STDOUT), log))
  logs = []
  for i, (proc, log) in enumerate(procs):
    try:
      proc.wait(timeout=900)
    finally:
      if proc.poll() is None:
        proc.kill()
      log.close()
    text = (tmp_path / f"{tag}_{i}.log").read_text()
    assert proc.returncode == 0, f"process {i} of {tag}:\n{text[-4000:]}"
    logs.append(text)
  return logs


@pytest.mark.slow
def test_two_processes_train_resume_and_evaluate(tiny_data_dir, tmp_path):
  workdir = tmp_path / "w"
  config = [f"--config={REPO}/configs/synthetic_av.py:tiny,data_dir={tiny_data_dir}",
            "--config.checkpoint_every_steps=2", "--config.eval.audio_ablations=False", "--config.eval.baselines=False",
            "--config.eval.num_visualize=0", "--config.dataset.eval_splits=('test_single',)",
            f"--config.compilation_cache_dir={tmp_path / 'jit'}"]
  logs = _run_processes("main", config + ["--config.num_train_steps=2", f"--workdir={workdir}"], tmp_path, "train")
  for log in logs:
    assert "process 0/2" in log or "process 1/2" in log
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]

  logs = _run_processes("main", config + ["--config.num_train_steps=4", f"--workdir={workdir}"], tmp_path, "resume")
  for log in logs:
    assert "Resumed from step 2" in log
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]

  logs = _run_processes("evaluate", config + [f"--workdir={workdir}", "--step=4", f"--output_dir={tmp_path / 'out'}"],
                        tmp_path, "eval")
  # Each host predicted its own half of the 12 test examples; process 0 wrote the result, counting every item once.
  for log in logs:
    counts = re.findall(r"Predicted (\d+) examples of test_single on this host", log)
    assert counts == ["6"], counts
  with open(tmp_path / "out" / "test_single_4.json") as f:
    result = json.load(f)
  assert result["num_examples"] == 12 and result["num_items"] == 12 and result["step"] == 4
