"""`music`: MUSIC-Solo and MUSIC-Duet with the official AVGN train lists and DSOL test boxes (docs/datasets.md §2).

  python -m avl_jax.prepare --dataset=music/solo --data_dir=DATA --manual_dir=RAW

Examples are frames (`{ytid}_{seg:03d}_{frame:05d}`); as in the official loaders, every frame of a video gets
the same centre window of the whole video's audio. Test boxes are normalised [x, y, w, h] in the metadata:
`boxes` holds them converted to xyxy, `boxes_raw` as published (the `official` protocol reads them as xyxy).
"""
import functools

from avl_jax.datasets import builder_lib
from avl_jax.datasets import items as items_lib
from avl_jax.datasets import metadata
from avl_jax.datasets import raw
import tensorflow_datasets as tfds

FILES = {
    "solo": {"train": "music_solo_train.txt", "test": "music_solo_test.csv", "boxes": "music_solo.json"},
    "duet": {"train": "music_duet_train.txt", "test": "music_duet_test.csv", "boxes": "music_duet.json"},
}

SOLO = builder_lib.RawConfig(
    name="solo", description="MUSIC-Solo: 11 instruments, 1 box per test frame, 16 kHz, 5 s centre audio window.",
    num_classes=11, gt_format="music_solo", sample_rate=16000, audio_seconds=5.0)
DUET = builder_lib.RawConfig(
    name="duet", description="MUSIC-Duet: 8 instruments, 2 sources per frame (natural duets), 16 kHz, 5 s window.",
    num_classes=8, gt_format="music_duet", sample_rate=16000, audio_seconds=5.0)
SOLO_44K = builder_lib.at_tvsl_rate(SOLO)
DUET_44K = builder_lib.at_tvsl_rate(DUET)

_DESCRIPTION = """\
MUSIC (Sound-of-Pixels) frames with the official AVGN splits: MUSIC-Solo (11 classes) and MUSIC-Duet (8 classes,
two instruments per frame). Test GT: DSOL's normalised [x, y, w, h] boxes (AVGN's music_solo.json /
music_duet.json). Label index = position in the sorted class list of the train file. Duet test audio is the
natural duet. Audio: the centre window of the video's whole audio, the same for every frame of a video
(official behaviour).
"""

_INSTRUCTIONS = """\
Put the raw MUSIC data in the manual directory in either layout (per clip, frames+audio win when both exist):
  (a) extracted, as the official loaders expect:
        frames/<ytid>_<seg:03d>_<frame:05d>.jpg   (DSOL-style frame extraction; test frames must come from it)
        audio/<ytid>.wav                          (one wav per video, any rate; resampled to the config's rate)
  (b) the original videos:  <ytid>.mp4  (or video/<ytid>.mp4): the frame with index <frame> (at the mp4's own
        frame rate, or config video_fps) and the video's audio track.
Metadata: the official lists (music_solo_train.txt, music_solo_test.csv, music_solo.json, music_duet_train.txt,
music_duet_test.csv, music_duet.json) are bundled with avl_jax; a file of the same name in <manual_dir>/metadata/
or <manual_dir>/ overrides the bundled copy.
"""


@functools.lru_cache(maxsize=None)
def bundled_classes(variant: str) -> tuple[str, ...]:
  """Class vocabulary of the bundled train list (solo: 11, duet: 8 = union of both columns)."""
  rows = metadata.read_rows(str(metadata.BUNDLED_DIR / FILES[variant]["train"]))
  return tuple(metadata.vocabulary(rows, (1,) if variant == "solo" else (1, 2)))


