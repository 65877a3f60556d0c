"""The TFDS builder base shared by the real datasets (music, vggsound, vgginstruments).

A subclass turns the official metadata into `items.Item`s (`_split_items`); this base does the rest, the same
way for every dataset:

1. Files: every item's files are looked up in the manual directory before anything is decoded. Items without
   files are skipped; when more than `max_missing_fraction` of a split is missing, the build fails at once
   with a message naming the manual dir and the expected layout (a wrong or empty manual dir is an error,
   not an empty dataset).
2. Decoding: locally, a process pool over every core (`num_workers`), ordered, with a progress line in the
   log; on Apache Beam (when the DownloadConfig has a `beam_runner` or `beam_options`), a
   `Create | Reshuffle | FlatMap` pipeline running the same decode function, so both paths write the same
   examples. Records are sorted by the item key (the row of the metadata), so both write the same order.
3. Report: every skipped example (id, file, reason, detail) goes to `skipped_{split}.csv` next to the
   prepared dataset ({data_dir}/{name}/{config}/{version}/), its counts to the log and to the dataset's
   metadata (`skipped`). Decode failures count against `max_missing_fraction` too, and so does any unexpected
   exception while building one example (reason `build_error`, detail = exception type, message and where it
   was raised): one bad example never stops the build. A failed build leaves its report at
   {data_dir}/{name}/{config}/skipped_{split}.failed.csv.
4. Boxes: before anything is decoded, examples with an inverted box (`malformed_box`) or more than the
   config's `max_boxes` boxes (`too_many_boxes`, which the eval pipeline would reject) are skipped
   (items.check_boxes); the dataset's metadata records, per split, the largest box and source counts of the
   examples sent to decoding and how many of their boxes are empty after clipping (`boxes`: {split:
   {'max_boxes', 'max_sources', 'empty_boxes'}}), to compare with config.dataset.max_boxes / max_sources.

Config fields can be overridden without defining a new config:
`tfds.builder("music/solo", data_dir=..., config_overrides={"frame_short_side": 128})`.
"""
import collections
import csv
import dataclasses
import functools
import io
import multiprocessing
import os
import time
from typing import Any, Iterator, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from avl_jax.datasets import items as items_lib
from avl_jax.datasets import metadata
from avl_jax.datasets import raw
from avl_jax.datasets import schema

REPORT_COLUMNS = ("id", "file", "reason", "detail")
# ArrayRecord options of the real datasets: one record per chunk (random access, as TFDS) and no compression:
# JPEG frames and int16 audio barely compress (3 %), and decompressing costs the training pipeline ~0.7 ms per
# record read (two reads per mixed example).
ARRAY_RECORD_OPTIONS = "group_size:1,uncompressed"
# Fields of a config that decide the stored features (and hence its name); they cannot be overridden.
_FIXED_FIELDS = ("name", "num_classes", "version")
_PROGRESS_SECONDS = 30.0
# Default of RawConfig.max_boxes: config.dataset.max_boxes of the training/eval configs (config_lib, 16), the
# padding of the eval pipeline, which rejects an example with more boxes. The official test sets need at most 11
# (VGG-SS duet pairs; tests/paper_configs_test.py).
MAX_BOXES = 16


class _UncompressedArrayRecordWriter(tfds.core.writer.ExampleWriter):
  """TFDS's example writer, with ARRAY_RECORD_OPTIONS for ArrayRecord files (readers need no option)."""

  def write(self, path, examples):
    if self.file_format != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
      return super().write(path, examples)
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    writer = array_record_module.ArrayRecordWriter(os.fspath(path), ARRAY_RECORD_OPTIONS)
    for _, serialized_example in examples:
      writer.write(serialized_example)
    writer.close()
    return None


TVSL_SUFFIX = "_44k"
TVSL_SAMPLE_RATE = 44100


def at_tvsl_rate(config: "RawConfig") -> "RawConfig":
  """`config` with its audio stored at T-VSL's 44.1 kHz, named `<name>_44k`; everything else the same."""
  rate = f"{config.sample_rate // 1000} kHz"
  if rate not in config.description:
    raise ValueError(f"The description of config {config.name!r} should state its rate ({rate}).")
  return dataclasses.replace(config, name=config.name + TVSL_SUFFIX, sample_rate=TVSL_SAMPLE_RATE,
                             description=config.description.replace(rate, "44.1 kHz (T-VSL)"))


