"""Work items of the real-dataset builders and their conversion into examples of the shared schema.

A builder turns the official metadata into a list of `Item`s (one per example; key = the row's position in
the metadata, so the local and the Beam paths write the same records in the same order). Each item then goes
through two steps that raise `raw.SkipError` for a bad example:

  resolve(item, manual_dir, options) -> Resolved     cheap: which files exist (run for every item up front, so
                                                     a wrong manual dir fails before any decoding)
  make_example(resolved, options, num_classes) -> dict   decode, resize, resample, window; the stored example

Like raw.py, this module imports neither TensorFlow nor TFDS: it runs in worker processes and on Beam workers.

Axis letters: S sources, NB boxes, N audio samples, K classes.
"""
import dataclasses
import io
import json
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image

from avl_jax.datasets import raw

BOX_FORMATS = ("xyxy", "xywh", "")  # "" = the GT are masks


@dataclasses.dataclass(frozen=True)
class Clip:
  """The names of one clip's files in the manual directory (raw.find_clip_files).

  Attributes:
    frame_name: layout (a) frame `frames/<frame_name>.jpg`.
    audio_name: layout (a) audio `audio/<audio_name>.wav` (MUSIC: one wav per video).
    video_name: layout (b) video `<video_name>.mp4`.
    frame_index: MUSIC: the frame's index in its video (its time is index / fps); -1: use frame_position.
    shared_audio: the audio file serves many items (MUSIC): cache its decoded window per worker.
  """
  frame_name: str
  audio_name: str
  video_name: str
  frame_index: int = -1
  shared_audio: bool = False

  @classmethod
  def single(cls, clip_id: str) -> "Clip":
    """A clip whose three files are all named by its id (VGGSound, VGGSound-Instruments)."""
    return cls(frame_name=clip_id, audio_name=clip_id, video_name=clip_id)


@dataclasses.dataclass(frozen=True)
class Item:
  """One example to build.

  Attributes:
    key: position of the example's row in the official metadata (record order; unique per split).
    example_id: the stored `id` (the official id of the own clip).
    clip: the own clip (its frame is `frame`, its audio `waveform`).
    source_class: [S] class id per sounding source (order = annotation order; source 1 = the partner).
    boxes: [NB] raw official box values (4 floats each, as in the metadata), validated by `check_box`.
    box_source: [NB] source of each box.
    box_format: 'xyxy' (VGG-SS), 'xywh' (MUSIC) or '' (mask GT).
    partner: duet test: the fixed partner's clip (its frame and audio are stored too), else None.
    partner_id: the partner's official id ('' without partner).
    masks: mask GT: one sample name per source (raw.find_mask), else ().
  """
  key: int
  example_id: str
  clip: Clip
  source_class: tuple[int, ...]
  boxes: tuple[tuple[float, float, float, float], ...] = ()
  box_source: tuple[int, ...] = ()
  box_format: str = ""
  partner: Clip | None = None
  partner_id: str = ""
  masks: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Resolved:
  """An item with the files found for it."""
  item: Item
  files: raw.ClipFiles
  partner_files: raw.ClipFiles | None = None
  mask_files: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Skipped:
  """One row of the skip report."""
  key: int
  example_id: str
  file: str
  reason: str
  detail: str = ""

  @classmethod
  def from_error(cls, key: int, example_id: str, error: raw.SkipError) -> "Skipped":
    return cls(key, example_id, error.file, error.reason, error.detail)


def check_box(values: Any, file: str, field: str = "") -> tuple[float, float, float, float]:
  """A metadata box: exactly 4 finite numbers (out-of-range values are kept: the `official` GT clips them).

  Raises:
    SkipError(malformed_box), the detail naming `field` (e.g. 'bbox_src2') when given.
  """
  where = f"{field}: " if field else ""
  if not isinstance(values, (list, tuple)) or len(values) != 4:
    raise raw.SkipError("malformed_box", file, f"{where}expected 4 numbers, got {values!r}")
  try:
    box = tuple(float(v) for v in values)
  except (TypeError, ValueError) as e:
    raise raw.SkipError("malformed_box", file, f"{where}non-numeric box {values!r}") from e
  if not all(math.isfinite(v) for v in box) or any(isinstance(v, bool) for v in values):
    raise raw.SkipError("malformed_box", file, f"{where}non-finite box {values!r}")
  return box


