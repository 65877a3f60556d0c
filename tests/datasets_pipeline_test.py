"""The grain train and eval pipelines on every real config (built from fake trees), prepare_data.sh, benchmark."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from avl_jax import audio
from avl_jax import input_pipeline
from avl_jax.datasets import fake_raw
from avl_jax.pipeline import audio_ops
from avl_jax.pipeline import data_source
from avl_jax.pipeline import image_ops
from avl_jax.recipes import avgn as avgn_recipe

REPO = pathlib.Path(__file__).resolve().parents[1]
SETTINGS = {"music_solo": ("music", "solo", "frames"), "music_duet": ("music", "duet", "video"),
            "vggsound_single": ("vggsound", "single", "frames"), "vggsound_duet": ("vggsound", "duet", "video"),
            "vgginstruments_single": ("vgginstruments", "single", "video"),
            "vgginstruments_multi": ("vgginstruments", "multi", "frames")}
IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> dict[str, str]:
  """Every paper setting's dataset, built once from a fake tree (layouts alternate)."""
  result = {}
  for setting, (dataset, variant, layout) in SETTINGS.items():
    root = tmp_path_factory.mktemp(setting)
    tree = fake_raw.make_tree(dataset, variant, str(root / "raw"), layout)
    fake_raw.build(f"{dataset}/{variant}", tree.root, str(root / "tfds"))
    result[setting] = str(root / "tfds")
  return result


def _config(setting: str, data_dir: str):
  config = avgn_recipe.paper_config(setting, f"data_dir={data_dir}")
  ds = config.dataset
  ds.image_size, ds.resize_size, ds.audio_seconds, ds.num_workers = IMAGE_SIZE, IMAGE_SIZE + 4, 1.0, 0
  return config


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_train_pipeline_reads_every_config(data_dirs, setting):
  config = _config(setting, data_dirs[setting])
  iterator = iter(input_pipeline.create_train_dataset(config, per_host_batch=4, seed=0))
  for _ in range(2):
    batch = next(iterator)
    assert batch["image"].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert batch["waveform"].shape == (4, 16000)
    # Duet configs mix a partner of another class (own + partner); single configs do not.
    np.testing.assert_array_equal(batch["audio_label"].sum(-1), 2.0 if config.dataset.mix else 1.0)
    assert np.all(batch["audio_label"].max(-1) == 1.0)
    np.testing.assert_array_equal(batch["audio_label"][np.arange(4), batch["visual_class"]], 1.0)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_eval_pipeline_reads_every_config(data_dirs, setting):
  config = _config(setting, data_dirs[setting])
  data = input_pipeline.create_eval_dataset(config, "test", per_host_batch=2, num_processes=1)
  batches = list(data.dataset)
  assert data.num_examples == 3 and sum(float(b["mask"].sum()) for b in batches) == 3
  assert data.gt_format == setting.replace("vgginstruments_single", "vgginstruments")  # gt_maps.FORMATS
  sources = config.dataset.max_sources
  for batch in batches:
    assert batch["image"].shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert batch["source_image"].shape == (2, sources, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(batch["source_image"][:, 0], batch["image"])
    assert batch["boxes_raw"].shape == (2, config.dataset.max_boxes, 4) and batch["boxes_raw"].dtype == np.float64
    assert np.all(batch["source_class"][batch["mask"] > 0] >= 0)  # every source of a test example is labelled
    if setting.startswith("vgginstruments"):
      assert batch["gt_mask"].shape == (2, sources, 224, 224)
      np.testing.assert_array_equal(batch["has_gt_mask"][batch["mask"] > 0], 1.0)
      assert set(np.unique(batch["gt_mask"])) <= {0.0, 1.0} and batch["gt_mask"].sum() > 0
    else:
      assert "gt_mask" not in batch
    if setting == "music_duet":  # natural duets: the same frame for both sources
      np.testing.assert_array_equal(batch["source_image"][:, 1], batch["image"])


@pytest.mark.parametrize("setting", ["vggsound_duet", "vgginstruments_multi"])
def test_duet_eval_uses_the_fixed_partner(data_dirs, setting):
  config = _config(setting, data_dirs[setting])
  batch = next(iter(input_pipeline.create_eval_dataset(config, "test", 3, 1).dataset))
  ids = data_source.decode_ids(batch["id"])
  source = data_source.open_source(config.dataset.name, "test", config.dataset.data_dir)
  partners = [source[i]["partner_id"].decode() for i in range(3)]
  for b, partner in enumerate(partners):
    assert partner and partner != ids[b]
    frame = batch["source_image"][b, 1] * image_ops.IMAGENET_STD + image_ops.IMAGENET_MEAN
    np.testing.assert_allclose(frame.reshape(-1, 3).mean(0) * 255, fake_raw.clip_colour(partner), atol=8)
  # The mixture is the own window plus the partner's; the official VGG-Instruments-multi switch drops it.
  config.dataset.eval_mix_partner_audio = False
  own_only = next(iter(input_pipeline.create_eval_dataset(config, "test", 3, 1).dataset))
  assert not np.allclose(own_only["waveform"], batch["waveform"])
  for b in range(3):
    record = source[b]
    partner = {"id": b"p", "sample_rate": record["sample_rate"], "waveform": record["partner_waveform"]}
    expected = own_only["waveform"][b] + audio.int16_to_float(audio_ops.audio_window(partner, 16000, 16000))
    np.testing.assert_allclose(batch["waveform"][b], expected, atol=1e-6)


def test_fast_train_records_match_tfds(data_dirs, tiny_data_dir):
  for name, data_dir in [("vggsound/duet", data_dirs["vggsound_duet"]), ("music/solo", data_dirs["music_solo"]),
                         ("synthetic_av/tiny", tiny_data_dir)]:
    source = data_source.open_source(name, "train", data_dir)
    records = data_source.train_records(source)
    assert isinstance(records, data_source.TrainRecords)
    assert all(records.check(i) for i in range(len(records)))


def test_prepare_data_script_demo(tmp_path):
  env = dict(os.environ, AVL_SKIP_INSTALL="1", PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}")
  # Relative paths are taken relative to the caller's directory.
  result = subprocess.run(
      ["bash", str(REPO / "launch" / "prepare_data.sh"), "--demo", "--set", "num_workers=1", "vggsound", "duet",
       "raw", "tfds"], capture_output=True, text=True, env=env, timeout=300, check=False, cwd=tmp_path)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-3000:]
  assert "vggsound/duet ready in" in result.stdout and "{'train': 4, 'test': 3}" in result.stdout
  assert (tmp_path / "tfds" / "vggsound" / "duet" / "1.0.0" / "skipped_test.csv").exists()
  usage = subprocess.run(["bash", str(REPO / "launch" / "prepare_data.sh")], capture_output=True, text=True,
                         env=env, check=False)
  assert usage.returncode == 2 and "<dataset> <config> <manual_dir>" in usage.stdout


