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
import os
import traceback
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

  @classmethod
  def from_exception(cls, key: int, example_id: str, file: str, error: Exception) -> "Skipped":
    """An unexpected exception while building one example: a `build_error` row, not a crash of the build."""
    return cls(key, example_id, file, "build_error", describe_exception(error))


def describe_exception(error: Exception) -> str:
  """'Type: message (at file.py:line in function)', the location being where it was raised."""
  text = f"{type(error).__name__}: {error}"
  frames = traceback.extract_tb(error.__traceback__)
  if frames:
    text += f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name})"
  return text


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


def _xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
  """[NB, 4] raw boxes -> [NB, 4] float64 xyxy (MUSIC's [x, y, w, h] become [x, y, x + w, y + h])."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  if box_format == "xywh":
    boxes = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
  return boxes


def normalized_xyxy(boxes: np.ndarray, box_format: str) -> tuple[np.ndarray, bool]:
  """Raw official boxes [NB, 4] -> normalised xyxy clipped to [0, 1], and whether any value was changed.

  MUSIC's [x, y, w, h] become [x, y, x + w, y + h] (docs/metrics.md §2, standard column). A box that is inverted
  after clipping (a coordinate far outside the image, like the official VGG-SS x2 = -2.9e16, which `check_boxes`
  keeps) becomes an empty box, x2 = x1 / y2 = y1: its GT is empty either way, and no stored box is inverted.
  """
  boxes = _xyxy(boxes, box_format)
  clipped = np.clip(boxes, 0.0, 1.0)
  clipped[:, 2:] = np.maximum(clipped[:, 2:], clipped[:, :2])
  return clipped, bool(np.any(clipped != boxes))


def check_boxes(item: Item, file: str, max_boxes: int) -> None:
  """Build-time checks of an item's boxes (`resolve` runs after them; `file`: the metadata file holding them).

  A box is inverted when its corners are swapped inside the image: x2 < x1 with x1 and x2 both in [0, 1]
  (MUSIC xywh: w < 0 with x and x + w in [0, 1]), or the same for y; its GT would be silently empty. Zero-area
  boxes (x2 = x1) are kept (the official VGG-SS file has 6), and so are inverted boxes with a coordinate outside
  [0, 1]: like any out-of-range value, the official GT clips it (VGG-SS has 12 boxes with x2 or y2 = -2.9e16,
  docs/datasets.md §4), `normalized_xyxy` stores them as empty boxes and the example records `boxes_clipped`.

  Raises:
    SkipError(malformed_box): an inverted box; the detail names its index, source and values.
    SkipError(too_many_boxes): more than `max_boxes` boxes (the eval pipeline pads to config.dataset.max_boxes).
  """
  if not item.boxes:
    return
  xyxy = _xyxy(np.asarray(item.boxes, np.float64), item.box_format)
  inside = (xyxy >= 0.0) & (xyxy <= 1.0)
  swapped = ((xyxy[:, 2:] < xyxy[:, :2]) & inside[:, :2] & inside[:, 2:])  # [NB, 2]: x axis, y axis
  for b in np.flatnonzero(swapped.any(axis=1)):
    axes = " and ".join(name for name, bad in zip(("x", "y"), swapped[b]) if bad)
    rule = ("negative width/height" if item.box_format == "xywh" else
            " and ".join(f"{a}2 < {a}1" for a, bad in zip("xy", swapped[b]) if bad))
    source = item.box_source[b] if b < len(item.box_source) else 0
    raise raw.SkipError("malformed_box", file, f"inverted box {b} (source {source}) {list(item.boxes[b])} "
                        f"({item.box_format}): {rule} on the {axes} axis; swap its corners in the metadata")
  if len(item.boxes) > max_boxes:
    raise raw.SkipError("too_many_boxes", file, f"{len(item.boxes)} boxes > max_boxes={max_boxes}; raise the "
                        f"builder config's max_boxes and config.dataset.max_boxes together to keep the example")


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
  pixels, size_record = raw.resize_short_side(pixels, options.frame_short_side, frame_record["file"])
  frame_record.update(size_record)
  audio_record["resampled_to"] = options.sample_rate if audio_record["rate"] != options.sample_rate else None
  frame = raw.encode_jpeg(pixels, options.jpeg_quality, frame_record["file"])
  return frame, waveform, {"frame": frame_record, "audio": audio_record}


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
  """make_example that never raises: (key, example or None, skip record or None).

  A SkipError gives its reason; any other exception (a bug, or input no check foresaw) gives a `build_error`
  row naming the clip's file and the exception, so one bad example never stops the whole build.
  """
  item = resolved.item
  try:
    return item.key, make_example(resolved, options, num_classes), None
  except raw.SkipError as e:
    return item.key, None, Skipped.from_error(item.key, item.example_id, e)
  except Exception as e:  # pylint: disable=broad-except
    file = resolved.files.frame or resolved.files.video or resolved.files.audio or ""
    return item.key, None, Skipped.from_exception(item.key, item.example_id, file, e)


def check_unique_keys(items: Sequence[Item]) -> None:
  keys = [item.key for item in items]
  if len(set(keys)) != len(keys):
    raise ValueError("item keys must be unique within a split")
