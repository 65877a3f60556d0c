"""The sound's part in the maps: audio ablations, the audio classifier's metric, predicted classes for AVGN,
the `loc_audio_grad` switch and the image ResNet's stage strides (issue: sound drives the maps)."""
import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avl_jax import eval_lib
from avl_jax import families
from avl_jax import sharding
from avl_jax import train
from avl_jax.evaluation import scoring
from avl_jax.models import avgn
from avl_jax.models import resnet


def test_shuffled_audio_is_a_derangement_of_the_valid_rows():
  waveform = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  valid = np.array([True, True, False, True, True])
  shuffled, last = eval_lib.shuffled_audio(waveform, valid, None)
  assert shuffled[:, 0].tolist() == [1, 3, 2, 4, 0]  # each valid row takes the next valid row's audio
  np.testing.assert_array_equal(last, waveform[0])
  # A batch with one valid example takes the previous batch's waveform; padding rows are left alone.
  single, _ = eval_lib.shuffled_audio(waveform[:2] + 10, np.array([False, True]), last)
  assert single[:, 0].tolist() == [10, 0]


def test_swapped_classes_give_every_source_a_class_that_is_not_its_own():
  source_class = np.array([[3, 5], [2, -1], [4, 4], [-1, -1], [7, 1]], np.int32)
  swapped = eval_lib.swapped_classes(source_class, 8)
  # Two sources trade classes; one source (or two of one class) takes the next class id; padding stays.
  assert swapped.tolist() == [[5, 3], [3, -1], [5, 5], [-1, -1], [1, 7]]
  assert swapped.dtype == source_class.dtype
  assert eval_lib.swapped_classes(np.array([[7, -1]]), 8).tolist() == [[0, -1]]  # wraps around


def test_audio_classification_map_top1_and_chance():
  source_class = np.array([[0, 1], [2, -1], [1, -1], [3, 2]])
  perfect = np.full((4, 4), -5.0)
  perfect[[0, 0, 1, 2, 3, 3], [0, 1, 2, 1, 3, 2]] = 5.0
  got = scoring.audio_classification(perfect, source_class, multihost=False)
  assert got["map"] == pytest.approx(1.0) and got["top1"] == 1.0 and got["num_examples"] == 4
  assert got["chance"] == pytest.approx(np.mean([1 / 4, 2 / 4, 2 / 4, 1 / 4]))
  inverted = scoring.audio_classification(-perfect, source_class, multihost=False)
  assert inverted["map"] < got["chance"] + 0.2 and inverted["top1"] == 0.0


def _tiny_avgn(**overrides):
  fields = dict(num_classes=5, resnet_width=4, resnet_blocks=(1, 1, 1, 1), dim=16, depth_vis=1, depth_aud=1,
                num_heads=2, mlp_ratio=2.0, drop_path=0.0, sample_rate=16000.0)
  return avgn.AVGN(**{**fields, **overrides})


def _inputs(batch=3):
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.normal(size=(batch, 64, 64, 3)), jnp.float32)
  waveform = jnp.asarray(rng.uniform(-0.5, 0.5, size=(batch, 4000)), jnp.float32)
  return image, waveform


def test_avgn_predicted_classes_are_the_audio_classifier_top_k():
  image, waveform = _inputs()
  oracle = _tiny_avgn()
  variables = oracle.init(jax.random.key(0), image, waveform, jnp.zeros(3, jnp.int32), jnp.zeros((3, 5)),
                          train=False)
  class_ids = jnp.array([[0, 1], [2, -1], [4, 3]])
  maps, classes = oracle.apply(variables, image, waveform, class_ids, return_classes=True, method=oracle.localize)
  assert maps.shape == (3, 2, 2, 2)
  np.testing.assert_array_equal(classes["valid"], class_ids >= 0)
  predicted = _tiny_avgn(class_source="predicted", top_k=3, score_threshold=0.5)
  pmaps, pclasses = predicted.apply(variables, image, waveform, class_ids, return_classes=True,
                                    method=predicted.localize)
  scores = np.asarray(classes["class_scores"])
  want = np.argsort(-scores, axis=1)[:, :3]
  np.testing.assert_array_equal(pclasses["class_ids"], want)
  probs = 1 / (1 + np.exp(-np.take_along_axis(scores, want, axis=1)))
  np.testing.assert_array_equal(pclasses["valid"], (probs >= 0.5) | (np.arange(3) == 0))
  # The map of a predicted class is the oracle map of that class.
  again = oracle.apply(variables, image, waveform, jnp.asarray(want), method=oracle.localize)
  np.testing.assert_allclose(pmaps, again, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loc_audio_grad", [True, False])
def test_loc_audio_grad_switch_stops_the_localization_gradient_at_the_audio_path(loc_audio_grad):
  image, waveform = _inputs(4)
  model = _tiny_avgn(loc_audio_grad=loc_audio_grad)
  visual_class, label = jnp.array([0, 1, 2, 3]), jax.nn.one_hot(jnp.array([0, 1, 2, 3]), 5)
  variables = model.init(jax.random.key(0), image, waveform, visual_class, label, train=False)

  def loc_loss(params):
    (losses, _), _ = model.apply({**variables, "params": params}, image, waveform, visual_class, label,
                                 train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
    return losses["loss_loc"]

  grads = jax.grad(loc_loss)(variables["params"])
  audio_path = sum(float(jnp.sum(jnp.abs(g))) for name in ("audnet", "aud_proj", "audio_encoder", "av_token")
                   for g in jax.tree.leaves(grads[name]))
  image_path = sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads["imgnet"]))
  assert image_path > 0
  assert (audio_path > 0) == loc_audio_grad