def test_pipeline_benchmark_runs(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "avl_jax.benchmarks.pipeline_benchmark", "--num_examples=6", "--clip_seconds=1",
       "--num_classes=3", "--batch_size=2", "--min_seconds=0.2", "--build_workers=1",
       f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  for line in ("train pipeline (ArrayRecord", "normalize_on_device=False", "official loader per example",
               "ratio pipeline / official loader"):
    assert line in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["music_duet", "vggsound_duet", "vgginstruments_multi"])
def test_eval_scores_real_configs_end_to_end(data_dirs, setting, tmp_path):
  """eval_lib on a real duet/multi config: each source on its own frame, GT in the dataset's official format."""
  import jax  # pylint: disable=g-import-not-at-top
  from avl_jax import eval_lib  # pylint: disable=g-import-not-at-top
  from avl_jax.evaluation import gt as eval_gt  # pylint: disable=g-import-not-at-top
  from avl_jax import sharding  # pylint: disable=g-import-not-at-top
  from avl_jax import train  # pylint: disable=g-import-not-at-top
  config = _config(setting, data_dirs[setting])
  config.model.update(avgn_recipe.RUNLOCAL_MODEL)
  config.eval_batch_size = 8  # one padded batch over the 8 fake devices
  mesh = sharding.create_mesh(config.mesh)
  setup = train.build(config, mesh)
  model = setup.model
  variables = setup.init_fn(jax.random.PRNGKey(0)).variables
  localize_fn = eval_lib.make_localize_fn(config, model, mesh)
  pred = eval_lib.predict_split(config, model, variables, mesh, "test", localize_fn)
  assert pred["gt_format"] == setting and pred["maps"].shape[:2] == (3, 2)
  # Source s is localized on its own frame: recompute source 1 from the pipeline's per-source frames.
  data = input_pipeline.create_eval_dataset(config, "test", per_host_batch=8, num_processes=1)
  batch = next(iter(data.dataset))
  assert "source_image" in batch
  direct = localize_fn(variables, {}, batch["source_image"][:, 1], batch["waveform"], batch["source_class"])["maps"]
  np.testing.assert_allclose(pred["maps"][:, 1], np.asarray(direct)[:3, 1], rtol=1e-5, atol=1e-5)
  if setting != "music_duet":  # MUSIC-Duet frames show both players; the pair datasets have two frames.
    own_frame = localize_fn(variables, {}, batch["image"], batch["waveform"], batch["source_class"])["maps"]
    assert not np.allclose(np.asarray(own_frame)[:3, 1], pred["maps"][:, 1])
  # GT per protocol: masks as stored vs binarised; MUSIC xywh read as xyxy (official) vs converted (standard).
  _, _, gt_official, nbox = eval_gt.source_items(pred, "official")
  _, _, gt_standard, _ = eval_gt.source_items(pred, "standard")
  assert len(nbox) == 6 and np.all(nbox >= 1)
  if setting == "music_duet":
    assert gt_standard.sum() > gt_official.sum()  # xywh read as xyxy shrinks (or empties) the boxes
  elif setting == "vggsound_duet":
    assert gt_official.max() >= 1 and set(np.unique(gt_standard)) <= {0.0, 1.0}
  else:
    np.testing.assert_array_equal(gt_standard, gt_official > 0)
  result = eval_lib.evaluate_split(config, model, variables, mesh, str(tmp_path), 0, "test", localize_fn)
  assert result["num_items"] == 6 and np.isfinite(result["metrics"]["model"]["auc"])
  # The official AVGN Duet GT (partner, partner's partner) is on in the vggsound_duet paper config only.
  assert config.eval.official_duet_gt_bug == (setting == "vggsound_duet")
  if setting == "vggsound_duet":
    assert "partner_id" in pred and result["official_duet_gt_bug_missing"] >= 0
    config.eval.official_duet_gt_bug = False
    fixed = eval_lib.evaluate_split(config, model, variables, mesh, str(tmp_path), 1, "test", localize_fn)
    assert "official_duet_gt_bug_missing" not in fixed
  else:
    config.eval.official_duet_gt_bug = True
    with pytest.raises(ValueError, match="official_duet_gt_bug"):
      eval_lib.evaluate_split(config, model, variables, mesh, str(tmp_path), 1, "test", localize_fn)
