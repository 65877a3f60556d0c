"""T-VSL in the training stack: configs, the canvas pipeline, the text bank, the schedule, canvas scoring, and
every T-VSL config (and the Table 7 sweep) trained and evaluated in its `runlocal` form."""
import json
import math
import os

import jax
import numpy as np
from PIL import Image
import pytest

from avl_jax import config_lib
from avl_jax import eval_lib
from avl_jax import families
from avl_jax import input_pipeline
from avl_jax import optimizers
from avl_jax import sweep_lib
from avl_jax import train
from avl_jax.evaluation import scoring
from avl_jax.families import tvsl_bank
from avl_jax.models.tvsl import text_bank as text_bank_lib
from avl_jax.pipeline import data_config
from avl_jax.pipeline import data_source
from avl_jax.pipeline import image_ops
from avl_jax.recipes import tvsl as tvsl_recipe

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = sorted(tvsl_recipe.SETTINGS)


def load_module(name: str):
  path = os.path.join(REPO_ROOT, "configs", f"tvsl_{name}.py")
  module = config_lib.load_module(path)
  assert f"configs/tvsl_{name}.py" in module.__doc__  # The docstring shows the exact commands.
  return module


@pytest.fixture(scope="module")
def bpe_path(golden_dir):
  return str(golden_dir / "audioclip" / "bpe_simple_vocab_16e6.txt.gz")


def test_every_setting_has_a_config_file():
  files = sorted(f[len("tvsl_"):-len(".py")] for f in os.listdir(os.path.join(REPO_ROOT, "configs"))
                 if f.startswith("tvsl_") and f != "tvsl_table7.py")
  assert files == SETTINGS


@pytest.mark.parametrize("name", SETTINGS)
def test_paper_recipe(name):
  config = load_module(name).get_config("")
  paper = tvsl_recipe.SETTINGS[name]
  assert config.model_name == "tvsl" and config.dataset.name == paper["dataset"]
  assert config.dataset.name.endswith("_44k") and config.dataset.sample_rate == 44100
  assert (config.dataset.audio_seconds, config.dataset.image_size, config.dataset.resize_size) == (5.0, 224, 246)
  assert config.dataset.canvas and config.dataset.mix and config.dataset.image_norm == "clip"
  assert config.dataset.eval_resize == "torch_tensor"
  assert (config.optimizer.learning_rate, config.optimizer.schedule) == (0.01, "cosine_tvsl")
  assert (config.batch_size, config.num_epochs, config.eval.protocol) == (256, 100, "official")
  model = families.of(config).create_model(config)  # Released tower sizes and the official switches by default.
  assert (model.embed_dim, tuple(model.image_layers), model.text_layers) == (1024, (3, 4, 6, 3), 12)
  assert (model.bn_mode, model.audio_scale, model.pos_interp, model.class_source, model.label_order) == (
      "train_stats", "official", "official_1d", "oracle", "official")
  assert model.invert_map
  with pytest.raises(ValueError, match="Unknown config argument 'runlcal'"):
    load_module(name).get_config("runlcal")
  with pytest.raises(ValueError, match="model='avgn'"):
    load_module(name).get_config("model=avgn")


def test_model_variants_and_bad_switches():
  single = tvsl_recipe.paper_config("vggsound_duet", "model=tvsl_single_stage")
  assert single.model_name == "tvsl_single_stage" and single.dataset.canvas
  avgn = tvsl_recipe.paper_config("vggsound_duet", "model=avgn_audioclip")
  assert avgn.model_name == "avgn_audioclip" and not avgn.dataset.canvas and avgn.dataset.image_norm == "clip"
  assert (avgn.optimizer.learning_rate, avgn.batch_size) == (1e-4, 128)
  config = tvsl_recipe.paper_config("vggsound_duet", "")
  config.model.dtype = "bfloat16"  # the bf16 option of the frozen towers
  assert families.of(config).create_model(config).dtype == jax.numpy.bfloat16
  config.model.bn_mode = "frozne"
  with pytest.raises(ValueError, match="bn_mode"):
    families.of(config).create_model(config)
  config = tvsl_recipe.paper_config("vggsound_duet", "")
  config.dataset.image_norm = "imagenet"
  with pytest.raises(ValueError, match="image_norm"):
    families.of(config).create_model(config)