class MostlyMissingError(ValueError):
  """More than `max_missing_fraction` of a split could not be built."""


@dataclasses.dataclass(eq=False)
class RawConfig(tfds.core.BuilderConfig):
  """BuilderConfig of the real datasets.

  Attributes:
    num_classes: K (the class vocabulary of the config's official train list).
    gt_format: the official GT format name (docs/metrics.md §2, avl_jax.metrics.gt_maps.FORMATS).
    sample_rate: stored audio rate in Hz (16 kHz for AVGN; 44.1 kHz for T-VSL).
    audio_seconds: length of the stored centre window in seconds; 0 stores whole clips.
    short_audio: clips shorter than the window: 'skip' (reported), 'tile' (official) or 'pad' (zeros).
    frame_short_side: short side of the stored frames (aspect kept; training resizes and crops from it).
    jpeg_quality: quality of the stored JPEG frames.
    frame_position: mp4 layout: the frame nearest this fraction of the video (0.5: the middle).
    layout: 'auto' (per clip: frames/+audio/ when both exist, else the mp4), 'frames' or 'video'.
    video_fps: MUSIC mp4s: frames per second that map a frame id to a time (0: the mp4's own rate).
    max_missing_fraction: a split fails to build when more than this fraction of its listed examples is
      skipped (missing or unreadable).
    max_boxes: examples with more boxes are skipped (`too_many_boxes`); keep it <= config.dataset.max_boxes
      of the configs that evaluate the dataset (default MAX_BOXES = 16, the configs' default).
    num_workers: local decode processes (0: every core; 1: in the calling process).
    splits: the splits to build.
  """
  num_classes: int = 0
  gt_format: str = ""
  sample_rate: int = 16000
  audio_seconds: float = 0.0
  short_audio: str = "skip"
  frame_short_side: int = 256
  jpeg_quality: int = 95
  frame_position: float = 0.5
  layout: str = "auto"
  video_fps: float = 0.0
  max_missing_fraction: float = 0.5
  max_boxes: int = MAX_BOXES
  num_workers: int = 0
  splits: tuple[str, ...] = ("train", "test")

  @property
  def variant(self) -> str:
    """The dataset variant: the config name without the `_44k` of the T-VSL-rate configs ('duet_44k' -> 'duet')."""
    return self.name.removesuffix(TVSL_SUFFIX)

  def decode_options(self) -> raw.DecodeOptions:
    return raw.DecodeOptions(
        sample_rate=self.sample_rate, audio_seconds=self.audio_seconds, short_audio=self.short_audio,
        frame_short_side=self.frame_short_side, jpeg_quality=self.jpeg_quality,
        frame_position=self.frame_position, layout=self.layout, video_fps=self.video_fps)

  def validate(self) -> None:
    if self.short_audio not in raw.SHORT_AUDIO:
      raise ValueError(f"short_audio must be one of {raw.SHORT_AUDIO}, got {self.short_audio!r}")
    if self.layout not in ("auto", "frames", "video"):
      raise ValueError(f"layout must be 'auto', 'frames' or 'video', got {self.layout!r}")
    if not 0.0 <= self.max_missing_fraction <= 1.0:
      raise ValueError(f"max_missing_fraction must be in [0, 1], got {self.max_missing_fraction}")
    if not 0.0 <= self.frame_position <= 1.0:
      raise ValueError(f"frame_position must be in [0, 1], got {self.frame_position}")
    if self.max_boxes < 1:
      raise ValueError(f"max_boxes must be >= 1 (config.dataset.max_boxes of the eval configs), got {self.max_boxes}")


@dataclasses.dataclass
class SplitItems:
  """What a subclass returns for one split: the items, rows rejected while parsing, and the files read."""
  items: list[items_lib.Item]
  skipped: list[items_lib.Skipped]
  files: list[metadata.MetadataFile]


@dataclasses.dataclass
class _SplitState:
  listed: int
  skipped: list[items_lib.Skipped]
  num_decoded: int = 0


class RawAvBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the real-dataset builders; subclasses define `_class_names` and `_split_items`."""

  # Shown by TFDS when the manual dir is missing; subclasses write theirs.
  MANUAL_DOWNLOAD_INSTRUCTIONS = ""
  DESCRIPTION = ""
  HOMEPAGE = ""

  def __init__(self, *, config_overrides: dict[str, Any] | None = None, **kwargs):
    self._config_overrides = dict(config_overrides or {})
    fixed = sorted(set(self._config_overrides) & set(_FIXED_FIELDS))
    if fixed:
      raise ValueError(f"config_overrides cannot change {fixed} (they define the stored features).")
    self._use_beam = False
    self._split_states: dict[str, _SplitState] = {}
    super().__init__(**kwargs)

  def _create_builder_config(self, builder_config, version):
    config = super()._create_builder_config(builder_config, version)
    if config is not None and self._config_overrides:
      config = dataclasses.replace(config, **self._config_overrides)
    if config is not None:
      config.validate()
    return config

  # -- To define in subclasses. --------------------------------------------------------------------------------

  def _class_names(self) -> list[str]:
    """The config's class vocabulary (label index = position), known without the manual dir."""
    raise NotImplementedError

  def _split_items(self, split: str, manual_dir: str) -> SplitItems:
    """Parses the official metadata of `split` into items (keys = row positions)."""
    raise NotImplementedError

  # -- TFDS interface. -----------------------------------------------------------------------------------------

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=schema.make_real_features(config.num_classes),
        supervised_keys=None,
        homepage=self.HOMEPAGE or None,
        # Records are sorted by the metadata row (item key), locally and on Beam alike.
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(class_names=self._class_names(), gt_format=config.gt_format),
    )

  def _example_writer(self):
    return _UncompressedArrayRecordWriter(file_format=self.info.file_format)

  def _download_and_prepare(self, dl_manager, download_config=None):
    self._use_beam = bool(download_config is not None and
                          (download_config.beam_runner is not None or download_config.beam_options is not None))
    return super()._download_and_prepare(dl_manager, download_config)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = str(dl_manager.manual_dir)
    config = self.builder_config
    options = config.decode_options()
    generators, provenance, box_stats = {}, {}, {}
    for split in config.splits:
      parsed = self._split_items(split, manual_dir)
      items_lib.check_unique_keys(parsed.items)
      for file in parsed.files:
        provenance[file.name] = file.provenance()
      checked, rejected = _check_boxes_all(parsed.items, _boxes_file(parsed.files), config.max_boxes)
      resolved, skipped = _resolve_all(checked, manual_dir, options)
      box_stats[split] = _box_stats(resolved)
      state = _SplitState(listed=len(parsed.items) + len(parsed.skipped),
                          skipped=parsed.skipped + rejected + skipped)
      self._split_states[split] = state
      self._check_missing(split, state, manual_dir, final=False)
      logging.info("%s %s: %d listed, %d with files, %d skipped before decoding (%s).", self.info.full_name, split,
                   state.listed, len(resolved), len(state.skipped), _reason_counts(state.skipped))
      generators[split] = self._generate_examples(split, resolved)
    self.info.metadata["metadata_files"] = provenance
    self.info.metadata["manual_dir"] = manual_dir
    self.info.metadata["decode_options"] = dataclasses.asdict(options)
    self.info.metadata["boxes"] = box_stats
    return generators

  def _generate_examples(self, split: str, resolved: Sequence[items_lib.Resolved]):
    """Local: a generator of (key, example). Beam: a PTransform producing the same (key, example) pairs."""
    if self._use_beam:
      return _beam_transform(split, resolved, self.builder_config.decode_options(), self.builder_config.num_classes,
                             self._beam_report_path(split))
    return self._generate_local(split, resolved)

  # -- Local path. ---------------------------------------------------------------------------------------------

  def _generate_local(self, split: str, resolved: Sequence[items_lib.Resolved]) -> Iterator[tuple[int, dict]]:
    config = self.builder_config
    state = self._split_states[split]
    process = functools.partial(items_lib.process, options=config.decode_options(), num_classes=config.num_classes)
    num_workers = config.num_workers or os.cpu_count() or 1
    progress = _Progress(f"{self.info.full_name} {split}", len(resolved))
    for key, example, skipped in _map_ordered(process, resolved, num_workers):
      if example is None:
        state.skipped.append(skipped)
        if skipped.reason == "build_error":
          logging.warning("%s %s: example %s skipped, unexpected error: %s", self.info.full_name, split,
                          skipped.example_id, skipped.detail)
      else:
        state.num_decoded += 1
        yield key, example
      progress.update(len(state.skipped))
    progress.done(len(state.skipped))
    self._finish_split(split, manual_dir=self.info.metadata["manual_dir"])

  # -- Beam path. ----------------------------------------------------------------------------------------------

  def _beam_report_path(self, split: str) -> str:
    return os.path.join(self.data_dir, f"skipped_{split}.beam.csv")

  def _process_pipeline_result(self, pipeline_result) -> None:
    """After the Beam pipeline: merges the workers' skip records into each split's report and checks them."""
    super()._process_pipeline_result(pipeline_result)
    for split, state in self._split_states.items():
      path = epath.Path(self._beam_report_path(split))
      if path.exists():
        state.skipped.extend(_parse_report_lines(path.read_text()))
        path.unlink()
      self._finish_split(split, manual_dir=self.info.metadata["manual_dir"])

  # -- Report and the missing-fraction rule. --------------------------------------------------------------------

  def _finish_split(self, split: str, manual_dir: str) -> None:
    state = self._split_states[split]
    counts = _reason_counts(state.skipped)
    write_report(os.path.join(self.data_dir, f"skipped_{split}.csv"), state.skipped)
    skipped_meta = dict(self.info.metadata.get("skipped", {}))
    skipped_meta[split] = {"listed": state.listed, "skipped": len(state.skipped), "reasons": counts}
    self.info.metadata["skipped"] = skipped_meta
    final_dir = os.path.join(os.fspath(self.data_dir_root), self.info.full_name)  # data_dir is the temporary one
    logging.info("%s %s: %d of %d listed examples skipped (%s); report: %s", self.info.full_name, split,
                 len(state.skipped), state.listed, counts, os.path.join(final_dir, f"skipped_{split}.csv"))
    self._check_missing(split, state, manual_dir, final=True)

  def _check_missing(self, split: str, state: _SplitState, manual_dir: str, final: bool) -> None:
    fraction = len(state.skipped) / max(state.listed, 1)
    limit = self.builder_config.max_missing_fraction
    if fraction <= limit and state.listed > 0:
      return
    report = epath.Path(self.data_dir).parent / f"skipped_{split}.failed.csv"
    write_report(str(report), state.skipped)
    counts = _reason_counts(state.skipped)
    examples = "; ".join(f"{s.reason} {s.file}" for s in state.skipped[:3])
    stage = "could not be built" if final else "have no files"
    top = max(counts, key=counts.get) if counts else ""
    if top == "missing_mask":
      hint = (f"Are the test masks there? manual_dir={manual_dir} should hold masks/<sample>.pkl, one annotation "
              "pickle per test sample (see the builder's MANUAL_DOWNLOAD_INSTRUCTIONS).")
    elif top == "missing_files":
      hint = (f"Is the manual directory right? manual_dir={manual_dir} should hold, per clip, frames/<id>.jpg and "
              "audio/<id>.wav, or <id>.mp4 (see the builder's MANUAL_DOWNLOAD_INSTRUCTIONS).")
    elif top == "missing_frame":
      hint = ("Most listed frames lie past the end of their videos: for MUSIC, set video_fps to the rate the frame "
              "ids were extracted at (the official frames are numbered at the video's own rate).")
    elif top in ("malformed_box", "too_many_boxes"):
      hint = (f"Most listed examples have unusable boxes: check the annotation file (inverted boxes; more than "
              f"max_boxes={self.builder_config.max_boxes} boxes per example).")
    else:
      hint = (f"Most listed files in manual_dir={manual_dir} exist but fail to decode: check them and the config "
              "(e.g. audio_seconds and short_audio for clips shorter than the window).")
    raise MostlyMissingError(
        f"{self.info.full_name} split {split!r}: {len(state.skipped)} of {state.listed} listed examples "
        f"{stage} ({fraction:.0%} > max_missing_fraction={limit}; reasons {counts}), e.g. {examples}. {hint} "
        f"Full list: {report}. To build from a partial download anyway, raise max_missing_fraction "
        "(config_overrides, or --max_missing_fraction in launch/prepare_data.sh).")