def test_resnet_stage_strides_set_the_map_resolution():
  x = jnp.zeros((1, 64, 64, 3))
  for strides, side in (((1, 2, 2, 2), 2), ((1, 2, 1, 1), 8), ((1, 1, 1, 1), 16)):
    net = resnet.ResNet(width=4, blocks=(1, 1, 1, 1), strides=strides)
    out, _ = net.init_with_output(jax.random.key(0), x, train=False)
    assert out.shape == (1, side, side, 32)
  with pytest.raises(ValueError, match="one stride per stage"):
    resnet.ResNet(width=4, blocks=(1, 1, 1, 1), strides=(1, 2)).init(jax.random.key(0), x, train=False)


@pytest.fixture(scope="module")
def tiny_state(tiny_data_dir):
  from avl_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs",
                                               "synthetic_av.py"), f"tiny,data_dir={tiny_data_dir}")
  mesh = sharding.create_mesh(config.mesh)
  setup = train.build(config, mesh)
  return config, mesh, setup.model, setup.init_fn(jax.random.PRNGKey(0))


def test_evaluation_scores_audio_ablations_and_the_audio_classifier(tiny_state, tmp_path):
  config, mesh, model, state = tiny_state
  result = eval_lib.evaluate_split(config, model, state.variables, mesh, str(tmp_path), 3, "test_duet")
  assert list(result["metrics"]) == list(scoring.METHODS)
  assert result["class_source"] == "oracle"
  audio = result["audio_classification"]
  assert 0 < audio["map"] <= 1 and audio["chance"] == pytest.approx(2 / 8, abs=0.15)
  assert result["silent_audio/audio_classification"]["num_examples"] == audio["num_examples"]
  # The ablated passes really replace the audio: other maps and class scores (the tiny maps are 1 x 1, so
  # their metrics cannot move), the same examples.
  pred = eval_lib.predict_split(config, model, state.variables, mesh, "test_duet")
  for name in scoring.ABLATIONS:
    assert pred[name]["maps"].shape == pred["maps"].shape
    assert not np.allclose(pred[name]["maps"], pred["maps"])
  for name in scoring.AUDIO_ABLATIONS:
    assert not np.allclose(pred[name]["class_scores"], pred["class_scores"])
  # Swapping the classes leaves the audio alone: each source's map is the map of the class it was given.
  assert set(pred["swapped_classes"]) == {"maps"}
  assert "swapped_classes/audio_classification" not in result
  with open(tmp_path / "eval" / "test_duet_3.csv") as f:
    header = next(csv.reader(f))
  assert {"silent_audio_ciou", "shuffled_audio_ap", "center_prior_ciou"} <= set(header)

  config = config.copy_and_resolve_references()
  config.eval.audio_ablations = False
  config.model.class_source = "predicted"
  result = eval_lib.evaluate_split(config, families.of(config).create_model(config), state.variables, mesh,
                                   str(tmp_path), 4, "test_duet")
  assert list(result["metrics"]) == ["model", *scoring.BASELINES]
  assert result["class_source"] == "predicted"
  assert 0 <= result["class_recall"] <= 1 and result["num_predicted_mean"] == 2.0
  assert os.path.exists(tmp_path / "eval" / "test_duet_4_predicted.json")  # beside, not over, the oracle files
  assert not os.path.exists(tmp_path / "eval" / "test_duet_4.json")


def test_tensorboard_gets_ablations_audio_map_and_heatmaps(tiny_state, tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  config, mesh, model, state = tiny_state
  writer = metric_writers.create_default_writer(str(tmp_path / "tb"), asynchronous=False)
  eval_lib.evaluate_all(config, model, state.variables, mesh, str(tmp_path), 5, writer, splits=["test_duet"])
  writer.flush()
  tags = set()
  for name in os.listdir(tmp_path / "tb"):
    for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "tb" / name)):
      tags.update(v.tag for v in event.summary.value)
  assert {"eval/test_duet/pixel_ap", "eval/test_duet/silent_audio/pixel_ap", "eval/test_duet/shuffled_audio/ciou_mean",
          "eval/test_duet/center_prior/pixel_ap", "eval/test_duet/audio_map", "eval/test_duet/heatmaps"} <= tags


def test_heatmap_png_has_a_column_per_used_source_and_class_names(tiny_state, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from avl_jax.datasets.synthetic_av import generator  # pylint: disable=g-import-not-at-top
  from avl_jax.pipeline import data_source  # pylint: disable=g-import-not-at-top
  config, mesh, model, state = tiny_state
  assert data_source.dataset_class_names(config) == generator.class_names(8)
  tile = 224 + 4
  for split, columns in (("test_single", 2), ("test_duet", 3)):  # the frame, then one panel per source
    eval_lib.evaluate_split(config, model, state.variables, mesh, str(tmp_path), 6, split)
    with Image.open(tmp_path / "eval" / f"{split}_6.png") as image:
      assert image.size == (columns * tile, config.eval.num_visualize * tile)