def test_cosine_tvsl_schedule_is_the_official_formula():
  config = tvsl_recipe.paper_config("vggsound_duet", "")
  config.num_train_steps = 1000  # 10 steps per epoch over 100 epochs
  schedule = optimizers.learning_rate_schedule(config)
  for step in (0, 5, 10, 500, 999):
    epoch = 1 + step / 10  # epoch counted from 1, advanced every iteration
    expected = 0.01 * 0.5 * (1 + math.cos(math.pi * epoch / 100))
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-9)
  config.num_epochs = None
  with pytest.raises(ValueError, match="cosine_tvsl"):
    optimizers.learning_rate_schedule(config)


def test_vggss_text_bank_order_and_label_rows():
  """The bank is sorted display names; dataset labels (sorted underscore names) map to rows, and differ exactly
  at VGG-SS's 29/30 (the official label_order quirk)."""
  config = tvsl_recipe.paper_config("vggsound_duet", "")
  names, rows = tvsl_bank.bank_names(config)
  assert len(names) == 221 and names == sorted(names)
  labels = tvsl_bank.dataset_class_names(config)
  assert [text_bank_lib.underscore_name(names[r]) for r in rows] == labels
  assert np.flatnonzero(rows != np.arange(221)).tolist() == [29, 30]
  np.testing.assert_array_equal(rows, np.argsort(text_bank_lib.official_label_indices(names)))
  config.text.extra_classes = ("theremin solo",)
  names, _ = tvsl_bank.bank_names(config)
  assert names[-1] == "theremin solo" and len(names) == 222
  config.text.extra_classes = ("whale calling",)  # already a VGG-SS class
  with pytest.raises(ValueError, match="already in the bank"):
    tvsl_bank.bank_names(config)
  assert tvsl_bank.display_name("acoustic_guitar") == "acoustic guitar"


def test_missing_bpe_vocabulary_is_a_clear_error(tiny_data_dir):
  config = tvsl_recipe.paper_config("vggsound_duet", f"runlocal,data_dir={tiny_data_dir}")
  with pytest.raises(FileNotFoundError, match="bpe_simple_vocab_16e6"):
    tvsl_bank.tokenizer(config)


def test_canvas_training_batches(tiny_data_dir, bpe_path):
  config = tvsl_recipe.paper_config("vggsound_duet", f"runlocal,data_dir={tiny_data_dir},bpe_path={bpe_path}")
  size = config.dataset.image_size
  batch = next(iter(input_pipeline.create_train_dataset(config, 4, seed=0)))
  assert batch["image"].shape == (4, size, 2 * size, 3)
  assert batch["source_class"].shape == (4, 2)
  assert np.all(batch["source_class"][:, 0] != batch["source_class"][:, 1])  # partner of another class
  # uint8 halves (CLIP-normalised in the step), two different pictures.
  assert batch["image"].dtype == np.uint8
  normalized = np.asarray(image_ops.device_normalize_image(batch["image"], "clip"))
  np.testing.assert_allclose(normalized[0], image_ops.normalize_image(Image.fromarray(batch["image"][0]), "clip"),
                             atol=1e-6)
  assert not np.array_equal(batch["image"][:, :, :size], batch["image"][:, :, size:])
  # The same seed gives the same batch (resumable); without mixing the canvas is refused.
  again = next(iter(input_pipeline.create_train_dataset(config, 4, seed=0)))
  np.testing.assert_array_equal(again["image"], batch["image"])
  config.dataset.mix = False
  with pytest.raises(data_source.DataError, match="canvas"):
    input_pipeline.create_train_dataset(config, 4, seed=0)


def test_canvas_scoring_places_gt_on_its_half():
  """docs/metrics.md T10: a map that is hot exactly on source 0's box of the left frame scores cIoU 1 on the
  canvas; the same map for source 1 (whose GT lies on the right half) scores 0."""
  config = tvsl_recipe.paper_config("vggsound_duet", "")
  gt = np.zeros((2, 224, 224), np.float32)
  gt[:, :112, :112] = 1
  raw = np.zeros((2, 224, 448), np.float32)
  raw[:, :112, :112] = -1.0  # inverted: low raw = high score
  maps = np.zeros((2, 2, 224, 448), np.float32)
  maps[[0, 1], [0, 1]] = raw  # item i: example i, source i
  inputs = families.of(config).scoring_inputs(config, {"canvas": True, "maps": maps}, np.array([0, 1]),
                                              np.array([0, 1]), gt, np.array([1, 1]))
  placed, scores = inputs.gt, inputs.raw_maps
  assert placed.shape == (2, 224, 448) and placed[0, :, :224].sum() == placed[1, :, 224:].sum() == 112 * 112
  assert (inputs.map_range, inputs.binarize, inputs.tau) == ("unit", "fixed", None)
  summaries, per_items = scoring.score_items(scores, placed, np.array([1, 1]), protocol="official", tau=None,
                                             map_range="unit", binarize="fixed", baselines=False,
                                             multihost=False)
  np.testing.assert_allclose(per_items["model"]["ciou"], [1.0, 0.0])
  np.testing.assert_allclose(per_items["model"]["pixel_ap"][0], 1.0)
  assert summaries["model"]["binarize"] == "fixed"


