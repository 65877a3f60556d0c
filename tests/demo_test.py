"""launch/demo.sh (the README's main command) end to end on synthetic_av/tiny, with relative paths."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_script_builds_trains_evaluates_with_relative_paths(tmp_path):
  env = dict(os.environ, AVL_SKIP_INSTALL="1", AVL_DATA_DIR="data",
             PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}")
  result = subprocess.run(["bash", str(REPO / "launch" / "demo.sh"), "wd", "tiny,steps=2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-3000:]
  assert "demo finished in" in result.stdout
  # A readable log: no Orbax internals, the final checkpoint evaluated once (one table per split).
  assert "checkpoint_manager.py" not in output and "atomicity.py" not in output
  # Training's two tables, then the comparison table of test_duet (`evaluate --summarize`).
  assert output.count("sources, protocol official):") == 3 and output.count("test_single (step 2,") == 1
  # Then test_duet once more with predicted classes: the evaluate binary prints its table once (not also logged).
  assert output.count("sources, protocol official, predicted classes):") == 1
  summary = output[output.index("every method in one table"):]
  for label in ("model (oracle classes)", "model (predicted classes)", "shuffled_audio (predicted classes)",
                "center_prior", "random"):
    assert label in summary, summary[:3000]
  assert (tmp_path / "wd" / "eval" / "test_duet_2_predicted.json").exists()
  # The workdir and the dataset land where the caller pointed, not in the repository.
  assert (tmp_path / "data" / "synthetic_av" / "tiny").is_dir()
  for split in ("test_single", "test_duet"):
    result_json = json.loads((tmp_path / "wd" / "eval" / f"{split}_2.json").read_text())
    assert result_json["step"] == 2 and set(result_json["metrics"]) == {
        "model", "silent_audio", "shuffled_audio", "swapped_classes", "center_prior", "random"}
    assert (tmp_path / "wd" / "eval" / f"{split}_2.png").stat().st_size > 0
  assert not (REPO / "wd").exists()
