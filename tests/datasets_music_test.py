"""`music` builder: solo and duet from both raw layouts (fake trees): counts, schema, boxes, frames, report."""
import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from avl_jax.datasets import builder_lib
from avl_jax.datasets import fake_raw
from avl_jax.datasets import schema
from avl_jax.datasets.music import music

CASES = [(variant, layout) for variant in ("solo", "duet") for layout in ("frames", "video")]


@pytest.fixture(scope="module", params=CASES, ids=["-".join(case) for case in CASES])
def built(request, tmp_path_factory):
  """(tree, builder, {split: records}) of one config built from one layout."""
  variant, layout = request.param
  root = tmp_path_factory.mktemp(f"music_{variant}_{layout}")
  tree = fake_raw.make_tree("music", variant, str(root / "raw"), layout)
  builder = fake_raw.build(f"music/{variant}", tree.root, str(root / "tfds"))
  records = {split: fake_raw.read_split(f"music/{variant}", str(root / "tfds"), split) for split in ("train", "test")}
  return tree, builder, records


def _spectral_peak(waveform: np.ndarray, rate: int) -> float:
  spectrum = np.abs(np.fft.rfft(waveform.astype(np.float64) * np.hanning(len(waveform))))
  return float(np.fft.rfftfreq(len(waveform), 1.0 / rate)[np.argmax(spectrum)])


def test_counts_ids_and_skip_report(built):
  tree, builder, records = built
  for split in ("train", "test"):
    assert [r["id"].decode() for r in records[split]] == tree.expected[split]
    assert builder.info.splits[split].num_examples == len(tree.expected[split])
    report = builder_lib.read_report(os.path.join(builder.data_dir, f"skipped_{split}.csv"))
    assert [(row["id"], row["reason"]) for row in report] == tree.expected_skips[split]
    assert all(row["file"] for row in report)
    summary = builder.info.metadata["skipped"][split]
    assert summary["skipped"] == len(tree.expected_skips[split])
    assert summary["listed"] == len(tree.expected[split]) + len(tree.expected_skips[split])


def test_schema_and_preprocessing_record(built):
  tree, builder, records = built
  assert set(builder.info.features.keys()) == set(schema.REAL_FEATURE_NAMES)
  assert builder.info.metadata["gt_format"] == f"music_{builder.builder_config.name}"
  assert builder.info.metadata["class_names"] == list(music.bundled_classes(builder.builder_config.name))
  assert all(v["origin"] == "manual" for v in builder.info.metadata["metadata_files"].values())
  for record in records["train"] + records["test"]:
    assert min(record["frame"].shape[:2]) == 32 and record["frame"].dtype == np.uint8
    assert record["waveform"].dtype == np.int16 and record["waveform"].shape == (16000,)
    assert int(record["sample_rate"]) == 16000 and int(record["resampled_from_hz"]) == fake_raw.AUDIO_RATE
    assert record["audio_fill"] == b"none" and record["partner_id"] == b"" and not record["partner_frame"]
    log = json.loads(record["preprocessing"])
    assert log["frame"]["size"] == [fake_raw.FRAME_SIZE[1], fake_raw.FRAME_SIZE[0]]
    assert log["audio"]["rate"] == fake_raw.AUDIO_RATE and log["audio"]["resampled_to"] == 16000
    assert log["frame"]["file"].endswith(".jpg" if tree.layout == "frames" else ".mp4")


def test_frames_are_the_listed_frame_and_audio_is_the_video(built):
  """The frame id's index selects the frame (grey level encodes it); every frame gets its video's audio."""
  _, _, records = built
  for record in records["train"] + records["test"]:
    frame_id = record["id"].decode()
    assert abs(float(record["frame"].mean()) - fake_raw.frame_grey(int(frame_id[-5:]))) < 5, frame_id
    video = frame_id[:-10]
    assert abs(_spectral_peak(record["waveform"], 16000) - fake_raw.clip_frequency(video)) < 3, frame_id


def test_labels_and_boxes(built):
  tree, builder, records = built
  variant = builder.builder_config.name
  classes = builder.info.metadata["class_names"]
  path = pathlib.Path(tree.root) / "metadata" / f"music_{variant}.json"
  entries = {e["file"]: e for e in json.loads(path.read_text())}
  for record in records["train"]:
    assert record["boxes"].shape == (0, 4) and int(record["num_sources"]) == (1 if variant == "solo" else 2)
  for record in records["test"]:
    entry = entries[record["id"].decode()]
    names = [entry["class"]] if variant == "solo" else [entry["class_src1"], entry["class_src2"]]
    raw_boxes = [entry["bbox"]] if variant == "solo" else [entry["bbox_src1"], entry["bbox_src2"]]
    np.testing.assert_array_equal(record["source_class"], [classes.index(n) for n in names])
    np.testing.assert_array_equal(np.nonzero(record["label"])[0], sorted(classes.index(n) for n in names))
    assert record["box_format_raw"] == b"xywh"
    np.testing.assert_array_equal(record["boxes_raw"], np.asarray(raw_boxes, np.float64))  # exact official values
    x, y, w, h = np.asarray(raw_boxes, np.float64).T
    np.testing.assert_allclose(record["boxes"], np.stack([x, y, x + w, y + h], -1), atol=1e-7)
    np.testing.assert_array_equal(record["box_source"], np.arange(len(names)))


def test_mostly_missing_music_fails_with_a_clear_message(tmp_path):
  tree = fake_raw.make_tree("music", "solo", str(tmp_path / "raw"), "frames")
  for name in os.listdir(os.path.join(tree.root, "audio")):
    os.remove(os.path.join(tree.root, "audio", name))
  with pytest.raises(builder_lib.MostlyMissingError, match=r"manual_dir=.*frames/<id>\.jpg"):
    fake_raw.build("music/solo", tree.root, str(tmp_path / "tfds"))
  failed = tmp_path / "tfds" / "music" / "solo" / "skipped_train.failed.csv"
  assert {row["reason"] for row in builder_lib.read_report(str(failed))} == {"missing_files"}
  assert not (tmp_path / "tfds" / "music" / "solo" / "1.0.0").exists()


def test_empty_manual_dir_is_an_error(tmp_path):
  (tmp_path / "raw").mkdir()
  with pytest.raises(Exception, match="(?i)manual"):
    fake_raw.build("music/solo", str(tmp_path / "raw"), str(tmp_path / "tfds"))
  builder = tfds.builder("music/solo", data_dir=str(tmp_path / "tfds"))
  assert "frames/<ytid>_<seg:03d>_<frame:05d>.jpg" in builder.MANUAL_DOWNLOAD_INSTRUCTIONS
