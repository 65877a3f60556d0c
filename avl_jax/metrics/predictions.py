"""Saved localization maps of any method (`.npz`): the file schema, its validation, and the items it holds.

Axis letters: N examples, S source slots, h/w raw map size, H/W GT size, NB box slots per source, M items (the
(example, source) pairs that hold a source), Hf/Wf frame size.

Arrays of a predictions file (`save` writes one, `load` validates and reads one):

| key           | dtype, shape           | meaning                                                                 |
|---------------|------------------------|-------------------------------------------------------------------------|
| `maps`        | float [N, S, h, w]     | raw map per source slot, any h, w (bicubic-upsampled to H x W unless    |
|               |                        | already that size); how values become scores: `map_range`              |
| `gt_maps`     | float [N, S, H, W]     | GT maps (>= 0), used as given; or instead:                              |
| `boxes`       | float [N, S, NB, 4]    | normalised GT boxes per source; padding rows are all -1                 |
| `box_format`  | str                    | 'xyxy' (default) or 'xywh' (rasterised as DSOL does)                    |
| `box_combine` | str                    | overlapping boxes: 'binarize' (default), 'sum', 'flickr' (gt_maps.py)   |
| `num_boxes`   | int [N, S]             | optional: boxes per source (rows beyond are ignored, instead of -1      |
|               |                        | padding); with `gt_maps`: the official box count `bb` (default 1)       |
| `num_sources` | int [N]                | optional: slots >= num_sources are ignored (default S)                  |
| `class_ids`   | int [N, S]             | optional: class of each source (reported per item)                      |
| `ids`         | str [N]                | optional: example ids (default: the example index)                      |
| `map_range`   | str                    | optional: 'logits' (AVGN, +-1/tau), 'unit' ([0, 1] scores), 'minmax'    |
| `tau`         | float                  | optional: temperature of 'logits' (default 0.03)                        |
| `step`        | int                    | optional: checkpoint step, recorded in the result                       |
| `frames`      | uint8 [N, Hf, Wf, 3]   | optional: RGB frames, for the heat-map PNG                              |

Exactly one of `gt_maps` and `boxes`. The GT is rasterised on H x W = 224 x 224 (the official size) from boxes.
Protocol 'official' clips box coordinates to [0, 1] as the official `bbox2gtmap` does; 'standard' rejects
coordinates outside [0, 1] and binarises 'sum' (docs/metrics.md §6). A counted box row that is inverted inside
the image (x2 < x1 or y2 < y1 with both coordinates in [0, 1]; 'xywh': w < 0 or h < 0) is an error under both
protocols (its GT would be silently empty); zero-area boxes are allowed, and under 'official' a coordinate outside
[0, 1] is clipped first, as the datasets' builders keep it (items.check_boxes). Strings are stored as NumPy
unicode arrays, so files load without pickle. Every violation raises `PredictionsError` naming the array and the
index.
"""
import dataclasses
from typing import Any

import numpy as np

from avl_jax import resampling
from avl_jax.metrics import gt_maps
from avl_jax.metrics import postprocess

MAP_RANGES = postprocess.MAP_RANGES
BOX_FORMATS = ("xyxy", "xywh")
PROTOCOLS = ("official", "standard")
KEYS = ("maps", "gt_maps", "boxes", "box_format", "box_combine", "num_boxes", "num_sources", "class_ids", "ids",
        "map_range", "tau", "step", "frames")
DEFAULT_MAP_RANGE = "minmax"
DEFAULT_TAU = postprocess.OFFICIAL_TAU
GT_CHUNK = 256  # items rasterised at a time (box_counts holds an int64 [chunk, H + 1, W + 1] array)


class PredictionsError(ValueError):
  """A predictions file that does not follow the schema; the message names the array and the index."""


@dataclasses.dataclass
class Items:
  """The scored items of a predictions file, ordered example-major.

  Attributes:
    raw_maps: [M, h, w] float32 raw maps.
    gt: [M, H, W] float32 GT maps.
    nbox: [M] int64 boxes per item (the official `bb`; 0 = not sounding).
    example: [M] int64 example index.   source: [M] int64 source slot.
    class_id: [M] int64 class (-1 when the file has no `class_ids`).
    ids: the N example ids.
    map_range, tau: how raw values become scores (`postprocess.map_scores`).
    step: checkpoint step, if the file records one.
    frames: [N, Hf, Wf, 3] uint8 or None.
    boxes_xyxy: [N, S, NB, 4] normalised xyxy boxes for drawing, -1 rows for padding (NB = 0 with `gt_maps`).
    num_sources: [N] int64.
  """
  raw_maps: np.ndarray
  gt: np.ndarray
  nbox: np.ndarray
  example: np.ndarray
  source: np.ndarray
  class_id: np.ndarray
  ids: list[str]
  map_range: str
  tau: float
  step: int | None
  frames: np.ndarray | None
  boxes_xyxy: np.ndarray
  num_sources: np.ndarray

  @property
  def num_examples(self) -> int:
    return len(self.ids)


