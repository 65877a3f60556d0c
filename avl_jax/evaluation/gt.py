"""Ground truth of the eval items: each dataset's official GT format, its rules and quirks, canvas placement.

`source_items` turns `eval_lib.predict_split`'s arrays into one GT map per (example, source) item; `apply_rules`
applies the config's dataset GT rules first (today `config.eval.official_duet_gt_bug`, the official VGGSound-Duet
test GT, docs/metrics.md §2); `place_on_canvas` puts each source's GT on its half of an [own | partner]
canvas.
"""
from typing import Any

import ml_collections
import numpy as np

from avl_jax import resampling
from avl_jax import sharding
from avl_jax.metrics import gt_maps
from avl_jax.pipeline import data_source


def apply_rules(config: ml_collections.ConfigDict, pred: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """The config's dataset GT rules applied to `pred`; returns (pred, fields for the result JSON)."""
  extra = {}
  if config.eval.get("official_duet_gt_bug", False):
    if pred.get("gt_format") != "vggsound_duet" or config.eval.protocol != "official":
      raise ValueError("config.eval.official_duet_gt_bug reproduces the official code's vggsound_duet test GT "
                       "(docs/metrics.md §2): it needs a vggsound/duet dataset and protocol='official' (got "
                       f"gt_format={pred.get('gt_format')!r}, "
                       f"protocol={config.eval.protocol!r}).")
    pred, missing = official_duet_gt_bug(pred)
    extra["official_duet_gt_bug_missing"] = int(sharding.gather_rows(np.asarray([missing])).sum())
  return pred, extra


def place_on_canvas(gt: np.ndarray, source_idx: np.ndarray, num_halves: int = 2) -> np.ndarray:
  """GT [M, H, W] -> [M, H, num_halves * W]: source s's GT on half s, zeros elsewhere (so predicted pixels on
  the other frame count as false positives)."""
  if np.any(source_idx >= num_halves):
    raise ValueError(f"A canvas holds {num_halves} sources; this split has more.")
  width = gt.shape[-1]
  placed = np.zeros(gt.shape[:-1] + (num_halves * width,), gt.dtype)
  for half in range(num_halves):
    rows = source_idx == half
    placed[rows, :, half * width:(half + 1) * width] = gt[rows]
  return placed


def boxes_on_canvas(boxes: np.ndarray, box_source: np.ndarray, num_halves: int = 2) -> np.ndarray:
  """Normalised xyxy boxes [..., NB, 4] of source s's own frame -> coordinates on the [own | partner] canvas."""
  boxes = boxes.copy()
  shift = np.maximum(box_source, 0)[..., None].astype(boxes.dtype)
  boxes[..., 0::2] = np.where(box_source[..., None] >= 0, (boxes[..., 0::2] + shift) / num_halves,
                              boxes[..., 0::2])
  return boxes


def item_gt_map(pred: dict[str, Any], i: int, s: int, protocol: str) -> tuple[np.ndarray, int]:
  """GT map [224, 224] and box count of source s of example i, by the dataset's official GT format.

  synthetic_av (no format): the union of the source's normalised xyxy boxes. Real datasets: masks
  (VGGSound-Instruments, values as stored / binarised); otherwise the boxes rasterised as the official loader
  does under `official` (from the raw official values, so MUSIC's xywh-read-as-xyxy quirk and the summed
  VGGSound maps are reproduced), and the converted xyxy boxes, binarised, under `standard`.
  """
  gt_format = pred.get("gt_format", "")
  in_source = pred["box_source"][i] == s
  nbox = int(in_source.sum())
  size = (resampling.GT_SIZE, resampling.GT_SIZE)
  if "gt_mask" in pred and gt_format.startswith("vgginstruments"):
    mask = np.asarray(pred["gt_mask"][i, s], np.float64)
    has = bool(pred["has_gt_mask"][i, s]) if "has_gt_mask" in pred else True
    gt = (mask > 0).astype(np.float64) if protocol == "standard" else mask
    return gt.astype(np.float32), int(has)
  if not gt_format:
    return gt_maps.boxes_to_gt_map(pred["boxes"][i][in_source], size=size, combine="binarize"), nbox
  if protocol == "official" and "boxes_raw" in pred:
    raw = pred["boxes_raw"][i][in_source]
    pixels = (gt_maps.music_pixels(raw, "official") if gt_format.startswith("music")
              else gt_maps.normalized_to_pixels(raw))
  else:
    pixels = gt_maps.normalized_to_pixels(pred["boxes"][i][in_source])
  return gt_maps.pixel_boxes_to_gt_map(pixels.reshape(-1, 4), gt_format, protocol).astype(np.float32), nbox


def official_duet_gt_bug(pred: dict[str, Any]) -> tuple[dict[str, Any], int]:
  """The official vggsound_duet test GT (docs/metrics.md §2, defect i): source 0 is scored against the GT of
  the *partner* and source 1 against the GT of the partner's partner (the partner's own csv row).

  Returns a copy of `pred` whose boxes / boxes_raw / box_source are replaced accordingly, and how many items have
  no such GT (the partner's partner is not an example of the split, e.g. skipped at preparation: empty GT).
  The partners are looked up over every host's examples.
  """
  ids = data_source.decode_ids(sharding.gather_rows(pred["id"]))
  all_raw, all_boxes, all_source = (sharding.gather_rows(pred[k]) for k in ("boxes_raw", "boxes", "box_source"))
  row_of = {example_id: r for r, example_id in enumerate(ids)}
  partners = data_source.decode_ids(pred["partner_id"])
  boxes_raw, boxes = np.full_like(pred["boxes_raw"], -1.0), np.full_like(pred["boxes"], -1.0)
  box_source = np.full_like(pred["box_source"], -1)
  missing = 0
  for i, partner in enumerate(partners):
    # source 0 <- the partner's boxes (this example's source 1); source 1 <- the partner's partner's boxes
    # (the partner example's source 1).
    rows = [(pred["boxes_raw"][i], pred["boxes"][i], pred["box_source"][i])]
    r = row_of.get(partner)
    rows.append((all_raw[r], all_boxes[r], all_source[r]) if r is not None else None)
    slot = 0
    for s, entry in enumerate(rows):
      if entry is None:
        missing += 1
        continue
      raw, box, src = entry
      for b in np.flatnonzero(src == 1):
        if slot < boxes.shape[1]:
          boxes_raw[i, slot], boxes[i, slot], box_source[i, slot] = raw[b], box[b], s
          slot += 1
  out = dict(pred)
  out.update(boxes_raw=boxes_raw, boxes=boxes, box_source=box_source)
  return out, missing


def source_items(pred: dict[str, Any], protocol: str = "official"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Flattens (example, source) pairs with a real source; returns (example idx, source idx, GT maps, nbox)."""
  example_idx, source_idx = np.nonzero(pred["source_class"] >= 0)
  gts, nbox = [], []
  for i, s in zip(example_idx, source_idx):
    gt, count = item_gt_map(pred, i, s, protocol)
    gts.append(gt)
    nbox.append(count)
  gt = np.stack(gts) if gts else np.zeros((0, resampling.GT_SIZE, resampling.GT_SIZE), np.float32)
  return example_idx, source_idx, gt, np.asarray(nbox, np.int64)
