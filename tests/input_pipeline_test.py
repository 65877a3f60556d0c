"""grain pipelines: shapes, determinism, mixing rules, exact iterator resume, eval padding and masks."""
import pathlib

import numpy as np
import pytest

from avl_jax import input_pipeline
from avl_jax.pipeline import audio_ops
from avl_jax.pipeline import data_source
from avl_jax.pipeline import eval_transforms
from avl_jax.pipeline import image_ops


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_train_batches_shapes_and_mixing(tiny_config):
  ds = tiny_config.dataset
  batches = _take(iter(input_pipeline.create_train_dataset(tiny_config, per_host_batch=4, seed=3)), 3)
  b = batches[0]
  # Frames leave the host as uint8 (dataset.normalize_on_device, default) and are normalised in the step.
  assert b["image"].shape == (4, ds.image_size, ds.image_size, 3) and b["image"].dtype == np.uint8
  assert b["waveform"].shape == (4, int(ds.audio_seconds * ds.sample_rate))
  assert b["visual_class"].shape == (4,) and b["audio_label"].shape == (4, ds.num_classes)
  for batch in batches:
    # Mixing: own class + exactly one partner of a different class.
    np.testing.assert_array_equal(batch["audio_label"].sum(-1), 2.0)
    assert np.all(batch["audio_label"].max(-1) == 1.0)
    np.testing.assert_array_equal(batch["audio_label"][np.arange(4), batch["visual_class"]], 1.0)
    assert 0 < batch["image"].std()  # real pixels, not a constant


@pytest.mark.parametrize("norm", ["imagenet", "clip"])
def test_device_normalisation_matches_host_normalisation(tiny_config, norm):
  """uint8 batches normalised in jit == the float32 batches normalised on the host (same augmentation draws)."""
  import jax  # pylint: disable=g-import-not-at-top
  tiny_config.dataset.image_norm = norm
  uint8 = next(iter(input_pipeline.create_train_dataset(tiny_config, 4, seed=5)))
  tiny_config.dataset.normalize_on_device = False
  host = next(iter(input_pipeline.create_train_dataset(tiny_config, 4, seed=5)))
  assert host["image"].dtype == np.float32
  device = jax.jit(lambda x: image_ops.device_normalize_image(x, norm))(uint8["image"])
  np.testing.assert_allclose(np.asarray(device), host["image"], rtol=0, atol=1e-6)
  # Every one of the 256 x 3 levels: the jnp formula against the host lookup table.
  levels = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None], (256, 1, 3))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  table = image_ops.normalize_image(Image.fromarray(np.ascontiguousarray(levels)), norm)
  np.testing.assert_allclose(np.asarray(image_ops.device_normalize_image(jax.numpy.asarray(levels), norm)),
                             table, rtol=0, atol=1e-6)
  for k in uint8:
    if k != "image":
      np.testing.assert_array_equal(uint8[k], host[k])
  # Already-normalised float input passes through unchanged.
  assert image_ops.device_normalize_image(host["image"], norm) is host["image"]