# ------------------------------------------------------------------------------------------------------------------
# Metadata parsing helpers of the subclasses.
# ------------------------------------------------------------------------------------------------------------------


def check_fields(row: Sequence[str], num_fields: int, path: str) -> None:
  """Raises SkipError(malformed_row) unless the metadata row has `num_fields` fields."""
  if len(row) != num_fields:
    raise raw.SkipError("malformed_row", path, f"expected {num_fields} fields, got {list(row)}")


def class_index(name: str, vocab: dict[str, int], path: str) -> int:
  """The label index of a class name; SkipError(unknown_class) outside the config's vocabulary."""
  if name not in vocab:
    raise raw.SkipError("unknown_class", path, f"class {name!r} is not one of the config's {len(vocab)} classes")
  return vocab[name]


def check_vocabulary(class_names: Sequence[str], rows: Sequence[Sequence[str]], columns: tuple[int, ...],
                     path: str) -> dict[str, int]:
  """{name: index} of the config's classes; logs a warning when a (user's) list has other classes."""
  found = set(metadata.vocabulary([list(r) for r in rows], columns))
  if found != set(class_names):
    logging.warning("%s: classes differ from the config's vocabulary (label index = position in the official "
                    "train list): missing %s, unknown (skipped) %s.", path, sorted(set(class_names) - found)[:10],
                    sorted(found - set(class_names))[:10])
  return {name: i for i, name in enumerate(class_names)}


