"""Sound-source localization scores: per-map values and summaries (docs/metrics.md §3, §4, §6).

Axis letters: N maps (one per (sample, source) item), H/W GT resolution (224x224), h/w raw map size (7x7).

Entry points:
  * `score_maps(raw_maps, gt, nbox, protocol=..., tau=...)`: AVGN official post-processing (postprocess.py
    §1.1; 7x7 logits are upsampled, maps already at H x W are used as the upsampled map) then the per-map
    values and the summary. This is what the eval binary calls.
  * `score_predictions(pred, gt, nbox, conf)`: the official `EvaluatorFull.update` on given normalised maps
    and confidences (median threshold computed here).
  * `summarize(per_sample, protocol)`, `summarize_multi(per_sample, num_sources, protocol)`.
Work is split into chunks of maps scored on a thread pool (NumPy releases the GIL in sorts and ufuncs).

Per-sample arrays (each [N]):
  `ciou` float64      Σ(infer·gt) / (Σgt + Σ(infer·1[gt = 0])); 0 for an empty GT with predictions, NaN if
                      both are empty. Weighted IoU for non-binary GT.
  `piap_official`     AVGN's "piap": sklearn AP(y_true = infer, y_score = gt) (arguments swapped, prediction
                      binarised); closed form (I/P)(I/G) + (1 − I/P)(P/N) for binary GT, P/N for an empty GT,
                      the same sum over the distinct GT levels otherwise; 0.0 if infer is empty (sklearn 1.x).
  `pixel_ap` float64  true pixel AP: sklearn AP(y_true = gt > 0, y_score = pred), step-wise, ties grouped;
                      NaN when the GT has no positive pixel (documented choice; sklearn 1.x gives 0.0).
  `tvsl_iou` float64  T-VSL IoU (|infer ∧ G| + 1e-4) / (|infer ∨ G| + 1e-4), G = gt != 0.
  `conf` float64      the confidence (AVGN: mean of the top quarter of the fixed-range scores, float32 value).
  `area` float64      Σgt.   `nbox` int64  number of GT boxes (0 = not sounding).
  `thr` float64       binarisation threshold of pred (float32 value): ascending-sorted pred at ⌊0.5·HW⌋ for
                      `binarize='median'`, the fixed value otherwise. infer = pred >= thr.
  `infer_area` int64  Σinfer.   `n_ties` int64  pixels with pred == thr (all inside infer).
  `empty_gt` bool     Σgt = 0.   `gt_nonbinary` bool  GT has values other than 0 and 1 (sums, Flickr 0.5).

Summary keys (`summarize`; means over the protocol's item set, NaN for an empty set):
  `protocol`          'official' | 'standard'.
  `binarize`          'median' | 'fixed' (map post-processing recorded as metadata).
  `n_samples`         number of items.   `n_visible`  items with nbox > 0.
  `n_empty_gt`        items whose GT map is empty (excluded from every metric under `standard`).
  `n_nonbinary_gt`    items whose GT is not 0/1.
  `n_ties_total`      Σ n_ties (pixels equal to the threshold, the threshold pixel itself included).
  `n_items_with_ties` items where more than one pixel equals the threshold (ties all go into infer).
  `ciou_mean`         mean cIoU over items with nbox > 0 (standard: and a non-empty GT).
  `ciou_frac@0.3`, `ciou_frac@0.5`   fraction with cIoU >= t (DSOL CIoU@t, LVS IoU@0.5).
  `precision_at_10/30/50`   AVGN `precision_at_*`: fraction with cIoU > t (strict), items with nbox > 0.
  `auc`               success-curve AUC; official: 0.05·i float thresholds (`cal_auc`), standard: i/20.
  `pixel_ap`          mean true pixel AP (items with a positive GT pixel); standard alias `ap`.
  `ap_pixel_skip`     official only: T-VSL AP, mean pixel AP skipping non-binary GT (empty GT counts 0.0).
  `piap_official`     AVGN `piap_average` (mean of per-item piap_official).
  `slavc_ap@0.3`, `slavc_ap@0.5`   SLAVC `calc_ap` (`ap_at_30`, `ap_at_50`).
  `f1_at_30`, `f1_at_50`   AVGN `f1_at_*` at conf_thr 0.5.
  `auc_official`      official only: alias of `auc`.
  `tvsl_iou_mean`     official only: T-VSL `IoU`, mean smoothed IoU over all items.
"""
import concurrent.futures
import os
from typing import Any, Optional

