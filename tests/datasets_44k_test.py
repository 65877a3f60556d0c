"""The 44.1 kHz configs of T-VSL (music/{solo,duet}_44k, vggsound/{single,duet}_44k,
vgginstruments/{single,multi}_44k) build from both raw layouts: the same examples, frames, annotations and skip
report as their 16 kHz config built from the same tree, with the audio (and the fixed duet partners' audio)
resampled to 44.1 kHz instead."""
import os

import numpy as np
import pytest

from avl_jax.datasets import builder_lib
from avl_jax.datasets import fake_raw

CONFIGS = [("music", "solo"), ("music", "duet"), ("vggsound", "single"), ("vggsound", "duet"),
           ("vgginstruments", "single"), ("vgginstruments", "multi")]
CASES = [(dataset, variant, layout) for dataset, variant in CONFIGS for layout in ("frames", "video")]
AUDIO_KEYS = ("waveform", "partner_waveform", "sample_rate", "preprocessing")


def _peak_hz(waveform: np.ndarray, rate: int) -> float:
  spectrum = np.abs(np.fft.rfft(waveform.astype(np.float64) * np.hanning(len(waveform))))
  return float(np.fft.rfftfreq(len(waveform), 1.0 / rate)[np.argmax(spectrum)])


def _same(a, b) -> bool:
  a, b = (x if isinstance(x, list) else [x] for x in (a, b))
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("dataset,variant,layout", CASES, ids=["-".join(case) for case in CASES])
def test_44k_config_builds_from_layout(tmp_path, dataset, variant, layout):
  tree = fake_raw.make_tree(dataset, variant, str(tmp_path / "raw"), layout)
  builder = fake_raw.build(f"{dataset}/{variant}_44k", tree.root, str(tmp_path / "tfds"))
  fake_raw.build(f"{dataset}/{variant}", tree.root, str(tmp_path / "tfds"))
  assert builder.builder_config.sample_rate == 44100
  for split in ("train", "test"):
    records = fake_raw.read_split(f"{dataset}/{variant}_44k", str(tmp_path / "tfds"), split)
    reference = fake_raw.read_split(f"{dataset}/{variant}", str(tmp_path / "tfds"), split)
    assert [r["id"].decode() for r in records] == [r["id"].decode() for r in reference] == tree.expected[split]
    report = builder_lib.read_report(os.path.join(builder.data_dir, f"skipped_{split}.csv"))
    assert [(row["id"], row["reason"]) for row in report] == tree.expected_skips[split]
    for record, ref in zip(records, reference):
      for key in record.keys() - set(AUDIO_KEYS) - {"resampled_from_hz"}:
        assert _same(record[key], ref[key]), (record["id"], key)  # frames, boxes, classes, partners, masks
      assert int(record["sample_rate"]) == 44100 and int(ref["sample_rate"]) == 16000
      for key in ("waveform", "partner_waveform"):
        ours, theirs = np.asarray(record[key]), np.asarray(ref[key])
        # The same duration (video audio is resampled by the decoder: a few samples of edge rounding).
        assert ours.dtype == np.int16 and abs(ours.size - theirs.size * 44100 / 16000) <= 8, key
        if theirs.size:  # the same tone, resampled to the other rate
          assert abs(_peak_hz(ours, 44100) - _peak_hz(theirs, 16000)) < 16000 / theirs.size * 2, key
