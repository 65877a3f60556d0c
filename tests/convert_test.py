"""Tests of `python -m avl_jax.convert` and `config.init_from` (no torch needed: inputs are .npz state dicts)."""
import os
import subprocess
import sys

from flax import traverse_util
import jax
import numpy as np
import pytest

from avl_jax import checkpointing
from avl_jax import sharding
from avl_jax import train
from avl_jax.convert import convert_lib
from avl_jax.convert import avgn_weights
from avl_jax.models import avgn
from avl_jax.models import resnet

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FIELDS = dict(resnet_width=8, resnet_blocks=(1, 1, 1, 1), dim=32, depth_vis=1, depth_aud=1, num_heads=4,
                   mlp_ratio=2.0)


def _random_like(abstract, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), abstract)


def _flat(variables):
  return {(c,) + p: np.asarray(v) for c in variables for p, v in traverse_util.flatten_dict(dict(variables[c])).items()}


def _official_checkpoint(num_classes=8, seed=0, **fields):
  """Random variables of an AVGN and their official-style checkpoint ({'model': DDP state dict} flattened)."""
  model = avgn.AVGN(num_classes=num_classes, **fields)
  variables = _random_like(avgn_weights.abstract_model_variables(model), seed)
  # BatchNorm variances must be positive, or eval-mode maps are NaN (which evaluate refuses to score).
  variables["batch_stats"] = jax.tree_util.tree_map_with_path(
      lambda path, v: np.abs(v) + 0.5 if path[-1].key == "var" else v, variables["batch_stats"])
  state_dict = avgn_weights.variables_to_torch_state_dict(variables)
  state_dict = {f"module.{k}": v for k, v in state_dict.items()}
  # The dead audio han_encoder branch of the official checkpoint: skipped with a log line.
  state_dict["module.audio_encoder.han_encoder.norm_x.weight"] = np.ones(fields.get("dim", 512), np.float32)
  return variables, state_dict


def test_avgn_torch_roundtrip_infers_fields(tmp_path):
  variables, state_dict = _official_checkpoint(**TINY_FIELDS)
  path = tmp_path / "best.npz"
  np.savez(path, **state_dict)
  metadata = convert_lib.convert("avgn_torch", str(path), str(tmp_path / "out"), num_heads=4)
  assert metadata["model"] == {**TINY_FIELDS, "resnet_blocks": (1, 1, 1, 1)}
  assert metadata["num_classes"] == 8 and metadata["model_name"] == "avgn"
  assert len(metadata["source_sha256"]) == 64
  loaded, meta2 = checkpointing.load_variables(str(tmp_path / "out"))
  assert meta2["format"] == "avgn_torch"
  expected, got = _flat(variables), _flat(loaded)
  assert expected.keys() == got.keys()
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg="/".join(key))
  # A second conversion into the same directory is refused, not overwritten.
  with pytest.raises(FileExistsError):
    convert_lib.convert("avgn_torch", str(path), str(tmp_path / "out"), num_heads=4)


def test_avgn_torch_bad_keys_are_clear_errors(tmp_path):
  _, state_dict = _official_checkpoint(**TINY_FIELDS)
  extra = dict(state_dict, **{"module.fc_extra.weight": np.zeros((3, 3), np.float32)})
  np.savez(tmp_path / "extra.npz", **extra)
  with pytest.raises(ValueError, match=r"Unexpected key 'fc_extra.weight' \(shape \(3, 3\)\)"):
    convert_lib.convert("avgn_torch", str(tmp_path / "extra.npz"), str(tmp_path / "o1"), num_heads=4)
  bad = dict(state_dict)
  bad["module.aud_proj.weight"] = np.zeros((32, 7), np.float32)
  np.savez(tmp_path / "bad.npz", **bad)
  with pytest.raises(ValueError, match=r"Shape mismatch for 'aud_proj.weight': state dict has \(32, 7\), "
                                       r"the model expects \(32, 64\)"):
    convert_lib.convert("avgn_torch", str(tmp_path / "bad.npz"), str(tmp_path / "o2"), num_heads=4)
  missing = {k: v for k, v in state_dict.items() if k != "module.fc_cls.bias"}
  np.savez(tmp_path / "missing.npz", **missing)
  with pytest.raises(ValueError, match=r"1 key\(s\) missing from the state dict, e.g. \['fc_cls.bias'\]"):
    convert_lib.convert("avgn_torch", str(tmp_path / "missing.npz"), str(tmp_path / "o3"), num_heads=4)
  with pytest.raises(ValueError, match="num_heads=5 does not divide the token width D=32"):
    convert_lib.convert("avgn_torch", str(tmp_path / "missing.npz"), str(tmp_path / "o4"), num_heads=5)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    convert_lib.convert("avgn_torch", str(tmp_path / "nope.pth"), str(tmp_path / "o5"))
  assert not any(os.path.exists(tmp_path / f"o{i}" / "variables") for i in range(1, 6))