def _check_run(results, split, workdir):
  metrics = results[split]["metrics"]["model"]
  assert np.isfinite(metrics["ciou_mean"]) and 0.0 <= metrics["auc"] <= 1.0
  with open(os.path.join(workdir, "eval", f"{split}_2.json")) as f:
    saved = json.load(f)
  assert saved["step"] == 2 and saved["num_items"] > 0
  assert os.path.exists(os.path.join(workdir, "eval", f"{split}_2.png"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
  return saved


@pytest.mark.slow
@pytest.mark.parametrize("name", SETTINGS)
def test_runlocal_trains_and_evaluates(name, tiny_data_dir, bpe_path, tmp_path):
  config = load_module(name).get_config(f"runlocal,data_dir={tiny_data_dir},bpe_path={bpe_path}")
  results = train.train_and_evaluate(config, str(tmp_path))
  split = "test_duet" if tvsl_recipe.SETTINGS[name]["max_sources"] == 2 else "test_single"
  assert set(results) == {split}
  saved = _check_run(results, split, str(tmp_path))
  assert saved["map_range"] == "tvsl_inverted_minmax" and not saved["canvas"]


@pytest.mark.slow
def test_table7_sweep_runlocal(tiny_data_dir, bpe_path, tmp_path):
  """The Table 7 sweep: every cell trains and evaluates; the table has a number in every column."""
  path = os.path.join(REPO_ROOT, "configs", "tvsl_table7.py")
  args = f"runlocal,data_dir={tiny_data_dir},bpe_path={bpe_path}"
  text = sweep_lib.run(path, args, str(tmp_path))
  rows = [line for line in text.splitlines()[2:]]
  assert [row.split("|")[1].strip() for row in rows] == ["avgn_audioclip", "tvsl_single_stage", "tvsl"]
  assert all("-" not in row.split("|", 2)[2] for row in rows), text
  assert (tmp_path / "table.md").read_text().strip() == text
  with pytest.raises(ValueError, match="not cells"):
    sweep_lib.run(path, args, str(tmp_path), only=["nope"])


@pytest.mark.slow
def test_canvas_eval_on_a_partner_frame_test_set(bpe_path, tmp_path):
  """vggsound/duet_44k (fixed partners, both frames stored): T-VSL is scored on the [own | partner] canvas, GT of
  source s on its half, and the PNG shows the canvas."""
  from avl_jax import sharding  # pylint: disable=g-import-not-at-top
  from avl_jax.datasets import fake_raw  # pylint: disable=g-import-not-at-top
  tree = fake_raw.make_tree("vggsound", "duet_44k", str(tmp_path / "raw"), "frames")
  fake_raw.build("vggsound/duet_44k", tree.root, str(tmp_path / "tfds"), {"splits": ("test",)})
  config = tvsl_recipe.paper_config("vggsound_duet", f"runlocal,bpe_path={bpe_path}")
  ds = config.dataset
  ds.name, ds.data_dir, ds.num_classes, ds.sample_rate = "vggsound/duet_44k", str(tmp_path / "tfds"), 221, 44100
  ds.eval_splits = ("test",)
  mesh = sharding.create_mesh(config.mesh)
  setup = train.build(config, mesh)
  model = setup.model
  state = setup.init_fn(jax.random.PRNGKey(0))
  consts = train.make_consts(setup, state.params, mesh)
  assert consts["text_bank"].shape == (221, config.model.embed_dim)
  localize_fn = eval_lib.make_localize_fn(config, model, mesh)
  pred = eval_lib.predict_split(config, model, state.variables, mesh, "test", localize_fn, consts=consts)
  size = ds.image_size
  assert pred["canvas"] and pred["maps"].shape == (3, 2, size // 32, 2 * size // 32)
  assert pred["image_uint8"].shape[1:] == (size, 2 * size, 3)
  # The maps are those of the canvas built from the two stored frames.
  data = input_pipeline.create_eval_dataset(config, "test", per_host_batch=8, num_processes=1)
  assert data.partner_frames
  batch = next(iter(data.dataset))
  canvas = np.concatenate([batch["source_image"][:, 0], batch["source_image"][:, 1]], axis=2)
  direct = np.asarray(localize_fn(state.variables, consts, canvas, batch["waveform"], batch["source_class"])["maps"])
  np.testing.assert_allclose(pred["maps"], direct[:3], rtol=1e-5, atol=1e-5)
  result = eval_lib.evaluate_split(config, model, state.variables, mesh, str(tmp_path / "work"), 0, "test",
                                   localize_fn, consts=consts)
  assert result["canvas"] and result["num_items"] == 6
  # Stage 1's class probabilities of the dataset's labels (bank rows -> labels) give the audio mAP.
  assert pred["class_scores"].shape == (3, 221) and result["audio_classification"]["num_examples"] == 3
  assert 0.0 <= result["audio_classification"]["map"] <= 1.0
  assert np.isfinite(result["metrics"]["model"]["auc"]) and result["metrics"]["model"]["binarize"] == "fixed"
  with Image.open(tmp_path / "work" / "eval" / "test_0.png") as png:
    assert png.size[0] == 3 * (2 * 224 + 4)  # canvas frame + one panel per source
  # The official stale-GT quirk: source 2 against an empty GT (its cIoU and pixel AP drop to 0 / NaN).
  config.eval.tvsl_stale_gt = True
  stale = eval_lib.evaluate_split(config, model, state.variables, mesh, str(tmp_path / "stale"), 0, "test",
                                  localize_fn, consts=consts)
  assert stale["metrics"]["model"]["n_empty_gt"] == 3 and result["metrics"]["model"]["n_empty_gt"] == 0
  config.eval.tvsl_stale_gt = False
  # Predicted classes (no labels drive the maps): the model's top-2 classes are matched to the GT sources.
  config.model.class_source = "predicted"
  predicted_model = families.of(config).create_model(config)
  result = eval_lib.evaluate_split(config, predicted_model, state.variables, mesh, str(tmp_path / "work"), 1,
                                   "test", consts=consts)
  assert result["num_items"] == 6 and result["num_predicted_mean"] == 2.0
  assert 0.0 <= result["class_recall"] <= 1.0 and np.isfinite(result["metrics"]["model"]["auc"])


def test_predicted_classes_are_matched_to_gt_sources():
  """class_source='predicted': each GT source gets the distinct valid predicted map with the best pixel AP; a
  source left without a valid map is reported as unmatched; class recall counts GT classes among the valid
  predictions."""
  config = tvsl_recipe.paper_config("vggsound_duet", "")
  config.model.class_source = "predicted"
  raw = np.zeros((2, 3, 7, 7), np.float32)
  raw[:, 0, :3, :3] = -1.0  # (inverted) map 0 is hot top-left
  raw[:, 1, 4:, 4:] = -1.0  # map 1 bottom-right
  raw[:, 2, :3, 4:] = -1.0  # map 2 top-right
  gt = np.zeros((3, 224, 224), np.float32)
  gt[0, 128:, 128:] = 1  # example 0, source 0: bottom-right -> map 1
  gt[1, :96, :96] = 1    # example 0, source 1: top-left -> map 0
  gt[2, :96, 128:] = 1   # example 1, source 0: top-right -> map 2, but it is invalid -> the best valid one
  pred = {"maps": raw, "pred_valid": np.array([[True, True, True], [True, True, False]]),
          "pred_rows": np.array([[5, 7, 9], [4, 6, 8]]), "gt_rows": np.array([[7, 2], [8, -1]])}
  example_idx, source_idx = np.array([0, 0, 1]), np.array([0, 1, 0])
  maps, unmatched, extra = families.of(config).match_predicted(config, pred, example_idx, source_idx, gt, np.ones(3, int))
  np.testing.assert_array_equal(maps[0], raw[0, 1])
  np.testing.assert_array_equal(maps[1], raw[0, 0])
  assert not unmatched.any() and not np.array_equal(maps[2], raw[1, 2])
  # GT rows 7 (predicted, valid), 2 (not predicted), 8 (predicted but invalid): recall 1/3.
  np.testing.assert_allclose(extra["class_recall"], 1 / 3)
  np.testing.assert_allclose(extra["num_predicted_mean"], 2.5)
  pred["pred_valid"][1] = [True, False, False]
  gt2 = np.concatenate([gt, gt[2:]])
  _, unmatched, _ = families.of(config).match_predicted(config, pred, np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), gt2,
                                             np.ones(4, int))
  assert unmatched.tolist() == [False, False, False, True]


@pytest.mark.slow
def test_predicted_classes_and_zero_shot_query_on_synthetic_av(tiny_data_dir, bpe_path, tmp_path):
  """After training on synthetic_av: evaluation driven by the model's own top-K classes (no labels), and a class
  the model never saw, appended to the bank by its name, queried for a map."""
  import copy  # pylint: disable=g-import-not-at-top
  from avl_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from avl_jax import evaluate  # pylint: disable=g-import-not-at-top
  from avl_jax import sharding  # pylint: disable=g-import-not-at-top
  config = load_module("vggsound_duet").get_config(f"runlocal,data_dir={tiny_data_dir},bpe_path={bpe_path}")
  train.train_and_evaluate(config, str(tmp_path))
  predicted = copy.deepcopy(config)
  predicted.model.class_source = "predicted"
  result = evaluate.evaluate(predicted, str(tmp_path))["test_duet"]
  assert result["num_predicted_mean"] == 2.0 and 0.0 <= result["class_recall"] <= 1.0
  assert np.isfinite(result["metrics"]["model"]["auc"])
  step = result["step"]  # predicted-class results sit beside the oracle ones, never over them
  with open(tmp_path / "eval" / f"test_duet_{step}_predicted.json") as f:
    assert json.load(f)["class_source"] == "predicted"
  with open(tmp_path / "eval" / f"test_duet_{step}.json") as f:
    assert json.load(f)["class_source"] == "oracle"

  zero_shot = copy.deepcopy(config)
  zero_shot.text.extra_classes = ("purple dotted hexagon",)
  mesh = sharding.create_mesh(zero_shot.mesh)
  setup = train.build(zero_shot, mesh)
  model = setup.model
  state = checkpointing.restore(checkpointing.create_manager(str(tmp_path), create=False), 2, setup.abstract_state)
  bank = np.asarray(train.make_consts(setup, state.params, mesh)["text_bank"])
  trained_bank = np.asarray(train.make_consts(train.build(config, mesh), state.params, mesh)["text_bank"])
  assert bank.shape[0] == 9 and np.allclose(bank[:8], trained_bank)
  data = input_pipeline.create_eval_dataset(zero_shot, "test_duet", per_host_batch=8, num_processes=1)
  batch = next(iter(data.dataset))
  params = {"params": state.params, "batch_stats": state.batch_stats}
  new_row = np.full((8, 1), 8, np.int32)
  localize = jax.jit(lambda rows: model.apply(params, batch["image"], batch["waveform"], bank, rows,
                                              method=model.localize))
  maps, known = np.asarray(localize(new_row)), np.asarray(localize(np.zeros_like(new_row)))
  assert maps.shape == known.shape and np.all(np.isfinite(maps)) and not np.allclose(maps, known)
  everything = model.clone(class_source="predicted", top_k=9)  # every row ranked: the new class is among them
  _, classes = jax.jit(lambda: everything.apply(params, batch["image"], batch["waveform"], bank, new_row,
                                                return_classes=True, method=everything.localize))()
  assert np.all(np.any(np.asarray(classes["class_rows"]) == 8, axis=1))


def test_eval_resize_torch_tensor_is_pytorch_bicubic_without_antialias():
  """T-VSL's test transform: the [0, 1] tensor resized by PyTorch bicubic (no antialias, not clamped), then the
  CLIP normalisation; AVGN's 'pil' path is PIL's antialiased bicubic."""
  from avl_jax import resampling  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  frame = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
  cfg = data_config.DataConfig(num_classes=2, image_size=24, resize_size=24, sample_rate=16000, num_samples=1,
                               max_sources=1, max_boxes=1, eval_mix_partner_audio=True, per_source_frames=True,
                               image_norm="clip", canvas=False, eval_resize="torch_tensor", normalize_on_device=True)
  normalized, shown = image_ops.eval_image(frame, cfg)
  pixels = np.asarray(frame, np.float64).transpose(2, 0, 1) / 255.0
  expected = resampling.upsample_bicubic(pixels, (24, 24)).transpose(1, 2, 0)
  expected = (expected - image_ops.CLIP_MEAN) / image_ops.CLIP_STD
  np.testing.assert_allclose(normalized, expected, atol=2e-5)
  assert shown.size == (24, 24)
  pil, _ = image_ops.eval_image(frame, data_config.DataConfig(**{**cfg.__dict__, "eval_resize": "pil"}))
  assert np.abs(pil - normalized).max() > 0.05  # antialiasing makes a difference when shrinking 2x
  with pytest.raises(ValueError, match="eval_resize"):
    image_ops.eval_image(frame, data_config.DataConfig(**{**cfg.__dict__, "eval_resize": "cv2"}))
