"""`vgginstruments`: VGGSound-Instruments (Mix-and-Localize), single and multi (docs/datasets.md §3).

  python -m avl_jax.prepare --dataset=vgginstruments/multi --data_dir=DATA --manual_dir=RAW

37 instrument classes of VGGSound. Train: AVGN's list (bundled). Test: 446 annotated samples `sampleNNNN`
whose GT are pickled segmentation masks (stored per source as PNG, values kept); multi tests pair each sample
with the fixed partner of `vgginstruments_multi_test.csv` and store both frames, audio tracks and masks (the
official AVGN loader forgot the partner's audio and frame; the pipeline's `eval_mix_partner_audio` switch
reproduces or fixes that).
"""
import functools

from avl_jax.datasets import builder_lib
from avl_jax.datasets import items as items_lib
from avl_jax.datasets import metadata
from avl_jax.datasets import raw
import tensorflow_datasets as tfds

FILES = {
    "single": {"train": "vgginstruments_train.txt", "test": "vgginstruments_test.csv"},
    "multi": {"train": "vgginstruments_multi_train.txt", "test": "vgginstruments_multi_test.csv"},
}

SINGLE = builder_lib.RawConfig(
    name="single", description="VGGSound-Instruments: 37 classes, mask GT, 16 kHz, whole 10 s clips.",
    num_classes=37, gt_format="vgginstruments", sample_rate=16000, audio_seconds=0.0)
MULTI = builder_lib.RawConfig(
    name="multi", description="VGGSound-Instruments multi: test samples paired with fixed partners (both frames, "
    "audio and masks stored), 16 kHz, whole clips.",
    num_classes=37, gt_format="vgginstruments_multi", sample_rate=16000, audio_seconds=0.0)
SINGLE_44K = builder_lib.at_tvsl_rate(SINGLE)
MULTI_44K = builder_lib.at_tvsl_rate(MULTI)

_DESCRIPTION = """\
VGGSound-Instruments (Mix-and-Localize): 37 instrument classes of VGGSound. Train: AVGN's list of 33,934
VGGSound clips (the single and multi lists are the same file); multi training mixes a random partner of another
class in the input pipeline. Test: 446 annotated frames with segmentation masks; multi test pairs are fixed by
vgginstruments_multi_test.csv. Label index = position in the sorted class list of the train file.
"""

_INSTRUCTIONS = """\
Put the raw data in the manual directory in either layout:
  (a) extracted:  frames/<id>.jpg and audio/<id>.wav, for the VGGSound train ids (<ytid>_<start:06d>) and the
        Mix-and-Localize test samples (sample0000 ... sample0499)
  (b) clips:  <id>.mp4 (or video/<id>.mp4): the middle frame (config frame_position) and the audio track.
Test GT: the Mix-and-Localize annotation pickles, one per sample, in <manual_dir>/masks/ (masks/sample0000.pkl;
any extension: the sample is the file name up to its first '.'). Only use pickles you trust.
Metadata (vgginstruments_train.txt, vgginstruments_test.csv, vgginstruments_multi_train.txt,
vgginstruments_multi_test.csv) is bundled with avl_jax; a file of the same name in <manual_dir>/metadata/ or
<manual_dir>/ overrides the bundled copy.
"""


@functools.lru_cache(maxsize=None)
def bundled_classes() -> tuple[str, ...]:
  """The 37 classes of the bundled train list, sorted."""
  return tuple(metadata.vocabulary(metadata.read_rows(str(metadata.BUNDLED_DIR / FILES["single"]["train"])), (1,)))


class Vgginstruments(builder_lib.RawAvBuilder):
  """DatasetBuilder for VGGSound-Instruments (`vgginstruments/single`, `vgginstruments/multi`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: single and multi configs, mask GT."}
  BUILDER_CONFIGS = [SINGLE, MULTI, SINGLE_44K, MULTI_44K]
  DEFAULT_CONFIG_NAME = "single"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  DESCRIPTION = _DESCRIPTION
  HOMEPAGE = "https://github.com/hxixixh/mix-and-localize"

  def _class_names(self) -> list[str]:
    return list(bundled_classes())

  def _split_items(self, split: str, manual_dir: str) -> builder_lib.SplitItems:
    variant = self.builder_config.variant
    if split not in ("train", "test"):
      raise ValueError(f"vgginstruments has splits 'train' and 'test', not {split!r}")
    source = metadata.require(FILES[variant][split], manual_dir)
    rows = metadata.read_rows(source.path)
    multi_test = split == "test" and variant == "multi"
    if split == "train":
      vocab = builder_lib.check_vocabulary(self._class_names(), rows, (1,), source.path)
    else:
      vocab = {name: i for i, name in enumerate(self._class_names())}
    result = builder_lib.SplitItems([], [], [source])
    for key, row in enumerate(rows):
      try:
        builder_lib.check_fields(row, 4 if multi_test else 2, source.path)
        names = [row[1], row[3]] if multi_test else [row[1]]
        classes = tuple(builder_lib.class_index(name, vocab, source.path) for name in names)
        masks = () if split == "train" else ((row[0], row[2]) if multi_test else (row[0],))
        result.items.append(items_lib.Item(
            key=key, example_id=row[0], clip=items_lib.Clip.single(row[0]), source_class=classes, masks=masks,
            partner=items_lib.Clip.single(row[2]) if multi_test else None,
            partner_id=row[2] if multi_test else ""))
      except raw.SkipError as e:
        result.skipped.append(items_lib.Skipped.from_error(key, row[0], e))
    return result
