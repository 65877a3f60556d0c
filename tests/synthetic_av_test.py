"""Tests of the `synthetic_av` builder and its generator: schema, splits, geometry, determinism, signal content."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

import avl_jax.datasets.synthetic_av  # noqa: F401  (registers the builder)
from avl_jax.datasets import schema
from avl_jax.datasets.synthetic_av import generator
from avl_jax.datasets.synthetic_av import synthetic_av

TINY = synthetic_av.TINY
SPLIT_SIZES = {"train": 48, "test_single": 12, "test_duet": 12}
EXPECTED_SOURCES = {"train": 1, "test_single": 1, "test_duet": 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  """Builds `synthetic_av/tiny` once for the whole module."""
  directory = str(tmp_path_factory.mktemp("tfds"))
  builder = tfds.builder("synthetic_av/tiny", data_dir=directory)
  builder.download_and_prepare(file_format="array_record")
  return directory


@pytest.fixture(scope="module")
def records(data_dir) -> dict[str, list[dict]]:
  """Every stored example of every split, read back with `tfds.data_source`."""
  result = {}
  for split in SPLIT_SIZES:
    source = tfds.data_source("synthetic_av/tiny", split=split, data_dir=data_dir)
    result[split] = [source[i] for i in range(len(source))]
  return result


def _all_records(records):
  return [(split, record) for split, split_records in records.items() for record in split_records]


def _spectrum(waveform: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (frequencies [F], magnitudes [F]) of a waveform."""
  magnitudes = np.abs(np.fft.rfft(waveform.astype(np.float64) * np.hanning(len(waveform))))
  return np.fft.rfftfreq(len(waveform), 1.0 / sample_rate), magnitudes


def _nearest_class(frequency: float, num_classes: int) -> int:
  fundamentals = np.array([generator.class_spec(k).fundamental_hz for k in range(num_classes)])
  return int(np.argmin(np.abs(np.log(frequency / fundamentals))))


def test_info(data_dir):
  builder = tfds.builder("synthetic_av/tiny", data_dir=data_dir)
  assert str(builder.info.version) == "1.1.0"
  assert builder.info.supervised_keys is None
  assert builder.info.features.keys() == set(schema.FEATURE_NAMES)
  assert "red_solid_circle" in builder.info.description
  assert builder.info.metadata["class_names"] == generator.class_names(TINY.num_classes)
  assert {name: split.num_examples for name, split in builder.info.splits.items()} == SPLIT_SIZES


def test_split_sizes(records):
  assert {split: len(split_records) for split, split_records in records.items()} == SPLIT_SIZES


def test_schema_and_dtypes(records):
  num_samples = int(TINY.duration_s * TINY.sample_rate)
  for split, record in _all_records(records):
    assert set(record) == set(schema.FEATURE_NAMES)
    assert record["frame"].dtype == np.uint8 and record["frame"].shape == (TINY.image_size, TINY.image_size, 3)
    assert record["waveform"].dtype == np.int16 and record["waveform"].shape == (num_samples,)
    assert int(record["sample_rate"]) == TINY.sample_rate
    assert record["label"].dtype == np.float32 and record["label"].shape == (TINY.num_classes,)
    assert record["source_class"].dtype == np.int32
    assert record["boxes"].dtype == np.float32 and record["boxes"].shape[1:] == (4,)
    assert record["box_source"].dtype == np.int32
    assert record["id"].decode().startswith(split + "_")


def test_record_order_is_index_order(records):
  for split, split_records in records.items():
    assert [r["id"].decode() for r in split_records] == [f"{split}_{i:06d}" for i in range(SPLIT_SIZES[split])]


def test_num_sources_and_boxes(records):
  for split, record in _all_records(records):
    num_sources = int(record["num_sources"])
    assert num_sources == EXPECTED_SOURCES[split]
    assert record["source_class"].shape == (num_sources,)
    assert len(set(record["source_class"].tolist())) == num_sources  # classes of a scene are distinct
    assert sorted(record["box_source"].tolist()) == list(range(num_sources))  # one box per source
    boxes = record["boxes"]
    assert len(boxes) == len(record["box_source"])
    assert np.all((boxes >= 0) & (boxes <= 1))
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    sides = boxes[:, 2:] - boxes[:, :2]
    assert np.all(sides > 0.1) and np.all(sides <= generator.MAX_OBJECT_SIZE + 0.02)  # tight boxes of 30-60 % squares


def test_label_is_multi_hot_of_source_class(records):
  for _, record in _all_records(records):
    expected = np.zeros(TINY.num_classes, np.float32)
    expected[record["source_class"]] = 1.0
    np.testing.assert_array_equal(record["label"], expected)


def test_waveform_level(records):
  for _, record in _all_records(records):
    peak = np.abs(record["waveform"].astype(np.int32)).max()
    assert 2000 < peak <= int(0.9 * 32767) + 1  # audible, never clipped


