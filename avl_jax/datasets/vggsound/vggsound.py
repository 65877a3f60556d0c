"""`vggsound`: VGGSound-Single and VGGSound-Duet, tested on VGG-SS (docs/datasets.md §4).

  python -m avl_jax.prepare --dataset=vggsound/duet --data_dir=DATA --manual_dir=RAW

Train: the user's VGGSound train list (not bundled). Test: the 5,158 VGG-SS clips with their normalised xyxy
boxes (1 to 7 per clip, `vggss.json`); duet tests pair each clip with the fixed partner of
`vggsound_duet_test.csv` and store both clips' frames, audio and boxes (source 0 = own, source 1 = partner).
"""
import functools

from avl_jax.datasets import builder_lib
from avl_jax.datasets import items as items_lib
from avl_jax.datasets import metadata
from avl_jax.datasets import raw
import tensorflow_datasets as tfds

# Accepted names of the train list in the manual dir (the official single and duet lists are the same file).
TRAIN_LISTS = ("vggsound_single_train.txt", "vggsound_duet_train.txt", "vggsound_train.txt")
TEST_FILES = {"single": "vggsound_single_test.csv", "duet": "vggsound_duet_test.csv"}
BOXES_FILE = "vggss.json"

SINGLE = builder_lib.RawConfig(
    name="single", description="VGGSound-Single: 221 classes, VGG-SS test boxes, 16 kHz, whole 10 s clips.",
    num_classes=221, gt_format="vggsound_single", sample_rate=16000, audio_seconds=0.0)
DUET = builder_lib.RawConfig(
    name="duet", description="VGGSound-Duet: as single, test clips paired with the fixed partners of "
    "vggsound_duet_test.csv (both frames, audio and boxes stored), 16 kHz, whole clips.",
    num_classes=221, gt_format="vggsound_duet", sample_rate=16000, audio_seconds=0.0)
SINGLE_44K = builder_lib.at_tvsl_rate(SINGLE)
DUET_44K = builder_lib.at_tvsl_rate(DUET)

_DESCRIPTION = """\
VGGSound clips (10 s, 221 VGG-SS classes) for multi-source sound localization. Train: the user's VGGSound train
list (`id,class` in underscore spelling); duet training mixes a random partner of another class in the input
pipeline. Test: VGG-SS (5,158 clips, boxes on the middle frame, normalised [x1, y1, x2, y2]); duet test pairs
are fixed by vggsound_duet_test.csv. Label index = position in the sorted list of the 221 test classes (the
official train list has the same vocabulary).
"""

_INSTRUCTIONS = """\
Put the raw VGGSound clips (train and VGG-SS test) in the manual directory in either layout:
  (a) extracted, as the official loaders expect:  frames/<ytid>_<start:06d>.jpg (the middle frame) and
        audio/<ytid>_<start:06d>.wav (any rate; resampled to the config's rate)
  (b) the clips:  <ytid>_<start:06d>.mp4  (or video/<id>.mp4): the middle frame (config frame_position) and
        the audio track, decoded with PyAV.
The VGGSound train list is NOT bundled: put it at <manual_dir>/vggsound_single_train.txt (or
vggsound_duet_train.txt; the official AVGN metadata/ file, `id,class`). The VGG-SS test files
(vggss.json, vggss_test.csv, vggsound_single_test.csv, vggsound_duet_test.csv) are bundled with avl_jax; a file
of the same name in <manual_dir>/metadata/ or <manual_dir>/ overrides the bundled copy.
"""


@functools.lru_cache(maxsize=None)
def bundled_classes() -> tuple[str, ...]:
  """The 221 VGG-SS classes (underscore spelling) of the bundled single test csv, sorted."""
  rows = metadata.read_rows(str(metadata.BUNDLED_DIR / TEST_FILES["single"]))
  return tuple(metadata.vocabulary(rows, (1,)))