def test_torchvision_resnet18_to_imgnet_subtree(tmp_path):
  abstract = jax.eval_shape(lambda: resnet.ResNet(width=64, blocks=(2, 2, 2, 2)).init(
      jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False))
  encoder = _random_like(abstract, seed=3)
  state_dict = avgn_weights.variables_to_torch_state_dict(encoder)
  state_dict["fc.weight"] = np.zeros((1000, 512), np.float32)
  state_dict["fc.bias"] = np.zeros((1000,), np.float32)
  assert len(state_dict) == 122  # As torchvision's resnet18 state dict (incl. num_batches_tracked, fc).
  np.savez(tmp_path / "resnet18.npz", **state_dict)
  metadata = convert_lib.convert("torchvision_resnet18", str(tmp_path / "resnet18.npz"), str(tmp_path / "r18"))
  assert metadata["subtree"] == "imgnet" and metadata["num_parameters"] == 11_176_512 + 9_600
  loaded, _ = checkpointing.load_variables(str(tmp_path / "r18"))
  assert set(loaded) == {"params", "batch_stats"} and set(loaded["params"]) == {"imgnet"}
  np.testing.assert_array_equal(loaded["params"]["imgnet"]["layer4_1"]["conv2"]["kernel"],
                                encoder["params"]["layer4_1"]["conv2"]["kernel"])


def test_init_from_replaces_variables_and_rejects_mismatches(tiny_config, tmp_path):
  """config.init_from: a converted AVGN of the tiny config's shape replaces every variable of a fresh state."""
  config = tiny_config
  variables, state_dict = _official_checkpoint(num_classes=config.dataset.num_classes, seed=5, **TINY_FIELDS)
  np.savez(tmp_path / "tiny.npz", **state_dict)
  convert_lib.convert("avgn_torch", str(tmp_path / "tiny.npz"), str(tmp_path / "tiny"), num_heads=4)
  mesh = sharding.create_mesh(config.mesh)
  fresh = train.build(config, mesh).init_fn(jax.random.PRNGKey(0))
  state = train.apply_init_from(fresh, str(tmp_path / "tiny"), mesh)
  got = _flat({"params": state.params, "batch_stats": state.batch_stats})
  expected = _flat(variables)
  assert got.keys() == expected.keys()
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg="/".join(key))
  assert state.params["av_token"].sharding.is_fully_replicated

  # ImageNet ResNet-18 weights do not fit the tiny encoder: an error naming the variable and both shapes.
  encoder = {"params": {"imgnet": {"conv1": {"kernel": np.zeros((7, 7, 3, 64), np.float32)}}}}
  checkpointing.save_variables(str(tmp_path / "r18"), encoder, {"format": "torchvision_resnet18"})
  with pytest.raises(ValueError, match=r"params/imgnet/conv1/kernel has shape \(7, 7, 3, 64\), the model "
                                       r"expects \(7, 7, 3, 8\)"):
    train.apply_init_from(fresh, str(tmp_path / "r18"), mesh)
  with pytest.raises(FileNotFoundError, match="not a converted-weights directory"):
    train.apply_init_from(fresh, str(tmp_path), mesh)


def test_convert_command_line(tmp_path):
  _, state_dict = _official_checkpoint(**TINY_FIELDS)
  np.savez(tmp_path / "best.npz", **state_dict)
  cmd = [sys.executable, "-m", "avl_jax.convert", "--format=avgn_torch", f"--input={tmp_path / 'best.npz'}",
         f"--output={tmp_path / 'out'}", "--num_heads=4"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Converted avgn_torch" in done.stdout
  assert os.path.exists(tmp_path / "out" / checkpointing.VARIABLES_METADATA)
  # Running again into the same directory fails cleanly with exit code 1.
  again = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 1 and "already exists" in again.stderr


def test_evaluate_converted_weights(tiny_config, tmp_path):
  """`evaluate --weights`: an official-format AVGN of the tiny config's shape is scored without training."""
  from avl_jax import evaluate  # pylint: disable=g-import-not-at-top
  config = tiny_config
  config.dataset.eval_splits = ("test_duet",)
  _, state_dict = _official_checkpoint(num_classes=config.dataset.num_classes, seed=7, **TINY_FIELDS)
  np.savez(tmp_path / "best.npz", **state_dict)
  convert_lib.convert("avgn_torch", str(tmp_path / "best.npz"), str(tmp_path / "weights"), num_heads=4)
  results = evaluate.evaluate_weights(config, str(tmp_path / "work"), str(tmp_path / "weights"))
  assert results["test_duet"]["step"] == 0 and results["test_duet"]["num_items"] > 0
  assert os.path.exists(tmp_path / "work" / "eval" / "test_duet_0.json")
  # Negative BatchNorm variances make NaN maps: refused with a clear error, not scored as garbage.
  broken = {k: (-v if k.endswith("running_var") else v) for k, v in state_dict.items()}
  np.savez(tmp_path / "broken.npz", **broken)
  convert_lib.convert("avgn_torch", str(tmp_path / "broken.npz"), str(tmp_path / "broken"), num_heads=4)
  with pytest.raises(FloatingPointError, match="non-finite heat maps"):
    evaluate.evaluate_weights(config, str(tmp_path / "work_broken"), str(tmp_path / "broken"))
  # A partial set (the encoder only) cannot be evaluated on its own.
  encoder = {"params": {"imgnet": {"conv1": {"kernel": np.zeros((7, 7, 3, 8), np.float32)}}}}
  checkpointing.save_variables(str(tmp_path / "partial"), encoder, {"format": "torchvision_resnet18"})
  with pytest.raises(ValueError, match=r"holds 1 of the \d+ variables of the model"):
    evaluate.evaluate_weights(config, str(tmp_path / "work"), str(tmp_path / "partial"))
