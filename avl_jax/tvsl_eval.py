"""T-VSL scoring (spec/metrics.md §1.2): GT placement on the [own | partner] canvas, PyTorch-bicubic min-max
score maps, the fixed-threshold binarisation, predicted-class matching and the heat-map grid.

`eval_lib.evaluate_split` calls `score_inputs` for the text-conditioned models (avl_jax.models.TEXT_MODELS); the
rest of the scoring (metrics, baselines, CSV / JSON) is shared with AVGN.
"""
import itertools
from typing import Any

import numpy as np

from avl_jax import sharding
from avl_jax import visualize
from avl_jax.metrics import gt_maps
from avl_jax.metrics import localization
from avl_jax.models.tvsl import postprocess as tvsl_postprocess

GT_SIZE = gt_maps.GT_SIZE


def score_inputs(config, pred: dict[str, Any], example_idx: np.ndarray, source_idx: np.ndarray, gt: np.ndarray,
                 nbox: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]]:
  """What `eval_lib.score_items` scores for a T-VSL model.

  Args:
    config: the run's config (eval.protocol, eval.tvsl_threshold, eval.tvsl_stale_gt, model.invert_map,
      model.class_source).
    pred: `eval_lib.predict_split`'s arrays.
    example_idx, source_idx, gt, nbox: `eval_lib.source_items` (one row per (example, source) item).

  Returns:
    (score maps [M, 224, W] in [0, 1], GT [M, 224, W] (W = 448 on a canvas), keyword arguments of `score_items`,
    extra JSON fields (predicted classes: class_recall, num_predicted_mean)).
  """
  gt = place_gt(pred, source_idx, gt)
  if config.eval.get("tvsl_stale_gt", False):
    if config.eval.protocol != "official" or not pred.get("canvas"):
      raise ValueError("config.eval.tvsl_stale_gt reproduces the official T-VSL canvas evaluation: it needs "
                       "protocol='official' and a test set scored on the canvas (vggsound/duet*).")
    gt[source_idx == 1] = 0.0  # source 2's GT shifted out of the canvas by the official in-place +224
  unmatched, extra = None, {}
  if config.model.get("class_source", "oracle") == "predicted":
    raw_items, unmatched, extra = match_predicted(config, pred, example_idx, source_idx, gt, nbox)
  else:
    raw_items = pred["maps"][example_idx, source_idx]
  scores = score_maps(config, raw_items, tuple(gt.shape[-2:]))
  if unmatched is not None:  # a GT source without a predicted map: an all-zero score map (nothing found)
    scores[unmatched] = 0.0
  return scores, gt, dict(map_range="unit", binarize="fixed", fixed_threshold=config.eval.tvsl_threshold), extra