def save(path: str, maps: np.ndarray, **arrays: Any) -> None:
  """Writes a predictions file; `arrays` are the optional keys of the schema (None values are left out)."""
  unknown = sorted(set(arrays) - set(KEYS))
  if unknown:
    raise PredictionsError(f"Unknown predictions arrays {unknown}; the schema has {list(KEYS)}.")
  data = {"maps": np.asarray(maps)}
  for key, value in arrays.items():
    if value is None:
      continue
    data[key] = np.asarray([str(v) for v in value]) if key == "ids" else np.asarray(value)
  with open(path, "wb") as f:
    np.savez_compressed(f, **data)


_KIND_NAMES = {"f": "a float dtype", "iu": "an integer dtype", "fiub": "a numeric dtype", "U": "a string",
               "US": "strings", "u": "uint8", "fiu": "a number"}


def _first(mask: np.ndarray) -> tuple[int, ...]:
  """Index of the first True entry of mask."""
  return tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(mask.reshape(-1))[0]), mask.shape))


def _fmt(index: tuple[int, ...]) -> str:
  return ", ".join(str(i) for i in index)


def _array(data: dict[str, np.ndarray], key: str, kinds: str, dims: str,
           shape: tuple[int | None, ...]) -> np.ndarray:
  """data[key] checked against dtype kinds ('f' float, 'i'/'u' int, 'b' bool, 'U' str) and a shape.

  Args:
    data: the file's arrays.
    key: the array to check.
    kinds: accepted `dtype.kind` letters.
    dims: axis names, e.g. 'N S H W' (for the message).
    shape: expected sizes, None where any size goes.
  """
  value = data[key]
  if value.dtype.kind not in kinds:
    raise PredictionsError(f"{key} has dtype {value.dtype}; expected {_KIND_NAMES.get(kinds, kinds)}.")
  if value.ndim != len(shape) or any(want is not None and got != want for got, want in zip(value.shape, shape)):
    pattern = ", ".join(name if size is None or name == str(size) else f"{name}={size}"
                        for name, size in zip(dims.split(), shape))
    raise PredictionsError(f"{key} has shape {list(value.shape)}; expected [{pattern}].")
  return value


def _scalar(data: dict[str, np.ndarray], key: str, kinds: str, default: Any) -> Any:
  if key not in data:
    return default
  value = data[key]
  if value.ndim != 0 or value.dtype.kind not in kinds:
    raise PredictionsError(f"{key} must be a scalar of {_KIND_NAMES.get(kinds, kinds)}; got dtype {value.dtype} "
                           f"shape {list(value.shape)}.")
  return value.item()


def _choice(data: dict[str, np.ndarray], key: str, choices: tuple[str, ...], default: str) -> str:
  value = _scalar(data, key, "U", default)
  if value not in choices:
    raise PredictionsError(f"{key} is {value!r}; expected one of {list(choices)}.")
  return value


def _check_finite(key: str, values: np.ndarray, used: np.ndarray) -> None:
  """NaN/inf anywhere in the used [N, S, ...] slots is an error naming the first one."""
  bad = ~np.isfinite(values) & used.reshape(used.shape + (1,) * (values.ndim - used.ndim))
  if bad.any():
    index = _first(bad)
    raise PredictionsError(f"{key}[{_fmt(index)}] is {values[index]}; every used value must be finite.")