def _clip(frame_id: str, path: str) -> items_lib.Clip:
  """The clip of a MUSIC frame id `{ytid}_{seg:03d}_{frame:05d}`; SkipError(malformed_row) for another id."""
  if not metadata.is_music_frame_id(frame_id):
    raise raw.SkipError("malformed_row", path,
                        f"{frame_id!r} is not a MUSIC frame id {{ytid}}_{{seg:03d}}_{{frame:05d}}")
  video = metadata.music_video_id(frame_id)
  return items_lib.Clip(frame_name=frame_id, audio_name=video, video_name=video,
                        frame_index=metadata.music_frame_index(frame_id), shared_audio=True)


class Music(builder_lib.RawAvBuilder):
  """DatasetBuilder for MUSIC-Solo (`music/solo`) and MUSIC-Duet (`music/duet`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: solo and duet configs from the official AVGN metadata."}
  BUILDER_CONFIGS = [SOLO, DUET, SOLO_44K, DUET_44K]
  DEFAULT_CONFIG_NAME = "solo"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  DESCRIPTION = _DESCRIPTION
  HOMEPAGE = "https://github.com/roudimit/MUSIC_dataset"

  def _class_names(self) -> list[str]:
    return list(bundled_classes(self.builder_config.variant))

  def _split_items(self, split: str, manual_dir: str) -> builder_lib.SplitItems:
    variant = self.builder_config.variant
    if split == "train":
      return self._train_items(variant, manual_dir)
    if split == "test":
      return self._test_items(variant, manual_dir)
    raise ValueError(f"music has splits 'train' and 'test', not {split!r}")

  def _train_items(self, variant: str, manual_dir: str) -> builder_lib.SplitItems:
    """Train list rows `id,class` (solo) or `id,class1,class2` (duet; class1 = the primary source)."""
    source = metadata.require(FILES[variant]["train"], manual_dir)
    rows = metadata.read_rows(source.path)
    vocab = builder_lib.check_vocabulary(self._class_names(), rows, (1,) if variant == "solo" else (1, 2),
                                         source.path)
    num_fields = 2 if variant == "solo" else 3
    result = builder_lib.SplitItems([], [], [source])
    for key, row in enumerate(rows):
      try:
        builder_lib.check_fields(row, num_fields, source.path)
        classes = tuple(builder_lib.class_index(name, vocab, source.path) for name in row[1:num_fields])
        result.items.append(items_lib.Item(key=key, example_id=row[0], clip=_clip(row[0], source.path),
                                             source_class=classes))
      except raw.SkipError as e:
        result.skipped.append(items_lib.Skipped.from_error(key, row[0], e))
    return result

  def _test_items(self, variant: str, manual_dir: str) -> builder_lib.SplitItems:
    """Test csv ids with their json annotations (solo: class + 1 box; duet: class_src1/2 + bbox_src1/2)."""
    ids_file = metadata.require(FILES[variant]["test"], manual_dir)
    boxes_file = metadata.require(FILES[variant]["boxes"], manual_dir)
    annotations = metadata.entries_by_file(boxes_file.path)
    vocab = {name: i for i, name in enumerate(self._class_names())}
    result = builder_lib.SplitItems([], [], [ids_file, boxes_file])
    for key, row in enumerate(metadata.read_rows(ids_file.path)):
      try:
        entry = annotations.get(row[0])
        if entry is None:
          raise raw.SkipError("malformed_box", boxes_file.path, f"no annotation for {row[0]}")
        sources = ([("class", "bbox")] if variant == "solo" else
                   [("class_src1", "bbox_src1"), ("class_src2", "bbox_src2")])
        classes = tuple(builder_lib.class_index(entry.get(c, ""), vocab, boxes_file.path) for c, _ in sources)
        boxes = tuple(items_lib.check_box(entry.get(b), boxes_file.path, field=b) for _, b in sources)
        result.items.append(items_lib.Item(
            key=key, example_id=row[0], clip=_clip(row[0], ids_file.path), source_class=classes, boxes=boxes,
            box_source=tuple(range(len(boxes))), box_format="xywh"))
      except raw.SkipError as e:
        result.skipped.append(items_lib.Skipped.from_error(key, row[0], e))
    return result
