"""Localization-map post-processing shared by the eval binary and the tests (docs/metrics.md §1).

Axis letters: N maps, h/w raw map size (7x7 for AVGN), H/W output size (224x224).

* `upsample_to`: PyTorch's bicubic upsampling (`avl_jax/resampling.py`, shared with the data pipeline), skipped
  for maps already at the evaluation resolution.
* `avgn_official`: AVGN `train.py validate` (§1.1) with its float32 arithmetic.
* `map_scores`: the scores (conf's input) of maps from any method: AVGN logits, [0, 1] scores, or min-max.
* `tvsl_official`: T-VSL `validate_multi` (§1.2): min-max, inversion, fixed threshold 0.3.
"""
from typing import Optional

import numpy as np

from avl_jax import resampling

# AVGN's evaluator hard-codes 224x224: conf averages the N/4 largest scores, thr is the ⌊N/2⌋-th sorted value.
AVGN_OUT_HW = (224, 224)
TVSL_THRESHOLD = 0.3
MAP_RANGES = ("logits", "unit", "minmax")  # What raw map values are; see `map_scores`.

# The official AVGN / EZ-VSL temperature: the only place its value is written (models, configs and metric
# defaults refer to it; docs/avgn.md §6).
OFFICIAL_TAU = 0.03


def minmax_normalize(values: np.ndarray) -> np.ndarray:
  """Per-map min-max of [N, H, W] in values' dtype; maps with max == min are returned unchanged.

  Same arithmetic as the official `utils.normalize_img`: (v - min) / (max - min).
  """
  values = np.asarray(values)
  flat = values.reshape(values.shape[0], -1)
  vmin = flat.min(axis=1, keepdims=True)
  span = flat.max(axis=1, keepdims=True) - vmin
  constant = span[:, 0] == 0
  out = flat - vmin
  out /= np.where(span == 0, values.dtype.type(1), span)
  if constant.any():
    out[constant] = flat[constant]
  return out.reshape(values.shape)


def avgn_scores(upsampled: np.ndarray, tau: float = OFFICIAL_TAU) -> np.ndarray:
  """Fixed-range scores (U + 1/tau) / (2/tau), not clipped, in float32 like the official numpy-2 code.

  The official `min_max_norm(avl_map, -1/tau, 1/tau)` computes its constants in Python doubles that numpy 2
  rounds to float32: scores = (U - f32(-1/tau)) / f32(1/tau - (-1/tau)) = (U + 33.333332f) / 66.666664f.
  """
  upsampled = np.asarray(upsampled, np.float32)
  low, high = -1 / tau, 1 / tau
  scores = upsampled - np.float32(low)
  scores /= np.float32(high - low)
  return scores


def map_scores(upsampled: np.ndarray, map_range: str = "logits", tau: float = OFFICIAL_TAU) -> np.ndarray:
  """Scores [N, H, W] float32 of upsampled maps, by what the raw values are (conf is their top-quarter mean).

  Args:
    upsampled: [N, H, W] maps at the evaluation resolution.
    map_range: 'logits' (AVGN logits in [-1/tau, 1/tau]: the official fixed-range `avgn_scores`), 'unit'
      (scores already in [0, 1], e.g. probabilities: used as they are) or 'minmax' (any range: per-map
      min-max, the generic choice for another method's maps).
    tau: temperature of 'logits'.

  Returns:
    [N, H, W] float32. Their min-max (pred) is the upsampled map's min-max for every map_range (up to float32
    rounding); only conf differs.
  """
  if map_range == "logits":
    return avgn_scores(upsampled, tau)
  if map_range == "unit":
    return np.asarray(upsampled, np.float32)
  if map_range == "minmax":
    return minmax_normalize(np.asarray(upsampled, np.float32))
  raise ValueError(f"Unknown map_range {map_range!r}; expected one of {MAP_RANGES}.")


