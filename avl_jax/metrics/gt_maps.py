"""Ground-truth localization maps from boxes and masks (docs/metrics.md §2), vectorised over boxes.

Axis letters: NB boxes, H/W map size (224x224 in both official evaluators).

Official rasterisation (`datasets.py bbox2gtmap`): a normalised coordinate v becomes ⌊224·clip(v, 0, 1)⌋
(integer truncation), each box sets map[y1:y2, x1:x2] = 1 (end-exclusive, empty when x2 <= x1 or y2 <= y1),
boxes are summed and then combined per format:

| format            | official combine                  | standard combine                      |
|-------------------|-----------------------------------|---------------------------------------|
| `flickr`          | sum / 2, capped at 1 (0, 0.5, 1)  | same                                  |
| `vggss`           | binarised                         | binarised                             |
| `vggsound_single` | sum (not binarised)               | binarised                             |
| `vggsound_duet`   | sum per source (not binarised)    | binarised                             |
| `music_solo`      | xywh read as xyxy, sum            | xywh, binarised                       |
| `music_duet`      | xywh read as xyxy, binarised      | xywh, binarised                       |
| `vgginstruments*` | mask, INTER_NEAREST, as stored    | mask, INTER_NEAREST, binarised (> 0)  |

Pixel boxes are int [x1, y1, x2, y2] as the official loaders produce them; padding rows (x1 < 0, the
official -1 rows) are ignored. `boxes_to_gt_map` is the entry point for our datasets, which store
normalised xyxy boxes (`datasets/schema.py`).
"""
from typing import Sequence

import numpy as np

from avl_jax import resampling

_GT_HW = (resampling.GT_SIZE, resampling.GT_SIZE)  # (H, W) of the GT grid of both official evaluators

FORMATS = ("flickr", "vggss", "vggsound_single", "vggsound_duet", "music_solo", "music_duet",
           "vgginstruments", "vgginstruments_multi")
PROTOCOLS = ("official", "standard")
COMBINES = ("binarize", "sum", "flickr")


def normalized_to_pixels(boxes: np.ndarray, size: Sequence[int] = _GT_HW) -> np.ndarray:
  """Official conversion of normalised xyxy boxes [..., 4] to int64 pixels: ⌊S·clip(v, 0, 1)⌋.

  x coordinates are scaled by the width size[1], y by the height size[0]. Computed in float64 like
  `(np.clip(np.array(bbox), 0, 1) * 224).astype(int)`.
  """
  boxes = np.clip(np.asarray(boxes, np.float64), 0.0, 1.0)
  scale = np.array([size[1], size[0], size[1], size[0]], np.float64)
  return (boxes * scale).astype(np.int64)


def flickr_pixels(boxes_256: np.ndarray) -> np.ndarray:
  """Flickr-SoundNet XML boxes on the 256x256 grid -> 224 pixels: int(224 * v / 256) per coordinate."""
  boxes_256 = np.asarray(boxes_256, np.int64)
  return (resampling.GT_SIZE * boxes_256 / 256).astype(np.int64)


def music_pixels(boxes_xywh: np.ndarray, protocol: str = "standard",
                 size: Sequence[int] = _GT_HW) -> np.ndarray:
  """MUSIC normalised [x, y, w, h] boxes [..., 4] -> int64 pixel xyxy.

  `official` reproduces the AVGN bug: the four numbers are read as [x1, y1, x2, y2] (often an empty box).
  `standard` (DSOL rasterisation): x1 = ⌊Wx⌋, y1 = ⌊Hy⌋, x2 = ⌊Wx + Ww⌋, y2 = ⌊Hy + Hh⌋, clipped to the map.
  """
  _check_protocol(protocol)
  boxes_xywh = np.asarray(boxes_xywh, np.float64)
  if protocol == "official":
    return normalized_to_pixels(boxes_xywh, size)
  x, y, w, h = np.moveaxis(boxes_xywh, -1, 0)
  width, height = size[1], size[0]
  pixels = np.stack([np.floor(width * x), np.floor(height * y),
                     np.floor(width * x + width * w), np.floor(height * y + height * h)], axis=-1)
  limits = np.array([width, height, width, height], np.float64)
  return np.clip(pixels, 0, limits).astype(np.int64)


