"""`vggsound` builder: single and duet from both raw layouts: counts, fixed duet partners, boxes, bad input."""
import json
import os
import pathlib

import numpy as np
import pytest

from avl_jax.datasets import builder_lib
from avl_jax.datasets import fake_raw
from avl_jax.datasets.vggsound import vggsound

CASES = [(variant, layout) for variant in ("single", "duet") for layout in ("frames", "video")]


@pytest.fixture(scope="module", params=CASES, ids=["-".join(case) for case in CASES])
def built(request, tmp_path_factory):
  variant, layout = request.param
  root = tmp_path_factory.mktemp(f"vggsound_{variant}_{layout}")
  tree = fake_raw.make_tree("vggsound", variant, str(root / "raw"), layout)
  builder = fake_raw.build(f"vggsound/{variant}", tree.root, str(root / "tfds"))
  records = {split: fake_raw.read_split(f"vggsound/{variant}", str(root / "tfds"), split)
             for split in ("train", "test")}
  return tree, builder, records


def _spectral_peak(waveform: np.ndarray, rate: int = 16000) -> float:
  spectrum = np.abs(np.fft.rfft(waveform.astype(np.float64) * np.hanning(len(waveform))))
  return float(np.fft.rfftfreq(len(waveform), 1.0 / rate)[np.argmax(spectrum)])


def _colour_close(frame: np.ndarray, clip_id: str) -> bool:
  return bool(np.all(np.abs(frame.reshape(-1, 3).mean(0) - np.asarray(fake_raw.clip_colour(clip_id))) < 6))


def test_counts_ids_and_skip_report(built):
  tree, builder, records = built
  for split in ("train", "test"):
    assert [r["id"].decode() for r in records[split]] == tree.expected[split]
    report = builder_lib.read_report(os.path.join(builder.data_dir, f"skipped_{split}.csv"))
    assert [(row["id"], row["reason"]) for row in report] == tree.expected_skips[split]


def test_clips_content_whole_audio_and_labels(built):
  _, builder, records = built
  classes = list(vggsound.bundled_classes())
  assert builder.info.metadata["class_names"] == classes and len(classes) == 221
  for record in records["train"]:
    clip_id = record["id"].decode()
    assert _colour_close(record["frame"], clip_id)
    seconds = 0.6 if clip_id.startswith("trainclip05") else fake_raw.CLIP_SECONDS
    assert abs(record["waveform"].size / 16000 - seconds) < 0.05  # whole clip (AAC adds a few ms of padding)
    assert abs(_spectral_peak(record["waveform"]) - fake_raw.clip_frequency(clip_id)) < 5
    assert int(record["num_sources"]) == 1 and record["label"].sum() == 1
    assert classes[int(record["source_class"][0])] in fake_raw.VGGSOUND_CLASSES


def test_test_boxes_are_vggss_xyxy_per_source(built):
  tree, builder, records = built
  path = pathlib.Path(tree.root) / "metadata" / "vggss.json"
  boxes_by_id = {e["file"]: e["bbox"] for e in json.loads(path.read_text())}
  duet = builder.builder_config.name == "duet"
  for record in records["test"]:
    clip_id = record["id"].decode()
    sources = [clip_id, tree.partners["test"][clip_id]] if duet else [clip_id]
    expected = [box for s in sources for box in boxes_by_id[s]]
    owner = [i for i, s in enumerate(sources) for _ in boxes_by_id[s]]
    assert record["box_format_raw"] == b"xyxy"
    np.testing.assert_array_equal(record["boxes_raw"], np.asarray(expected, np.float64))
    np.testing.assert_allclose(record["boxes"], np.clip(expected, 0, 1), atol=1e-7)
    np.testing.assert_array_equal(record["box_source"], owner)
    assert int(record["num_sources"]) == len(sources)


def test_duet_tests_store_the_fixed_partner(built):
  """Duet test clips store their fixed partner; single ones (and every train clip) store none."""
  tree, builder, records = built
  unpaired = records["train"] + (records["test"] if builder.builder_config.name == "single" else [])
  for record in unpaired:
    assert record["partner_id"] == b"" and not len(record["partner_frame"]) and not record["partner_waveform"].size
  if builder.builder_config.name == "single":
    return
  assert records["test"]
  for record in records["test"]:
    own, partner = record["id"].decode(), record["partner_id"].decode()
    assert partner == tree.partners["test"][own]
    assert len(record["partner_frame"]) == 1 and _colour_close(record["partner_frame"][0], partner)
    assert abs(_spectral_peak(record["partner_waveform"]) - fake_raw.clip_frequency(partner)) < 5
    assert abs(_spectral_peak(record["waveform"]) - fake_raw.clip_frequency(own)) < 5
    assert json.loads(record["preprocessing"])["partner"]["frame"]["file"].split("/")[-1].startswith(partner)