import numpy as np

from avl_jax.metrics import aggregates
from avl_jax.metrics import postprocess
from avl_jax.metrics import ranking

PROTOCOLS = ("official", "standard")
BINARIZE = ("median", "fixed")
DEFAULT_CHUNK = 8


def _official_piap(infer_area, intersection, positive_area, num_pixels) -> np.ndarray:
  """Closed-form sklearn AP(y_true = infer, y_score = binary gt), vectorised (docs/metrics.md §3)."""
  p = infer_area.astype(np.float64)
  i = intersection.astype(np.float64)
  g = positive_area.astype(np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    first_level = np.where(g > 0, (i / p) * (i / g), 0.0)
    rest = np.where(g > 0, 1.0 - i / p, 1.0) * (p / num_pixels)
    value = first_level + rest
  return np.where(p > 0, value, 0.0)


def map_values(pred: np.ndarray, gt: np.ndarray, binarize: str = "median",
               fixed_threshold: float = postprocess.TVSL_THRESHOLD,
               scores: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
  """Per-map values of one chunk (everything of `score_predictions` except conf and nbox).

  Args:
    pred: [C, H, W] normalised maps (float32; the binarisation and pixel AP use them).
    gt: [C, H, W] GT maps (>= 0, values representable in float32).
    binarize: 'median' (thr = sorted pred at ⌊0.5·HW⌋) or 'fixed' (thr = fixed_threshold).
    fixed_threshold: threshold of 'fixed'.
    scores: optional [C, H, W] AVGN fixed-range scores (pred = their min-max); adds `conf`.

  Returns:
    dict of [C] arrays: thr, infer_area, n_ties, ciou, piap_official, pixel_ap, area, empty_gt, gt_nonbinary
    (and conf).
  """
  num_maps = pred.shape[0]
  pred = np.asarray(pred, np.float32).reshape(num_maps, -1)
  gt = np.asarray(gt).reshape(num_maps, -1)
  num_pixels = pred.shape[1]
  labels = gt > 0
  # A float32 sum is exact for the usual GT values (0, 0.5, 1, 2, ...: dyadic partial sums below 2^24).
  area = gt.sum(axis=1, dtype=np.float32 if gt.dtype == np.float32 else np.float64).astype(np.float64)
  keys = ranking.sorted_keys(pred, labels)
  positives = ranking.positive_ranks(keys)
  positive_area = positives["num_pos"]
  # Binary iff every positive value is exactly 1: Σgt = #positives with max 1 (or no positive), min >= 0.
  nonbinary = ((area != positive_area) | ((positive_area > 0) & (gt.max(axis=1) != 1))
               | (gt.min(axis=1) < 0))
  for c in np.flatnonzero(nonbinary):
    area[c] = gt[c].sum(dtype=np.float64)
  pixel_ap = ranking.average_precision_sorted(keys, positives)

  if binarize == "median":
    thr = ranking.decode_scores(keys[:, int(num_pixels * 0.5)])
  elif binarize == "fixed":
    thr = np.full(num_maps, fixed_threshold, np.float32)
  else:
    raise ValueError(f"Unknown binarize {binarize!r}; expected one of {BINARIZE}.")
  # infer = pred >= thr is the suffix of the sorted row that starts at the first key of thr's tie group.
  # (uint32 keys hold only non-negative scores, so a negative fixed threshold selects every pixel.)
  below_all = thr < 0 if keys.dtype == np.uint32 else np.zeros(num_maps, bool)
  keys_thr = ranking.score_key(np.where(below_all, np.float32(0), thr), keys.dtype)
  start = np.where(below_all, 0, ranking.rowwise_searchsorted(keys, keys_thr, "left"))
  stop = ranking.rowwise_searchsorted(keys, keys_thr | keys.dtype.type(1), "right")
  infer_area = num_pixels - start
  n_ties = np.where(below_all, 0, stop - start)
  intersection = ranking.count_positives_from(positives, start, num_pixels)

  # Binary GT: Σ(infer·gt) = intersection; the piap closed form applies.
  weighted_intersection = intersection.astype(np.float64)
  piap = _official_piap(infer_area, intersection, positive_area, num_pixels)
  for c in np.flatnonzero(nonbinary):
    infer = pred[c] >= thr[c]
    weighted_intersection[c] = gt[c][infer].sum(dtype=np.float64)
    # sklearn AP(y_true = infer, y_score = gt): the GT levels act as scores.
    piap[c] = ranking.average_precision(gt[c][None].astype(np.float32), infer[None])[0]
    if not infer.any():
      piap[c] = 0.0
  with np.errstate(divide="ignore", invalid="ignore"):
    ciou = weighted_intersection / (area + (infer_area - intersection))
  # T-VSL's smoothed IoU of the masks infer and gt != 0.
  tvsl_iou = (intersection + 1e-4) / (infer_area + positive_area - intersection + 1e-4)
  values = {
      "thr": thr.astype(np.float64), "infer_area": infer_area, "n_ties": n_ties.astype(np.int64),
      "ciou": ciou, "piap_official": piap, "pixel_ap": pixel_ap, "tvsl_iou": tvsl_iou, "area": area,
      "empty_gt": area == 0, "gt_nonbinary": nonbinary,
  }
  if scores is not None:
    # The sorted pred gives the cut of the top quarter, so conf needs no partition of the scores.
    pred_cut = ranking.decode_scores(keys[:, num_pixels - (-((-num_pixels) // 4))])
    values["conf"] = postprocess.top_quarter_mean(scores, pred, pred_cut).astype(np.float64)
  return values


def _run_chunks(fn, num_items: int, chunk_size: int, num_threads: Optional[int]) -> dict[str, np.ndarray]:
  """Applies fn(start, stop) -> dict of [stop - start] arrays over chunks; concatenates in order."""
  bounds = [(s, min(s + chunk_size, num_items)) for s in range(0, num_items, chunk_size)]
  if num_threads is None:
    num_threads = min(os.cpu_count() or 1, 8)
  if num_threads <= 1 or len(bounds) <= 1:
    parts = [fn(s, e) for s, e in bounds]
  else:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      parts = list(pool.map(lambda b: fn(*b), bounds))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _check_inputs(maps: np.ndarray, gt: np.ndarray, nbox: np.ndarray) -> None:
  if maps.ndim != 3 or gt.ndim != 3 or len(maps) != len(gt) or nbox.shape != (len(gt),):
    raise ValueError(f"Expected maps [N, h, w], gt [N, H, W], nbox [N]; got {maps.shape}, {gt.shape}, "
                     f"{nbox.shape}.")


def _empty_per_sample() -> dict[str, np.ndarray]:
  floats = ("thr", "ciou", "piap_official", "pixel_ap", "tvsl_iou", "area", "conf")
  per_sample = {k: np.zeros(0, np.float64) for k in floats}
  per_sample.update({k: np.zeros(0, np.int64) for k in ("infer_area", "n_ties", "nbox")})
  per_sample.update({k: np.zeros(0, bool) for k in ("empty_gt", "gt_nonbinary")})
  return per_sample


def score_predictions(pred: np.ndarray, gt: np.ndarray, nbox: np.ndarray, conf: np.ndarray, *,
                      binarize: str = "median", fixed_threshold: float = postprocess.TVSL_THRESHOLD,
                      chunk_size: int = DEFAULT_CHUNK, num_threads: Optional[int] = None
                      ) -> dict[str, np.ndarray]:
  """Per-sample values for given normalised maps, like the official `EvaluatorFull.update` loop.

  Args:
    pred: [N, H, W] normalised prediction maps (cast to float32).
    gt: [N, H, W] GT maps.
    nbox: [N] number of GT boxes per item.
    conf: [N] confidences.
    binarize, fixed_threshold: see `map_values`.
    chunk_size: maps per work unit.
    num_threads: worker threads (default: min(cpu_count, 8)).

  Returns:
    per-sample dict (module docstring).
  """
  pred, gt = np.asarray(pred), np.asarray(gt)
  nbox = np.asarray(nbox, np.int64).reshape(-1)
  _check_inputs(pred, gt, nbox)
  if len(pred) == 0:
    return _empty_per_sample()
  per_sample = _run_chunks(lambda s, e: map_values(pred[s:e], gt[s:e], binarize, fixed_threshold),
                           len(pred), chunk_size, num_threads)
  per_sample["conf"] = np.asarray(conf, np.float64).reshape(-1)
  per_sample["nbox"] = nbox
  return per_sample


def score_maps(raw_maps: np.ndarray, gt: np.ndarray, nbox: np.ndarray, *, protocol: str = "official",
               tau: float = postprocess.OFFICIAL_TAU, map_range: str = "logits", binarize: str = "median",
               fixed_threshold: float = postprocess.TVSL_THRESHOLD, chunk_size: int = DEFAULT_CHUNK,
               num_threads: Optional[int] = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Scores raw localization maps against GT maps: AVGN post-processing, per-map values, summary.

  Args:
    raw_maps: [N, h, w] logits (bicubic-upsampled to H x W) or [N, H, W] maps already at GT resolution.
    gt: [N, H, W] GT maps (built with `gt_maps` under the same protocol).
    nbox: [N] number of GT boxes per item (0 = not sounding).
    protocol: 'official' | 'standard' (docs/metrics.md §6; affects the summary).
    tau: model temperature of the fixed-range scores (only conf depends on it).
    map_range: what the raw values are, `postprocess.map_scores`: 'logits' (AVGN, fixed range +-1/tau),
      'unit' (scores in [0, 1]) or 'minmax' (per-map min-max); only conf depends on it.
    binarize: 'median' (AVGN) or 'fixed' (infer = pred >= fixed_threshold, T-VSL style).
    fixed_threshold: threshold of 'fixed'.
    chunk_size: maps per work unit.
    num_threads: worker threads (default: min(cpu_count, 8)).

  Returns:
    (per_sample, summary), see the module docstring.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"Unknown protocol {protocol!r}; expected one of {PROTOCOLS}.")
  if map_range not in postprocess.MAP_RANGES:
    raise ValueError(f"Unknown map_range {map_range!r}; expected one of {postprocess.MAP_RANGES}.")
  raw_maps, gt = np.asarray(raw_maps), np.asarray(gt)
  nbox = np.asarray(nbox, np.int64).reshape(-1)
  _check_inputs(raw_maps, gt, nbox)
  out_hw = tuple(gt.shape[-2:])
  if len(raw_maps) == 0:
    per_sample = _empty_per_sample()
  else:
    def chunk(start, stop):
      scores = postprocess.map_scores(postprocess.upsample_to(raw_maps[start:stop], out_hw), map_range, tau)
      pred = postprocess.minmax_normalize(scores)
      return map_values(pred, gt[start:stop], binarize, fixed_threshold, scores=scores)

    per_sample = _run_chunks(chunk, len(raw_maps), chunk_size, num_threads)
    per_sample["nbox"] = nbox
  return per_sample, summarize(per_sample, protocol=protocol, binarize=binarize)


def _mean(values: np.ndarray) -> float:
  return float(np.mean(values)) if values.size else float("nan")


def summarize(per_sample: dict[str, np.ndarray], protocol: str = "official",
              binarize: str = "median") -> dict[str, Any]:
  """Summary metrics of per-sample values (keys in the module docstring).

  Args:
    per_sample: output of `score_maps` / `score_predictions` (possibly gathered over hosts).
    protocol: 'official' keeps every item and the official float thresholds; 'standard' drops items with
      an empty GT map and uses exact i/20 AUC thresholds.
    binarize: recorded as metadata.

  Returns:
    dict of floats plus the `protocol` and `binarize` strings.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"Unknown protocol {protocol!r}; expected one of {PROTOCOLS}.")
  ps = {k: np.asarray(v).reshape(-1) for k, v in per_sample.items()}
  empty_gt = ps["empty_gt"].astype(bool)
  summary = {
      "protocol": protocol, "binarize": binarize, "n_samples": int(len(ps["ciou"])),
      "n_visible": int(np.count_nonzero(ps["nbox"] > 0)), "n_empty_gt": int(np.count_nonzero(empty_gt)),
      "n_nonbinary_gt": int(np.count_nonzero(ps["gt_nonbinary"])),
      "n_ties_total": int(ps["n_ties"].sum()), "n_items_with_ties": int(np.count_nonzero(ps["n_ties"] > 1)),
  }
  keep = ~empty_gt if protocol == "standard" else np.ones(len(empty_gt), bool)
  nbox, ciou, conf = ps["nbox"][keep], ps["ciou"][keep], ps["conf"][keep]
  ciou_items = ciou[nbox > 0]
  summary["ciou_mean"] = _mean(ciou_items)
  for t in (0.3, 0.5):
    summary[f"ciou_frac@{t}"] = aggregates.fraction_at_least(ciou_items, t)
  for t in (10, 30, 50):
    summary[f"precision_at_{t}"] = aggregates.precision_at(nbox, ciou, t / 100)
  summary["auc"] = aggregates.auc(nbox, ciou, protocol)
  pixel_ap = ps["pixel_ap"][keep]
  summary["pixel_ap"] = _mean(pixel_ap[np.isfinite(pixel_ap)])
  summary["piap_official"] = _mean(ps["piap_official"][keep])
  for t in (0.3, 0.5):
    summary[f"slavc_ap@{t}"] = aggregates.slavc_ap(nbox, ciou, conf, t)
  summary["f1_at_30"] = aggregates.f1_score(nbox, ciou, conf, aggregates.DEFAULT_CONF_THR, 0.3)
  summary["f1_at_50"] = aggregates.f1_score(nbox, ciou, conf, aggregates.DEFAULT_CONF_THR, 0.5)
  if protocol == "official":
    summary["auc_official"] = summary["auc"]
    binary = ~ps["gt_nonbinary"].astype(bool)
    summary["ap_pixel_skip"] = _mean(np.nan_to_num(ps["pixel_ap"][binary], nan=0.0))
    summary["tvsl_iou_mean"] = _mean(ps["tvsl_iou"])
  else:
    summary["ap"] = summary["pixel_ap"]
  return summary


def summarize_multi(per_sample: dict[str, np.ndarray], num_sources: int,
                    protocol: str = "official", binarize: str = "median") -> dict[str, Any]:
  """Multi-source summary: pooled (sample, source) items plus AVGN `validate_multi`'s per-source means.

  Args:
    per_sample: per-item arrays with items ordered sample-major (item = sample·K + source); every sample
      must have exactly K items.
    num_sources: K.
    protocol, binarize: as in `summarize`.

  Returns:
    `summarize` of the pooled items, plus `cap` (mean pixel AP with the class-aware maps as given),
    `num_sources`, and `avgn_multi/{precision_at_10,precision_at_30,piap_official,f1_at_30}` = the mean over
    the K per-source evaluators (official: NaN propagates like np.mean of the list).
  """
  num_items = len(np.asarray(per_sample["ciou"]).reshape(-1))
  if num_sources < 1 or num_items % num_sources:
    raise ValueError(f"{num_items} items cannot be split into samples of {num_sources} sources.")
  pooled = summarize(per_sample, protocol, binarize)
  pooled["num_sources"] = int(num_sources)
  pooled["cap"] = pooled["pixel_ap"]
  ps = {k: np.asarray(v).reshape(-1, num_sources) for k, v in per_sample.items()}
  per_source = [summarize({k: v[:, s] for k, v in ps.items()}, protocol, binarize)
                for s in range(num_sources)]
  for key in ("precision_at_10", "precision_at_30", "piap_official", "f1_at_30"):
    pooled[f"avgn_multi/{key}"] = float(np.mean([s[key] for s in per_source]))
  return pooled


def official_finalize_stats(per_sample: dict[str, np.ndarray], strict: bool = False) -> dict[str, object]:
  """`EvaluatorFull.finalize_stats` on per-sample values (see aggregates.finalize_stats)."""
  return aggregates.finalize_stats(per_sample["nbox"], per_sample["ciou"], per_sample["conf"],
                                   per_sample["piap_official"], per_sample["area"], strict=strict)