def normalized_xyxy(boxes: np.ndarray, box_format: str) -> tuple[np.ndarray, bool]:
  """Raw official boxes [NB, 4] -> normalised xyxy clipped to [0, 1], and whether any value was clipped.

  MUSIC's [x, y, w, h] become [x, y, x + w, y + h] (docs/metrics.md §2, standard column).
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  if box_format == "xywh":
    boxes = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
  clipped = np.clip(boxes, 0.0, 1.0)
  return clipped, bool(np.any(clipped != boxes))


# ----------------------------------------------------------------------------------------------------------------
# Step 1: files.
# ----------------------------------------------------------------------------------------------------------------


def _find(clip: Clip, manual_dir: str, layout: str, listing: raw.DirListing | None) -> raw.ClipFiles:
  return raw.find_clip_files(manual_dir, clip.frame_name, clip.audio_name, clip.video_name, layout, listing)


def resolve(item: Item, manual_dir: str, options: raw.DecodeOptions,
            listing: raw.DirListing | None = None) -> Resolved:
  """Finds the files of an item's clip, partner and masks (`listing`: see raw.DirListing).

  Raises:
    SkipError: missing_files (own or partner clip), missing_mask.
  """
  files = _find(item.clip, manual_dir, options.layout, listing)
  partner_files = None
  if item.partner is not None:
    try:
      partner_files = _find(item.partner, manual_dir, options.layout, listing)
    except raw.SkipError as e:
      raise raw.SkipError(e.reason, e.file, f"partner {item.partner_id}: {e.detail}") from e
  mask_files = tuple(raw.find_mask(manual_dir, sample) for sample in item.masks)
  return Resolved(item=item, files=files, partner_files=partner_files, mask_files=mask_files)


# ----------------------------------------------------------------------------------------------------------------
# Step 2: decoding.
# ----------------------------------------------------------------------------------------------------------------


def _frame_and_audio(clip: Clip, files: raw.ClipFiles, options: raw.DecodeOptions) -> tuple[bytes, np.ndarray, dict]:
  """Decodes one clip: JPEG bytes of the stored frame, int16 audio window [n], and what was done to them."""
  if files.video is None:
    pixels = raw.read_image(files.frame)
    frame_record = {"file": files.frame, "time": None}
    if clip.shared_audio:
      waveform, audio_record = raw.stored_audio(files.audio, False, options)
    else:
      samples, rate = raw.read_wav(files.audio)
      waveform, audio_record = raw.window_audio(samples, rate, options, files.audio)
    audio_record = dict(audio_record, file=files.audio)
  else:
    frame_index = clip.frame_index if clip.frame_index >= 0 else None
    decoded = raw.decode_video(files.video, frame_position=options.frame_position, frame_index=frame_index,
                               video_fps=options.video_fps, audio=not clip.shared_audio)
    pixels = decoded.frame
    frame_record = {"file": files.video, "time": round(decoded.frame_time, 6), "fps": round(decoded.fps, 6)}
    if clip.shared_audio:
      waveform, audio_record = raw.stored_audio(files.video, True, options)
    else:
      waveform, audio_record = raw.window_audio(decoded.audio, decoded.audio_rate, options, files.video)
    audio_record = dict(audio_record, file=files.video)
  pixels, size_record = raw.resize_short_side(pixels, options.frame_short_side)
  frame_record.update(size_record)
  audio_record["resampled_to"] = options.sample_rate if audio_record["rate"] != options.sample_rate else None
  return raw.encode_jpeg(pixels, options.jpeg_quality), waveform, {"frame": frame_record, "audio": audio_record}


def _png(mask: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(mask, mode="L").save(buffer, format="PNG")
  return buffer.getvalue()


def make_example(resolved: Resolved, options: raw.DecodeOptions, num_classes: int) -> dict[str, Any]:
  """Decodes an item into a dict of the real-dataset schema (schema.make_real_features).

  Raises:
    SkipError: any raw.REASONS of decoding (unreadable files, missing tracks, short audio, bad masks).
  """
  item = resolved.item
  frame, waveform, record = _frame_and_audio(item.clip, resolved.files, options)
  partner_frames, partner_waveform = [], np.zeros((0,), np.int16)
  if item.partner is not None:
    try:
      partner_frame, partner_waveform, partner_record = _frame_and_audio(item.partner, resolved.partner_files,
                                                                         options)
    except raw.SkipError as e:
      raise raw.SkipError(e.reason, e.file, f"partner {item.partner_id}: {e.detail}") from e
    partner_frames = [partner_frame]
    record["partner"] = partner_record
  masks = [_png(raw.read_mask(path)) for path in resolved.mask_files]
  boxes_raw = np.asarray(item.boxes, np.float64).reshape(-1, 4)
  boxes, clipped = normalized_xyxy(boxes_raw, item.box_format)
  record["boxes_clipped"] = clipped
  label = np.zeros((num_classes,), np.float32)
  label[list(item.source_class)] = 1.0
  audio = record["audio"]
  return {
      "id": item.example_id,
      "frame": frame,
      "waveform": waveform,
      "sample_rate": np.int32(options.sample_rate),
      "label": label,
      "num_sources": np.int32(len(item.source_class)),
      "source_class": np.asarray(item.source_class, np.int32),
      "boxes": boxes.astype(np.float32),
      "box_source": np.asarray(item.box_source, np.int32).reshape(-1),
      "boxes_raw": boxes_raw,
      "box_format_raw": item.box_format,
      "partner_id": item.partner_id,
      "partner_frame": partner_frames,
      "partner_waveform": partner_waveform,
      "masks": masks,
      "resampled_from_hz": np.int32(audio["rate"] if audio["resampled_to"] else 0),
      "audio_fill": audio["fill"],
      "preprocessing": json.dumps(record, sort_keys=True),
  }


def process(resolved: Resolved, options: raw.DecodeOptions,
            num_classes: int) -> tuple[int, dict[str, Any] | None, Skipped | None]:
  """make_example that never raises SkipError: (key, example or None, skip record or None)."""
  item = resolved.item
  try:
    return item.key, make_example(resolved, options, num_classes), None
  except raw.SkipError as e:
    return item.key, None, Skipped.from_error(item.key, item.example_id, e)


def check_unique_keys(items: Sequence[Item]) -> None:
  keys = [item.key for item in items]
  if len(set(keys)) != len(keys):
    raise ValueError("item keys must be unique within a split")