def items(config, pred: dict[str, Any], source_idx: np.ndarray, gt: np.ndarray,
               raw_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """T-VSL scoring inputs (spec/metrics.md §1.2): GT maps on the canvas and the post-processed score maps.

  Returns:
    (gt [M, 224, W], scores [M, 224, W] in [0, 1]), W = 448 on a canvas, else 224 (`place_gt`,
    `score_maps`).
  """
  gt = place_gt(pred, source_idx, gt)
  return gt, score_maps(config, raw_items, tuple(gt.shape[-2:]))


def score_maps(config, raw_maps: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """[..., h, w] raw maps -> [..., H, W] scores: PyTorch bicubic to out_hw, per-map min-max, inverted when
  config.model.invert_map (official)."""
  post = tvsl_postprocess.postprocess_maps(raw_maps, invert=bool(config.model.get("invert_map", True)),
                                           out_hw=out_hw, threshold=config.eval.tvsl_threshold)
  return post["score"]


def place_gt(pred: dict[str, Any], source_idx: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """On a canvas (pred['canvas']) source s's GT goes on its own half of a zero [224, 448] map, so predicted
  pixels on the other frame count as false positives; otherwise the GT stays [224, 224]."""
  if pred.get("canvas"):
    num_halves = 2
    placed = np.zeros(gt.shape[:-1] + (num_halves * gt.shape[-1],), gt.dtype)
    for half in range(num_halves):
      rows = source_idx == half
      placed[rows, :, half * GT_SIZE:(half + 1) * GT_SIZE] = gt[rows]
    if np.any(source_idx >= num_halves):
      raise ValueError("A canvas holds two sources; this split has more.")
    gt = placed
  return gt


def match_predicted(config, pred: dict[str, Any], example_idx: np.ndarray, source_idx: np.ndarray,
                    gt: np.ndarray, nbox: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
  """class_source='predicted': assigns the model's K maps (of its own top-K classes) to the GT sources.

  Per example, the assignment of distinct valid predicted maps to its GT sources that maximises the mean pixel
  AP (spec/metrics.md: permutation-invariant matching; a source gets no map when there are fewer valid maps,
  and then scores as an all-zero map would, i.e. its constant map). Also reports how often the GT class is
  among the valid predicted classes.

  Returns:
    (raw maps [M, h, w] matched to the items, unmatched [M] bool (no valid map left for the item),
    {'class_recall': fraction of GT sources whose class is among the valid predictions,
    'num_predicted_mean': valid predicted classes per example}).
  """
  num_pred = pred["maps"].shape[1]
  item_scores = score_maps(config, pred["maps"][example_idx], tuple(gt.shape[-2:]))  # [M, K, H, W]
  pairs_gt = np.repeat(gt, num_pred, axis=0)
  per_pair, _ = localization.score_maps(item_scores.reshape((-1,) + gt.shape[-2:]), pairs_gt,
                                        np.repeat(nbox, num_pred), map_range="unit", binarize="fixed",
                                        fixed_threshold=config.eval.tvsl_threshold)
  ap = np.nan_to_num(per_pair["pixel_ap"].reshape(len(example_idx), num_pred), nan=0.0)
  valid = pred["pred_valid"][example_idx]
  ap = np.where(valid, ap, -1.0)
  chosen = np.full(len(example_idx), -1, np.int64)
  for i in np.unique(example_idx):
    items = np.flatnonzero(example_idx == i)
    best, best_value = None, -np.inf
    for perm in itertools.permutations(range(num_pred), min(len(items), num_pred)):
      value = sum(ap[m, k] for m, k in zip(items, perm))
      if value > best_value:
        best, best_value = perm, value
    for m, k in zip(items, best):
      chosen[m] = k if valid[m, k] else -1
  maps = pred["maps"][example_idx, np.maximum(chosen, 0)]
  maps = maps.astype(np.float32)
  gt_rows = pred["gt_rows"][example_idx, source_idx] if "gt_rows" in pred else None
  recall = float("nan")
  if gt_rows is not None:
    hits = np.any((pred["pred_rows"][example_idx] == gt_rows[:, None]) & valid, axis=1)
    recall = float(sharding.gather_rows(hits.astype(np.float64)).mean()) if len(hits) else float("nan")
  count = sharding.gather_rows(pred["pred_valid"].sum(axis=1).astype(np.float64))
  return maps, chosen < 0, {"class_recall": recall,
                            "num_predicted_mean": float(count.mean()) if len(count) else float("nan")}


def heatmap_grid(path: str, config, pred: dict[str, Any], n: int) -> None:
  """Writes a PNG grid of the first n examples' T-VSL maps to `path`: the (canvas) frame, then per source the
  score map, its GT boxes and the binarised region."""
  if n == 0:
    return
  maps = pred["maps"][:n]
  source_class = pred["source_class"][:n]
  frames = pred["image_uint8"][:n]
  size = (GT_SIZE, GT_SIZE * frames.shape[2] // frames.shape[1])  # 224 x 224, or 224 x 448 for a canvas
  valid = (source_class >= 0)[..., None, None]
  post = tvsl_postprocess.postprocess_maps(np.where(valid, maps, 0), invert=bool(config.model.get("invert_map", True)),
                                           out_hw=size, threshold=config.eval.tvsl_threshold)
  heat = np.nan_to_num(post["score"])
  boxes = pred["boxes"][:n].copy()
  box_source = pred["box_source"][:n]
  if pred.get("canvas"):  # Source s's boxes lie on its half of the canvas.
    shift = np.maximum(box_source, 0)[..., None].astype(np.float32)
    boxes[..., 0::2] = np.where(box_source[..., None] >= 0, (boxes[..., 0::2] + shift) / 2, boxes[..., 0::2])
  visualize.heatmap_grid(frames, heat, post["infer"], boxes, box_source, source_class, path, size=size)