def box_counts(pixel_boxes: np.ndarray, size: Sequence[int] = _GT_HW) -> np.ndarray:
  """Number of boxes covering each pixel: [..., NB, 4] int xyxy -> [..., H, W] float64.

  Equals the official per-box `temp[y1:y2, x1:x2] = 1` summed over boxes, for coordinates in [0, size]
  (larger ones are clipped like slicing does). Rows with x1 < 0 (padding) are skipped. Uses a 2-D difference
  array, so the cost is O(NB + H·W) per map.
  """
  pixel_boxes = np.asarray(pixel_boxes, np.int64)
  height, width = int(size[0]), int(size[1])
  if pixel_boxes.ndim < 2 or pixel_boxes.shape[-1] != 4:
    raise ValueError(f"pixel_boxes must be [..., NB, 4]; got shape {pixel_boxes.shape}.")
  lead = pixel_boxes.shape[:-2]
  flat = pixel_boxes.reshape(int(np.prod(lead)), pixel_boxes.shape[-2], 4)
  num_maps = flat.shape[0]
  x1 = np.clip(flat[..., 0], 0, width)
  y1 = np.clip(flat[..., 1], 0, height)
  x2 = np.clip(flat[..., 2], 0, width)
  y2 = np.clip(flat[..., 3], 0, height)
  valid = (flat[..., 0] >= 0) & (x2 > x1) & (y2 > y1)
  map_index = np.broadcast_to(np.arange(num_maps)[:, None], valid.shape)[valid]
  x1, y1, x2, y2 = x1[valid], y1[valid], x2[valid], y2[valid]
  diff = np.zeros((num_maps, height + 1, width + 1), np.int64)
  np.add.at(diff, (map_index, y1, x1), 1)
  np.add.at(diff, (map_index, y1, x2), -1)
  np.add.at(diff, (map_index, y2, x1), -1)
  np.add.at(diff, (map_index, y2, x2), 1)
  counts = diff.cumsum(axis=1).cumsum(axis=2)[:, :height, :width]
  return counts.astype(np.float64).reshape(*lead, height, width)


def combine_counts(counts: np.ndarray, combine: str) -> np.ndarray:
  """Applies a combine rule to box counts: `binarize` (> 0 -> 1), `sum` (as is), `flickr` (/2, cap 1)."""
  if combine == "binarize":
    return (counts > 0).astype(np.float64)
  if combine == "sum":
    return np.asarray(counts, np.float64)
  if combine == "flickr":
    return np.minimum(np.asarray(counts, np.float64) / 2, 1.0)
  raise ValueError(f"Unknown combine {combine!r}; expected one of {COMBINES}.")


def combine_rule(gt_format: str, protocol: str = "official") -> str:
  """The combine rule of a dataset format under a protocol (table in the module docstring)."""
  _check_protocol(protocol)
  if gt_format == "flickr":
    return "flickr"
  if gt_format in ("vggss", "music_duet") or protocol == "standard":
    return "binarize"
  if gt_format in ("vggsound_single", "vggsound_duet", "music_solo"):
    return "sum"
  raise ValueError(f"Unknown box format {gt_format!r}; expected one of {FORMATS[:6]}.")


def pixel_boxes_to_gt_map(pixel_boxes: np.ndarray, gt_format: str, protocol: str = "official",
                          size: Sequence[int] = _GT_HW) -> np.ndarray:
  """`bbox2gtmap`: int pixel xyxy boxes [..., NB, 4] (as the official loaders give them) -> [..., H, W].

  MUSIC boxes must already be converted with `music_pixels` (that is where the xywh/xyxy protocols differ).
  """
  return combine_counts(box_counts(pixel_boxes, size), combine_rule(gt_format, protocol))


def boxes_to_gt_map(boxes_norm_xyxy: np.ndarray, size: Sequence[int] = _GT_HW,
                    combine: str = "binarize") -> np.ndarray:
  """GT map of one source from normalised xyxy boxes (our datasets' storage format).

  Args:
    boxes_norm_xyxy: [NB, 4] (or [..., NB, 4]) normalised [x1, y1, x2, y2]; NB may be 0 (empty map).
    size: (H, W) of the map.
    combine: `binarize` (union), `sum` (official non-binarised formats) or `flickr` (annotator consensus).

  Returns:
    [H, W] (or [..., H, W]) float32 map.
  """
  boxes = np.asarray(boxes_norm_xyxy, np.float64)
  if boxes.size == 0 and boxes.shape[-1:] != (4,):
    boxes = boxes.reshape(0, 4)
  if boxes.ndim == 1:
    boxes = boxes[None]
  counts = box_counts(normalized_to_pixels(boxes, size), size)
  return combine_counts(counts, combine).astype(np.float32)


def mask_to_gt_map(mask: np.ndarray, protocol: str = "official",
                   size: Sequence[int] = _GT_HW) -> np.ndarray:
  """VGG-Instruments `mask2gtmap`: INTER_NEAREST resize; values as stored (official) or > 0 (standard)."""
  _check_protocol(protocol)
  resized = resampling.resize_mask_nearest(mask, size)
  if protocol == "standard":
    return (resized > 0).astype(np.float64)
  return resized.astype(np.float64)


def num_valid_boxes(pixel_boxes: np.ndarray) -> np.ndarray:
  """bb of the evaluator: number of box rows with x1 >= 0 ([..., NB, 4] -> [...] int64)."""
  return np.sum(np.asarray(pixel_boxes)[..., 0] >= 0, axis=-1).astype(np.int64)


def _check_protocol(protocol: str) -> None:
  if protocol not in PROTOCOLS:
    raise ValueError(f"Unknown protocol {protocol!r}; expected one of {PROTOCOLS}.")