def test_train_pipeline_is_deterministic_and_seeded(tiny_config):
  first = _take(iter(input_pipeline.create_train_dataset(tiny_config, 4, seed=7)), 2)
  again = _take(iter(input_pipeline.create_train_dataset(tiny_config, 4, seed=7)), 2)
  other = _take(iter(input_pipeline.create_train_dataset(tiny_config, 4, seed=8)), 2)
  for a, b in zip(first, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert any(not np.array_equal(a["image"], c["image"]) for a, c in zip(first, other))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_iterator_state_resumes_exactly(tiny_config, num_workers):
  tiny_config.dataset.num_workers = num_workers
  it = iter(input_pipeline.create_train_dataset(tiny_config, 4, seed=1))
  _take(it, 2)
  state = it.get_state()
  expected = _take(it, 3)
  fresh = iter(input_pipeline.create_train_dataset(tiny_config, 4, seed=1))
  fresh.set_state(state)
  for want, got in zip(expected, _take(fresh, 3)):
    for k in want:
      np.testing.assert_array_equal(want[k], got[k])


def test_eval_pipeline_pads_with_mask_and_counts_each_example_once(tiny_config):
  data = input_pipeline.create_eval_dataset(tiny_config, "test_duet", per_host_batch=5, num_processes=1)
  batches = list(data.dataset)
  assert len(batches) == data.num_batches == -(-data.num_examples // 5)
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == data.num_examples and mask.shape == (data.num_batches * 5,)
  ids = [i for b in batches for i, m in zip(data_source.decode_ids(b["id"]), b["mask"]) if m]
  assert len(set(ids)) == data.num_examples
  b = batches[0]
  assert b["source_class"].shape == (5, 2) and np.all(b["source_class"] >= 0)  # duet: both sources present
  assert b["boxes"].shape == (5, tiny_config.dataset.max_boxes, 4)
  valid_boxes = b["box_source"] >= 0
  assert np.all((b["boxes"][valid_boxes] >= 0) & (b["boxes"][valid_boxes] <= 1))
  # Deterministic: a second pass gives identical batches.
  again = list(input_pipeline.create_eval_dataset(tiny_config, "test_duet", 5, 1).dataset)
  np.testing.assert_array_equal(batches[-1]["image"], again[-1]["image"])


def test_single_split_pads_second_source(tiny_config):
  data = input_pipeline.create_eval_dataset(tiny_config, "test_single", per_host_batch=4, num_processes=1)
  b = next(iter(data.dataset))
  assert np.all(b["source_class"][:, 1] == eval_transforms.PAD_CLASS)


def test_wrong_sample_rate_is_a_clear_error(tiny_config):
  tiny_config.dataset.sample_rate = 22050
  with pytest.raises(data_source.DataError, match="sample rate 16000 Hz, the config expects 22050"):
    _take(iter(input_pipeline.create_train_dataset(tiny_config, 4, seed=0)), 1)


def test_missing_dataset_is_a_clear_error(tiny_config, tmp_path):
  tiny_config.dataset.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="not prepared"):
    input_pipeline.create_train_dataset(tiny_config, 4, seed=0)


def test_audio_window_centre_and_tiling():
  record = {"id": b"x", "sample_rate": 10, "waveform": np.arange(30, dtype=np.int16)}
  np.testing.assert_array_equal(audio_ops.audio_window(record, 10, 10), np.arange(10, 20))
  short = {"id": b"y", "sample_rate": 10, "waveform": np.arange(4, dtype=np.int16)}
  np.testing.assert_array_equal(audio_ops.audio_window(short, 10, 10), [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])




def test_class_index_is_cached_next_to_the_dataset_and_checked(tiny_config, monkeypatch):
  """Mixing needs every training record's class: computed once, cached in the dataset dir, re-validated."""
  source = data_source.open_source(tiny_config.dataset.name, "train", tiny_config.dataset.data_dir)
  records = data_source.train_records(source)
  want = data_source.primary_classes(records, tiny_config.dataset.num_classes)
  cache = (pathlib.Path(source.dataset_info.data_dir) / f"class_index-train-0of1-{len(records)}.npy")
  cache.unlink(missing_ok=True)
  first = next(iter(input_pipeline.create_train_dataset(tiny_config, 4, seed=2)))
  np.testing.assert_array_equal(np.load(cache), want)
  # Later starts read the cache instead of every record.
  calls = []
  original = data_source.primary_classes
  monkeypatch.setattr(data_source, "primary_classes", lambda *a: calls.append(1) or original(*a))
  again = next(iter(input_pipeline.create_train_dataset(tiny_config, 4, seed=2)))
  assert not calls
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  # A stale cache (other data under the same name) is detected by the spot checks and rebuilt.
  np.save(cache, (want + 1) % tiny_config.dataset.num_classes)
  rebuilt = next(iter(input_pipeline.create_train_dataset(tiny_config, 4, seed=2)))
  assert calls and np.array_equal(np.load(cache), want)
  for key in first:
    np.testing.assert_array_equal(first[key], rebuilt[key])