# ------------------------------------------------------------------------------------------------------------------
# Helpers (module level so worker processes and Beam can pickle them).
# ------------------------------------------------------------------------------------------------------------------


def _boxes_file(files: Sequence[metadata.MetadataFile]) -> str:
  """The metadata file that holds a split's boxes (the annotation JSON), for the skip report's `file`."""
  for file in files:
    if file.name.endswith(".json"):
      return file.path
  return files[-1].path if files else ""


def _check_boxes_all(items: Sequence[items_lib.Item], file: str,
                     max_boxes: int) -> tuple[list[items_lib.Item], list[items_lib.Skipped]]:
  """items_lib.check_boxes over a split: (items that pass, skip rows of the others)."""
  kept, skipped = [], []
  for item in items:
    try:
      items_lib.check_boxes(item, file, max_boxes)
      kept.append(item)
    except raw.SkipError as e:
      skipped.append(items_lib.Skipped.from_error(item.key, item.example_id, e))
  return kept, skipped


def _box_stats(resolved: Sequence[items_lib.Resolved]) -> dict[str, int]:
  """{'max_boxes', 'max_sources', 'empty_boxes'} of the examples sent to decoding (metadata `boxes`)."""
  stats = {"max_boxes": 0, "max_sources": 0, "empty_boxes": 0}
  for r in resolved:
    item = r.item
    stats["max_boxes"] = max(stats["max_boxes"], len(item.boxes))
    stats["max_sources"] = max(stats["max_sources"], len(item.source_class))
    if item.boxes:
      boxes, _ = items_lib.normalized_xyxy(np.asarray(item.boxes, np.float64), item.box_format)
      stats["empty_boxes"] += int(np.count_nonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])))
  return stats


def _resolve_all(items: Sequence[items_lib.Item], manual_dir: str,
                 options: raw.DecodeOptions) -> tuple[list[items_lib.Resolved], list[items_lib.Skipped]]:
  resolved, skipped = [], []
  listing = raw.DirListing()
  for item in items:
    try:
      resolved.append(items_lib.resolve(item, manual_dir, options, listing))
    except raw.SkipError as e:
      skipped.append(items_lib.Skipped.from_error(item.key, item.example_id, e))
    except Exception as e:  # pylint: disable=broad-except  (a bug or unforeseen input: one row, not a crash)
      skipped.append(items_lib.Skipped.from_exception(item.key, item.example_id, item.clip.frame_name, e))
  return resolved, skipped