def test_short_audio_is_skipped_or_tiled_and_recorded(tmp_path):
  tree = fake_raw.make_tree("vggsound", "single", str(tmp_path / "raw"), "frames")
  overrides = {"audio_seconds": 1.0, "max_missing_fraction": 0.6, "splits": ("train",)}
  builder = fake_raw.build("vggsound/single", tree.root, str(tmp_path / "skip"), overrides)
  report = builder_lib.read_report(os.path.join(builder.data_dir, "skipped_train.csv"))
  assert ("trainclip05_000150", "audio_too_short") in [(r["id"], r["reason"]) for r in report]
  fake_raw.build("vggsound/single", tree.root, str(tmp_path / "tile"), dict(overrides, short_audio="tile"))
  records = {r["id"].decode(): r for r in fake_raw.read_split("vggsound/single", str(tmp_path / "tile"), "train")}
  short = records["trainclip05_000150"]
  assert short["audio_fill"] == b"tiled" and short["waveform"].shape == (16000,)
  assert json.loads(short["preprocessing"])["audio"]["samples"] == 9600
  assert records["trainclip00_000000"]["audio_fill"] == b"none"


def test_mostly_missing_split_fails(tmp_path):
  tree = fake_raw.make_tree("vggsound", "single", str(tmp_path / "raw"), "video")
  for name in os.listdir(tree.root):
    if name.startswith("trainclip"):  # every train clip: the train list names 7 clips, none is there
      os.remove(os.path.join(tree.root, name))
  with pytest.raises(builder_lib.MostlyMissingError) as e:
    fake_raw.build("vggsound/single", tree.root, str(tmp_path / "tfds"))
  message = str(e.value)
  assert "'train'" in message and "7 of 7" in message and tree.root in message
  assert "max_missing_fraction=0.5" in message
  # Raising the limit builds what is there (the test split still has 3 of 5).
  builder = fake_raw.build("vggsound/single", tree.root, str(tmp_path / "tfds"),
                           {"max_missing_fraction": 1.0, "splits": ("test",)})
  assert builder.info.splits["test"].num_examples == 3


def test_parallel_decode_gives_the_same_records(tmp_path):
  """num_workers=2 (a forkserver pool) writes exactly what the in-process decode writes."""
  tree = fake_raw.make_tree("vggsound", "duet", str(tmp_path / "raw"), "video")
  fake_raw.build("vggsound/duet", tree.root, str(tmp_path / "one"))
  fake_raw.build("vggsound/duet", tree.root, str(tmp_path / "two"), {"num_workers": 2})
  for split in ("train", "test"):
    one = fake_raw.read_split("vggsound/duet", str(tmp_path / "one"), split)
    two = fake_raw.read_split("vggsound/duet", str(tmp_path / "two"), split)
    assert len(one) == len(two) > 0
    for a, b in zip(one, two):
      assert a.keys() == b.keys()
      for key in a:
        values_a = a[key] if isinstance(a[key], list) else [a[key]]
        values_b = b[key] if isinstance(b[key], list) else [b[key]]
        assert len(values_a) == len(values_b), key
        assert all(np.array_equal(x, y) for x, y in zip(values_a, values_b)), key


def test_duet_44k_config_stores_44100_hz(tmp_path):
  """The T-VSL rate: clips are resampled to 44.1 kHz (the fake files are 22.05 kHz)."""
  tree = fake_raw.make_tree("vggsound", "duet", str(tmp_path / "raw"), "frames")
  builder = fake_raw.build("vggsound/duet_44k", tree.root, str(tmp_path / "tfds"), {"splits": ("test",)})
  assert builder.builder_config.sample_rate == 44100
  for record in fake_raw.read_split("vggsound/duet_44k", str(tmp_path / "tfds"), "test"):
    assert int(record["sample_rate"]) == 44100 and int(record["resampled_from_hz"]) == fake_raw.AUDIO_RATE
    assert record["waveform"].size == record["partner_waveform"].size == int(fake_raw.CLIP_SECONDS * 44100)
