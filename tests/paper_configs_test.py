"""Every paper config: the official recipe at full scale, and its `runlocal` form trains and evaluates."""
import json
import math
import os

import numpy as np
import pytest

from avl_jax import config_lib
from avl_jax import resolve
from avl_jax import train
from avl_jax.pipeline import data_source
from avl_jax.recipes import avgn as avgn_recipe
from avl_jax.recipes import tvsl as tvsl_recipe

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = sorted(avgn_recipe.SETTINGS)


def load_config(name: str, arg: str = ""):
  module = config_lib.load_module(os.path.join(REPO_ROOT, "configs", f"avgn_{name}.py"))
  assert f"configs/avgn_{name}.py" in module.__doc__  # The docstring shows the exact commands.
  return module.get_config(arg)


def test_every_setting_has_a_config_file():
  files = sorted(f[len("avgn_"):-len(".py")] for f in os.listdir(os.path.join(REPO_ROOT, "configs"))
                 if f.startswith("avgn_"))
  assert files == SETTINGS


@pytest.mark.parametrize("name", SETTINGS)
def test_paper_recipe(name):
  config = load_config(name)
  paper = avgn_recipe.SETTINGS[name]
  assert config.dataset.name == paper["dataset"] and config.dataset.num_classes == paper["num_classes"]
  assert config.dataset.mix == paper["mix"]
  assert (config.model.resnet_width, tuple(config.model.resnet_blocks), config.model.dim) == (64, (2, 2, 2, 2), 512)
  assert (config.model.depth_vis, config.model.depth_aud, config.model.num_heads) == (3, 3, 8)
  assert (config.model.tau, config.model.attn_assign, config.model.drop_path) == (0.03, "soft", 0.1)
  assert (config.optimizer.learning_rate, config.optimizer.schedule, config.batch_size) == (1e-4, "constant", 128)
  assert config.num_epochs == 100 and config.eval.protocol == "official"
  assert (config.dataset.image_size, config.dataset.resize_size, config.dataset.audio_seconds) == (224, 246, 3.0)
  assert config.model.loss_groups == 1 and config.model.bn_groups == 1
  assert config.eval.official_duet_gt_bug == (name == "vggsound_duet")  # the official Duet numbers' GT
  with pytest.raises(ValueError, match="Unknown config argument 'runlcal'"):
    load_config(name, "runlcal")


def test_num_epochs_sets_the_step_count(tiny_config):
  config = tiny_config
  config.num_epochs = 2.5
  source = data_source.open_source(config.dataset.name, "train", config.dataset.data_dir, per_process=False)
  assert resolve.num_train_steps(config) == math.ceil(2.5 * len(source) / config.batch_size)
  config.num_epochs = None
  assert resolve.num_train_steps(config) == config.num_train_steps


@pytest.mark.parametrize("name", SETTINGS)
def test_runlocal_trains_and_evaluates(name, tiny_data_dir, tmp_path):
  config = load_config(name, f"runlocal,data_dir={tiny_data_dir}")
  results = train.train_and_evaluate(config, str(tmp_path))
  split = "test_duet" if avgn_recipe.SETTINGS[name]["mix"] else "test_single"
  assert set(results) == {split}
  metrics = results[split]["metrics"]["model"]
  assert np.isfinite(metrics["ciou_mean"]) and 0.0 <= metrics["auc"] <= 1.0
  with open(tmp_path / "eval" / f"{split}_2.json") as f:
    assert json.load(f)["step"] == 2
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def _max_test_boxes(dataset: str) -> int:
  """The most GT boxes one test example of `dataset` carries, from the bundled official metadata."""
  import csv  # pylint: disable=g-import-not-at-top
  from avl_jax.datasets import metadata  # pylint: disable=g-import-not-at-top
  bundled = metadata.BUNDLED_DIR
  variant = dataset.split("/")[1].removesuffix("_44k")
  if dataset.startswith("vgginstruments"):
    return 0  # mask GT
  if dataset.startswith("music"):
    entries = json.loads((bundled / f"music_{variant}.json").read_text())
    return max(sum(key.startswith("bbox") for key in entry) for entry in entries)
  boxes = {entry["file"]: len(entry["bbox"]) for entry in json.loads((bundled / "vggss.json").read_text())}
  with open(bundled / f"vggsound_{variant}_test.csv") as f:
    rows = list(csv.reader(f))
  return max(sum(boxes.get(cell, 0) for cell in row) for row in rows)


def test_max_boxes_fits_every_official_test_example():
  """A real test set never overflows the padded boxes (the VGG-SS duet pairs carry up to 11)."""
  configs = [avgn_recipe.paper_config(name, None) for name in avgn_recipe.SETTINGS]
  configs += [tvsl_recipe.paper_config(name, None) for name in tvsl_recipe.SETTINGS]
  bounds = {}
  for config in configs:
    name = config.dataset.name
    bounds.setdefault(name, _max_test_boxes(name))
    assert config.dataset.max_boxes >= bounds[name], (name, bounds[name])
  assert bounds["vggsound/duet"] == 11 and bounds["vggsound/single"] == 7 and bounds["music/duet"] == 2