def top_quarter_mean(scores: np.ndarray, pred: Optional[np.ndarray] = None,
                     pred_cut: Optional[np.ndarray] = None) -> np.ndarray:
  """conf [N] float32: mean of the ⌈HW/4⌉ largest values of each [N, H, W] score map.

  Reproduces `np.sort(s.flatten())[-n//4:].mean()` bit for bit (the slice [-n//4:] is [(-n)//4:], the last
  ⌈n/4⌉ values): the top quarter is sorted ascending and summed pairwise in float32 like numpy does along
  a contiguous axis.

  Args:
    scores: [N, H, W] float32 scores.
    pred: optional [N, H, W] maps that are a non-decreasing function of scores (the min-max pred).
    pred_cut: [N] the ⌈HW/4⌉-th largest pred value of each map (with `pred`). Then the top quarter of scores
      is the top of {scores where pred >= pred_cut} (a superset only by pred ties), which avoids a partition.

  Returns:
    [N] float32.
  """
  flat = scores.reshape(scores.shape[0], -1)
  size = flat.shape[1]
  count = -((-size) // 4)
  if pred is None or pred_cut is None:
    top = np.partition(flat, size - count, axis=1)[:, size - count:]
  else:
    selected = pred.reshape(flat.shape) >= np.asarray(pred_cut, pred.dtype)[:, None]
    values = flat[selected]
    if values.size == flat.shape[0] * count:  # No pred tie at any cut: exactly `count` per row.
      top = values.reshape(len(flat), count)
    else:
      num_selected = np.count_nonzero(selected, axis=1)
      ends = np.cumsum(num_selected)
      top = np.stack([np.partition(values[e - k:e], k - count)[k - count:]
                      for e, k in zip(ends, num_selected)])
  top.sort(axis=1)
  return top.mean(axis=1, dtype=np.float32)


def median_threshold(pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """thr [N] = ascending-sorted pred at index ⌊0.5·HW⌋, and the number of pixels equal to it [N]."""
  flat = pred.reshape(pred.shape[0], -1)
  k = int(flat.shape[1] * 0.5)
  thr = np.partition(flat, k, axis=1)[:, k]
  n_ties = np.count_nonzero(flat == thr[:, None], axis=1)
  return thr, n_ties


def upsample_to(raw_maps: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """[N, h, w] -> float32 [N, H, W]: bicubic upsampling, skipped for maps already at out_hw."""
  raw_maps = np.asarray(raw_maps, np.float32)
  if raw_maps.ndim != 3:
    raise ValueError(f"raw_maps must be [N, h, w]; got shape {raw_maps.shape}.")
  if tuple(raw_maps.shape[-2:]) == tuple(out_hw):
    return raw_maps
  return resampling.upsample_bicubic(raw_maps, out_hw, align_corners=False)


def avgn_official(raw_maps: np.ndarray, tau: float = OFFICIAL_TAU,
                  out_hw: tuple[int, int] = AVGN_OUT_HW) -> dict[str, np.ndarray]:
  """AVGN `validate` post-processing (docs/metrics.md §1.1), float32 throughout.

  Args:
    raw_maps: [N, h, w] localization logits (7x7 `Savl`), or maps already at out_hw (then used as the
      upsampled map, e.g. the golden `avl_map_up`).
    tau: the model temperature; only conf depends on it.
    out_hw: evaluation resolution.

  Returns:
    dict with `upsampled` [N, H, W] float32 (bicubic, align_corners=False), `scores` [N, H, W] float32
    (fixed-range, unclipped), `pred` [N, H, W] float32 (per-map min-max, unchanged if constant), `conf` [N]
    float32 (top-quarter mean of scores), `thr` [N] float32 (median of pred, index ⌊0.5·HW⌋), `infer`
    [N, H, W] bool (pred >= thr), `n_ties` [N] int64 (pixels equal to thr, all of them in infer).
  """
  upsampled = upsample_to(raw_maps, out_hw)
  scores = avgn_scores(upsampled, tau)
  pred = minmax_normalize(scores)
  thr, n_ties = median_threshold(pred)
  return {
      "upsampled": upsampled, "scores": scores, "pred": pred, "conf": top_quarter_mean(scores),
      "thr": thr, "infer": pred >= thr[:, None, None], "n_ties": n_ties.astype(np.int64),
  }


def tvsl_official(raw_maps: np.ndarray, out_hw: Optional[tuple[int, int]] = None,
                  threshold: float = TVSL_THRESHOLD) -> dict[str, np.ndarray]:
  """T-VSL `validate_multi` post-processing (docs/metrics.md §1.2), float32.

  Args:
    raw_maps: [N, h, w] maps (7x14 per source pair canvas), or maps already at out_hw.
    out_hw: canvas size (default: 32x the raw size, i.e. 224x448 for 7x14).
    threshold: fixed binarisation threshold of the inverted score (0.3 in the official scripts).

  Returns:
    dict with `upsampled` [N, H, W], `pred` [N, H, W] (min-max over the canvas, no constant-map guard: a
    constant map gives NaN), `score` [N, H, W] = (max x - x) / (max x - min x) (the inversion), and
    `infer` [N, H, W] bool = score >= threshold.
  """
  raw_maps = np.asarray(raw_maps, np.float32)
  if out_hw is None:
    out_hw = (32 * raw_maps.shape[-2], 32 * raw_maps.shape[-1])
  if tuple(raw_maps.shape[-2:]) == tuple(out_hw):
    upsampled = raw_maps
  else:
    upsampled = resampling.upsample_bicubic(raw_maps, out_hw, align_corners=False)
  with np.errstate(invalid="ignore", divide="ignore"):
    vmin = upsampled.min(axis=(-2, -1), keepdims=True)
    vmax = upsampled.max(axis=(-2, -1), keepdims=True)
    pred = (upsampled - vmin) / (vmax - vmin)
    pmin = pred.min(axis=(-2, -1), keepdims=True)
    pmax = pred.max(axis=(-2, -1), keepdims=True)
    score = (pmax - pred) / (pmax - pmin)
  return {"upsampled": upsampled, "pred": pred, "score": score, "infer": score >= np.float32(threshold)}
