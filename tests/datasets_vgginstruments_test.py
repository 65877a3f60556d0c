"""`vgginstruments` builder: single and multi from both raw layouts: counts, masks, fixed partners, report."""
import os

import numpy as np
import pytest

from avl_jax.datasets import builder_lib
from avl_jax.datasets import fake_raw
from avl_jax.datasets.vgginstruments import vgginstruments

CASES = [(variant, layout) for variant in ("single", "multi") for layout in ("frames", "video")]


@pytest.fixture(scope="module", params=CASES, ids=["-".join(case) for case in CASES])
def built(request, tmp_path_factory):
  variant, layout = request.param
  root = tmp_path_factory.mktemp(f"vgginstruments_{variant}_{layout}")
  tree = fake_raw.make_tree("vgginstruments", variant, str(root / "raw"), layout)
  builder = fake_raw.build(f"vgginstruments/{variant}", tree.root, str(root / "tfds"))
  records = {split: fake_raw.read_split(f"vgginstruments/{variant}", str(root / "tfds"), split)
             for split in ("train", "test")}
  return tree, builder, records


def test_counts_ids_and_skip_report(built):
  tree, builder, records = built
  for split in ("train", "test"):
    assert [r["id"].decode() for r in records[split]] == tree.expected[split]
    report = builder_lib.read_report(os.path.join(builder.data_dir, f"skipped_{split}.csv"))
    assert [(row["id"], row["reason"]) for row in report] == tree.expected_skips[split]


def test_masks_classes_and_partners(built):
  tree, builder, records = built
  multi = builder.builder_config.name == "multi"
  classes = list(vgginstruments.bundled_classes())
  assert builder.info.metadata["class_names"] == classes and len(classes) == 37
  assert builder.info.metadata["gt_format"] == ("vgginstruments_multi" if multi else "vgginstruments")
  for record in records["train"]:
    assert not record["masks"] and record["partner_id"] == b""
  for record in records["test"]:
    sample = record["id"].decode()
    samples = [sample, tree.partners["test"][sample]] if multi else [sample]
    assert record["partner_id"].decode() == (samples[1] if multi else "")
    assert len(record["masks"]) == len(samples) and len(record["partner_frame"]) == len(samples) - 1
    for mask, name in zip(record["masks"], samples):
      np.testing.assert_array_equal(mask[..., 0], fake_raw.fake_mask(name))  # lossless, values as stored
    assert record["boxes"].shape == (0, 4) and record["box_format_raw"] == b""
    np.testing.assert_array_equal(record["source_class"],
                                  [classes.index(fake_raw.VGGINSTRUMENTS_CLASSES[int(s[-4:]) % 4]) for s in samples])
    if multi:
      assert record["partner_waveform"].size > 0