def test_stored_matches_make_example(records):
  """Every stored record is `make_example(config, split, index)`: the build is reproducible."""
  for split, split_records in records.items():
    for index, record in enumerate(split_records):
      example = generator.make_example(TINY, split, index)
      assert record["id"].decode() == example["id"]
      assert int(record["num_sources"]) == example["num_sources"]
      for key in ("waveform", "label", "source_class", "boxes", "box_source"):
        np.testing.assert_array_equal(record[key], example[key])
      # The frame went through JPEG (quality 95, 4:2:0 chroma: noisy 64x64 frames lose ~3-5 levels on average).
      assert np.abs(record["frame"].astype(np.float32) - example["frame"]).mean() < 8.0


def test_make_example_is_deterministic():
  for split in generator.SPLITS:
    first, second = generator.make_example(TINY, split, 7), generator.make_example(TINY, split, 7)
    assert first.keys() == second.keys()
    for key in first:
      np.testing.assert_array_equal(first[key], second[key])
    other = generator.make_example(TINY, split, 8)
    assert not np.array_equal(first["frame"], other["frame"])
    assert not np.array_equal(first["waveform"], other["waveform"])
  train, test = generator.make_example(TINY, "train", 7), generator.make_example(TINY, "test_single", 7)
  assert not np.array_equal(train["frame"], test["frame"])


def test_seed_changes_examples():
  reseeded = generator.SceneConfig(num_classes=8, image_size=64, duration_s=1.0, seed=1)
  assert not np.array_equal(generator.make_example(TINY, "train", 0)["waveform"],
                            generator.make_example(reseeded, "train", 0)["waveform"])


@pytest.mark.parametrize("num_classes", [2, 3, 16, generator.MAX_CLASSES])
def test_any_number_of_classes(num_classes):
  config = generator.SceneConfig(num_classes=num_classes, image_size=48, duration_s=0.25)
  for split in generator.SPLITS:
    for index in range(4):
      example = generator.make_example(config, split, index)
      assert example["label"].shape == (num_classes,)
      assert np.all(example["source_class"] < num_classes)
      assert example["num_sources"] == EXPECTED_SOURCES[split]


def test_class_names():
  names = generator.class_names(generator.MAX_CLASSES)
  assert len(set(names)) == generator.MAX_CLASSES
  assert names[:2] == ["red_solid_circle", "green_solid_square"]
  assert all(name.count("_") == 2 for name in names)
  specs = [generator.class_spec(k) for k in range(generator.MAX_CLASSES)]
  assert len({(s.shape, s.texture) for s in specs}) == generator.MAX_CLASSES  # distinct appearance
  fundamentals = sorted(s.fundamental_hz for s in specs)
  assert min(b / a for a, b in zip(fundamentals, fundamentals[1:])) > 1.1  # distinct pitch
  with pytest.raises(ValueError):
    generator.make_example(generator.SceneConfig(num_classes=1), "train", 0)


def test_object_colour_is_inside_its_box(records):
  """The class colour covers a good part of each sounding object's box and little of the rest of the frame."""
  size = TINY.image_size
  for split, record in _all_records(records):
    frame = record["frame"].astype(np.float32)
    inside_any = np.zeros((size, size), bool)
    for box in record["boxes"]:
      x1, y1, x2, y2 = np.round(box * size).astype(int)
      inside_any[y1:y2, x1:x2] = True
    for box, source in zip(record["boxes"], record["box_source"]):
      rgb = np.asarray(generator.class_spec(int(record["source_class"][source])).rgb, np.float32)
      # Generous radius: JPEG at 64x64 subsamples chroma, and small stars cover ~30 % of their box.
      close = np.linalg.norm(frame - rgb, axis=-1) < 60
      x1, y1, x2, y2 = np.round(box * size).astype(int)
      in_box = close[y1:y2, x1:x2].mean()
      outside = close[~inside_any].mean()
      assert in_box > 0.08, (record["id"], in_box)
      assert outside < 0.03 and in_box > 5 * outside, (record["id"], in_box, outside)


def test_single_source_spectral_peak_is_class_fundamental(records):
  for split in ("train", "test_single"):
    for record in records[split]:
      frequencies, magnitudes = _spectrum(record["waveform"], int(record["sample_rate"]))
      magnitudes[frequencies < 50] = 0
      peak = frequencies[np.argmax(magnitudes)]
      source_class = int(record["source_class"][0])
      assert _nearest_class(peak, TINY.num_classes) == source_class, (record["id"], peak)
      assert abs(np.log(peak / generator.class_spec(source_class).fundamental_hz)) < 0.05


def test_duet_fundamentals_are_the_strongest_classes(records):
  """In a duet, the two loudest class fundamentals (band energies) are exactly the two sounding classes."""
  for record in records["test_duet"]:
    frequencies, magnitudes = _spectrum(record["waveform"], int(record["sample_rate"]))
    band_energy = []
    for k in range(TINY.num_classes):
      f0 = generator.class_spec(k).fundamental_hz
      band = (frequencies > f0 * 0.96) & (frequencies < f0 * 1.04)
      band_energy.append((magnitudes[band] ** 2).sum())
    assert set(np.argsort(band_energy)[-2:].tolist()) == set(record["source_class"].tolist()), record["id"]