class Vggsound(builder_lib.RawAvBuilder):
  """DatasetBuilder for VGGSound-Single (`vggsound/single`) and -Duet (`vggsound/duet`, `vggsound/duet_44k`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: single, duet and duet_44k configs; VGG-SS test set."}
  BUILDER_CONFIGS = [SINGLE, DUET, SINGLE_44K, DUET_44K]
  DEFAULT_CONFIG_NAME = "single"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  DESCRIPTION = _DESCRIPTION
  HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/vggsound/"

  def _class_names(self) -> list[str]:
    return list(bundled_classes())

  def _split_items(self, split: str, manual_dir: str) -> builder_lib.SplitItems:
    if split == "train":
      return self._train_items(manual_dir)
    if split == "test":
      return self._test_items(manual_dir)
    raise ValueError(f"vggsound has splits 'train' and 'test', not {split!r}")

  def _train_items(self, manual_dir: str) -> builder_lib.SplitItems:
    source = metadata.find_first(TRAIN_LISTS, manual_dir, bundled=False)
    if source is None:
      raise FileNotFoundError(
          f"VGGSound train list not found: put the official list (`id,class`) at {manual_dir}/{TRAIN_LISTS[0]} "
          f"(or one of {TRAIN_LISTS[1:]}, also accepted in {manual_dir}/metadata/). It is not bundled.")
    rows = metadata.read_rows(source.path)
    vocab = builder_lib.check_vocabulary(self._class_names(), rows, (1,), source.path)
    result = builder_lib.SplitItems([], [], [source])
    for key, row in enumerate(rows):
      try:
        builder_lib.check_fields(row, 2, source.path)
        result.items.append(items_lib.Item(
            key=key, example_id=row[0], clip=items_lib.Clip.single(row[0]),
            source_class=(builder_lib.class_index(row[1], vocab, source.path),)))
      except raw.SkipError as e:
        result.skipped.append(items_lib.Skipped.from_error(key, row[0], e))
    return result

  def _test_items(self, manual_dir: str) -> builder_lib.SplitItems:
    """Single: `id,class` rows; duet: `id,class,partner_id,partner_class`; boxes of both from vggss.json."""
    duet = self.builder_config.variant == "duet"
    ids_file = metadata.require(TEST_FILES["duet" if duet else "single"], manual_dir)
    boxes_file = metadata.require(BOXES_FILE, manual_dir)
    boxes_by_id = {file: entry.get("bbox") for file, entry in metadata.entries_by_file(boxes_file.path).items()}
    vocab = {name: i for i, name in enumerate(self._class_names())}
    result = builder_lib.SplitItems([], [], [ids_file, boxes_file])
    for key, row in enumerate(metadata.read_rows(ids_file.path)):
      try:
        builder_lib.check_fields(row, 4 if duet else 2, ids_file.path)
        clip_ids = [row[0], row[2]] if duet else [row[0]]
        classes = tuple(builder_lib.class_index(name, vocab, ids_file.path)
                        for name in ([row[1], row[3]] if duet else [row[1]]))
        boxes, box_source = [], []
        for source, clip_id in enumerate(clip_ids):
          clip_boxes = _clip_boxes(boxes_by_id, clip_id, boxes_file.path)
          boxes.extend(clip_boxes)
          box_source.extend([source] * len(clip_boxes))
        result.items.append(items_lib.Item(
            key=key, example_id=row[0], clip=items_lib.Clip.single(row[0]), source_class=classes,
            boxes=tuple(boxes), box_source=tuple(box_source), box_format="xyxy",
            partner=items_lib.Clip.single(row[2]) if duet else None, partner_id=row[2] if duet else ""))
      except raw.SkipError as e:
        result.skipped.append(items_lib.Skipped.from_error(key, row[0], e))
    return result


def _clip_boxes(boxes_by_id: dict, clip_id: str, path: str) -> list[tuple[float, float, float, float]]:
  """The VGG-SS boxes of a clip: a non-empty list of 4-number boxes, validated."""
  values = boxes_by_id.get(clip_id)
  if not isinstance(values, list) or not values:
    raise raw.SkipError("malformed_box", path, f"no boxes for {clip_id}: {values!r}")
  return [items_lib.check_box(box, path) for box in values]