def _read(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as npz:
      data = {key: npz[key] for key in npz.files}
  except FileNotFoundError as e:
    raise PredictionsError(f"Predictions file {path} does not exist.") from e
  except ValueError as e:  # object arrays need pickle
    raise PredictionsError(f"Cannot read {path} without pickle ({e}); store strings as unicode arrays "
                           f"(np.asarray(list_of_str)), not objects.") from e
  except Exception as e:  # not a zip / corrupt file
    raise PredictionsError(f"Cannot read predictions file {path}: {e}") from e
  unknown = sorted(set(data) - set(KEYS))
  if unknown:
    raise PredictionsError(f"{path} has unknown arrays {unknown}; the schema has {list(KEYS)}.")
  if "maps" not in data:
    raise PredictionsError(f"{path} has no `maps` array (float [N, S, h, w]).")
  return data


def _box_rows(data: dict[str, np.ndarray], boxes: np.ndarray, used: np.ndarray) -> np.ndarray:
  """[N, S, NB] bool: the box rows that count (below num_boxes, else not all -1), in used slots only."""
  n, s, nb, _ = boxes.shape
  if "num_boxes" in data:
    num_boxes = _array(data, "num_boxes", "iu", "N S", (n, s)).astype(np.int64)
    bad = used & ((num_boxes < 0) | (num_boxes > nb))
    if bad.any():
      index = _first(bad)
      raise PredictionsError(f"num_boxes[{_fmt(index)}] = {num_boxes[index]} is outside [0, {nb}] (NB = {nb}).")
    rows = np.arange(nb)[None, None, :] < num_boxes[..., None]
  else:
    rows = ~np.all(boxes == -1, axis=-1)
  return rows & used[..., None]


def _check_boxes(boxes: np.ndarray, rows: np.ndarray, protocol: str, box_format: str) -> None:
  """The counted rows of boxes [N, S, NB, 4] (rows [N, S, NB]): finite, not inverted, in [0, 1] (standard)."""
  _check_finite("boxes", boxes, rows)
  safe = np.where(rows[..., None], boxes, -1.0)  # ignored rows may hold NaN / inf
  xyxy = safe if box_format == "xyxy" else np.concatenate([safe[..., :2], safe[..., :2] + safe[..., 2:]], -1)
  inside = (xyxy >= 0) & (xyxy <= 1)
  swapped = (xyxy[..., 2:] < xyxy[..., :2]) & inside[..., :2] & inside[..., 2:] & rows[..., None]  # [N, S, NB, 2]
  if swapped.any():
    index = _first(swapped.any(axis=-1))
    box = [float(f"{v:.6g}") for v in boxes[index]]
    rule = ("negative width or height" if box_format == "xywh" else
            " and ".join(f"{a}2 < {a}1" for a, bad in zip("xy", swapped[index]) if bad))
    want = "[x, y, w, h] with w, h >= 0" if box_format == "xywh" else "[x1, y1, x2, y2] with x1 <= x2, y1 <= y2"
    raise PredictionsError(f"boxes[{_fmt(index)}] = {box} is inverted ({rule}; box_format {box_format!r}): its GT "
                           f"would be empty. Give boxes as {want}; padding rows are all -1.")
  if protocol == "standard":
    outside = rows[..., None] & ((boxes < 0) | (boxes > 1))
    if outside.any():
      index = _first(outside.any(axis=-1))
      box = [float(f"{v:.6g}") for v in boxes[index]]
      raise PredictionsError(f"boxes[{_fmt(index)}] = {box} has coordinates outside [0, 1]; protocol 'standard' "
                             f"does not clip (protocol 'official' clips like bbox2gtmap).")


def _pixel_boxes(boxes: np.ndarray, rows: np.ndarray, box_format: str, size: tuple[int, int]) -> np.ndarray:
  """[..., NB, 4] normalised boxes -> int64 pixel xyxy; rows that do not count become -1 (skipped)."""
  if box_format == "xywh":
    pixels = gt_maps.music_pixels(boxes, protocol="standard", size=size)
  else:
    pixels = gt_maps.normalized_to_pixels(boxes, size)
  return np.where(rows[..., None], pixels, -1)


def _gt_from_boxes(pixel_boxes: np.ndarray, combine: str, size: tuple[int, int]) -> np.ndarray:
  """[M, NB, 4] pixel boxes -> [M, H, W] float32 GT maps, a chunk of items at a time."""
  out = np.zeros((len(pixel_boxes), *size), np.float32)
  for start in range(0, len(pixel_boxes), GT_CHUNK):
    counts = gt_maps.box_counts(pixel_boxes[start:start + GT_CHUNK], size)
    out[start:start + GT_CHUNK] = gt_maps.combine_counts(counts, combine)
  return out


def _drawable_boxes(boxes: np.ndarray, rows: np.ndarray, box_format: str) -> np.ndarray:
  xyxy = boxes.astype(np.float32)
  if box_format == "xywh":
    xyxy = np.concatenate([xyxy[..., :2], xyxy[..., :2] + xyxy[..., 2:]], axis=-1)
  return np.where(rows[..., None], xyxy, np.float32(-1))


def load(path: str, protocol: str = "official", map_range: str | None = None,
         tau: float | None = None) -> Items:
  """Reads and validates a predictions file; returns its items.

  Args:
    path: the .npz file.
    protocol: 'official' | 'standard' (box clipping and the 'sum' combine rule, module docstring).
    map_range: overrides the file's `map_range` (default: the file's, else 'minmax').
    tau: overrides the file's `tau` (default: the file's, else DEFAULT_TAU).

  Returns:
    Items.

  Raises:
    PredictionsError: the file is missing, unreadable or violates the schema.
  """
  if protocol not in PROTOCOLS:
    raise PredictionsError(f"Unknown protocol {protocol!r}; expected one of {list(PROTOCOLS)}.")
  data = _read(path)
  maps = _array(data, "maps", "f", "N S h w", (None,) * 4)
  n, s, h, w = maps.shape
  if n == 0 or s == 0 or h == 0 or w == 0:
    raise PredictionsError(f"maps has shape {list(maps.shape)}; N (examples), S (sources) and h, w must be > 0.")
  num_sources = np.full(n, s, np.int64)
  if "num_sources" in data:
    num_sources = _array(data, "num_sources", "iu", "N", (n,)).astype(np.int64)
    bad = (num_sources < 0) | (num_sources > s)
    if bad.any():
      i = int(np.flatnonzero(bad)[0])
      raise PredictionsError(f"num_sources[{i}] = {num_sources[i]} is outside [0, {s}] (S = {s}).")
  used = np.arange(s)[None, :] < num_sources[:, None]  # [N, S]
  if not used.any():
    raise PredictionsError("num_sources is 0 for every example: there is nothing to score.")
  _check_finite("maps", maps, used)

  if ("gt_maps" in data) == ("boxes" in data):
    raise PredictionsError("Give exactly one of `gt_maps` [N, S, H, W] and `boxes` [N, S, NB, 4].")
  size = (resampling.GT_SIZE, resampling.GT_SIZE)
  if "gt_maps" in data:
    for key in ("box_format", "box_combine"):
      if key in data:
        raise PredictionsError(f"`{key}` applies to `boxes`; this file has `gt_maps`.")
    gt_all = _array(data, "gt_maps", "fiub", "N S H W", (n, s, None, None))
    if 0 in gt_all.shape[2:]:
      raise PredictionsError(f"gt_maps has shape {list(gt_all.shape)}; H and W must be > 0.")
    _check_finite("gt_maps", gt_all.astype(np.float64), used)
    negative = (gt_all < 0) & used[..., None, None]
    if negative.any():
      raise PredictionsError(f"gt_maps[{_fmt(_first(negative))}] is negative; GT maps must be >= 0.")
    gt = gt_all[used].astype(np.float32)
    nbox = np.ones((n, s), np.int64)
    if "num_boxes" in data:
      nbox = _array(data, "num_boxes", "iu", "N S", (n, s)).astype(np.int64)
      bad = (nbox < 0) & used
      if bad.any():
        raise PredictionsError(f"num_boxes[{_fmt(_first(bad))}] is negative.")
    nbox = nbox[used]
    boxes_xyxy = np.zeros((n, s, 0, 4), np.float32)
  else:
    boxes = _array(data, "boxes", "f", "N S NB 4", (n, s, None, 4)).astype(np.float64)
    box_format = _choice(data, "box_format", BOX_FORMATS, "xyxy")
    combine = _choice(data, "box_combine", gt_maps.COMBINES, "binarize")
    if protocol == "standard" and combine == "sum":
      combine = "binarize"  # docs/metrics.md §6: the standard protocol binarises summed boxes.
    rows = _box_rows(data, boxes, used)
    _check_boxes(boxes, rows, protocol, box_format)
    safe = np.where(rows[..., None], boxes, -1.0)  # ignored rows may hold NaN
    gt = _gt_from_boxes(_pixel_boxes(safe[used], rows[used], box_format, size), combine, size)
    nbox = rows[used].sum(axis=-1).astype(np.int64)
    boxes_xyxy = _drawable_boxes(safe, rows, box_format)

  class_id = np.full((n, s), -1, np.int64)
  if "class_ids" in data:
    class_id = _array(data, "class_ids", "iu", "N S", (n, s)).astype(np.int64)
  ids = [str(i) for i in range(n)]
  if "ids" in data:
    ids = [v.decode() if isinstance(v, bytes) else str(v) for v in _array(data, "ids", "US", "N", (n,)).tolist()]
  frames = None
  if "frames" in data:
    frames = _array(data, "frames", "u", "N Hf Wf 3", (n, None, None, 3))
    if frames.dtype != np.uint8:
      raise PredictionsError(f"frames has dtype {frames.dtype}; expected uint8.")
  map_range = map_range or _choice(data, "map_range", MAP_RANGES, DEFAULT_MAP_RANGE)
  if map_range not in MAP_RANGES:
    raise PredictionsError(f"map_range is {map_range!r}; expected one of {list(MAP_RANGES)}.")
  if tau is None:
    tau = float(_scalar(data, "tau", "fiu", DEFAULT_TAU))
  if not np.isfinite(tau) or tau <= 0:
    raise PredictionsError(f"tau is {tau}; it must be a positive finite number.")
  step = _scalar(data, "step", "iu", None)
  example, source = np.nonzero(used)
  return Items(raw_maps=maps[used].astype(np.float32), gt=gt, nbox=nbox, example=example.astype(np.int64),
               source=source.astype(np.int64), class_id=class_id[used], ids=ids, map_range=map_range,
               tau=float(tau), step=None if step is None else int(step), frames=frames, boxes_xyxy=boxes_xyxy,
               num_sources=num_sources)