def _map_ordered(fn, values: Sequence[Any], num_workers: int) -> Iterator[Any]:
  """fn over values in order: in this process (1 worker), else in a forkserver process pool.

  forkserver: workers start from a clean interpreter (no forked JAX/TF threads), import only avl_jax's
  raw-reading modules, and need no `if __name__ == "__main__"` guard beyond what absl/pytest scripts have.
  """
  if num_workers <= 1 or len(values) <= 1:
    yield from map(fn, values)
    return
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload(["avl_jax.datasets.items"])
  chunksize = max(1, min(16, len(values) // (4 * num_workers)))
  with context.Pool(min(num_workers, len(values))) as pool:
    yield from pool.imap(fn, values, chunksize=chunksize)


class _Progress:
  """Logs `done/total (rate/s), skipped` every _PROGRESS_SECONDS and at the end."""

  def __init__(self, name: str, total: int):
    self.name, self.total, self.done_count = name, total, 0
    self.start = self.last = time.time()

  def update(self, skipped: int) -> None:
    self.done_count += 1
    now = time.time()
    if now - self.last >= _PROGRESS_SECONDS:
      self.last = now
      self._log(skipped)

  def done(self, skipped: int) -> None:
    self._log(skipped)

  def _log(self, skipped: int) -> None:
    elapsed = max(time.time() - self.start, 1e-9)
    logging.info("%s: %d/%d decoded (%.1f/s), %d skipped so far.", self.name, self.done_count, self.total,
                 self.done_count / elapsed, skipped)


def _reason_counts(skipped: Sequence[items_lib.Skipped]) -> dict[str, int]:
  return dict(sorted(collections.Counter(s.reason for s in skipped).items()))


def _report_line(skipped: items_lib.Skipped) -> str:
  buffer = io.StringIO()
  csv.writer(buffer, lineterminator="").writerow([skipped.key, skipped.example_id, skipped.file, skipped.reason,
                                                   skipped.detail])
  return buffer.getvalue()


def _parse_report_lines(text: str) -> list[items_lib.Skipped]:
  rows = [row for row in csv.reader(io.StringIO(text)) if row]
  return [items_lib.Skipped(int(row[0]), row[1], row[2], row[3], row[4]) for row in rows]


def write_report(path: str, skipped: Sequence[items_lib.Skipped]) -> None:
  """The skip report: a CSV with REPORT_COLUMNS, one row per skipped example, in metadata order."""
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(REPORT_COLUMNS)
  for s in sorted(skipped, key=lambda s: s.key):
    writer.writerow([s.example_id, s.file, s.reason, s.detail])
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  epath.Path(path).write_text(buffer.getvalue())


def read_report(path: str) -> list[dict[str, str]]:
  """Rows of a skip report as dicts with REPORT_COLUMNS."""
  return list(csv.DictReader(io.StringIO(epath.Path(path).read_text())))


def _decode_for_beam(resolved: items_lib.Resolved, options: raw.DecodeOptions, num_classes: int):
  """Beam FlatMap: yields (key, example), or the skip record's CSV line on the 'skipped' output."""
  from apache_beam import pvalue  # pylint: disable=g-import-not-at-top
  key, example, skipped = items_lib.process(resolved, options, num_classes)
  if example is None:
    yield pvalue.TaggedOutput("skipped", _report_line(skipped))
  else:
    yield key, example


def _beam_transform(split: str, resolved: Sequence[items_lib.Resolved], options: raw.DecodeOptions,
                    num_classes: int, report_path: str):
  """Create(items) | Reshuffle | FlatMap(decode): (key, example) pairs; skip lines written to report_path."""
  beam = tfds.core.lazy_imports.apache_beam

  @beam.ptransform_fn
  def generate(pipeline):
    outputs = (pipeline
               | f"{split}_items" >> beam.Create(list(resolved))
               | f"{split}_reshuffle" >> beam.Reshuffle()
               | f"{split}_decode" >> beam.FlatMap(_decode_for_beam, options=options,
                                                   num_classes=num_classes).with_outputs("skipped", main="examples"))
    _ = outputs.skipped | f"{split}_report" >> beam.io.WriteToText(report_path, shard_name_template="",
                                                                    num_shards=1)
    return outputs.examples

  return generate()  # pylint: disable=no-value-for-parameter
