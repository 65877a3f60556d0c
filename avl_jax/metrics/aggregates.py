"""Dataset-level localization metrics from per-sample values (docs/metrics.md §4), vectorised.

Axis letters: N samples, T thresholds.

Inputs are per-sample arrays: `nbox` [N] (number of GT boxes, the official `bb_list`; 0 = not sounding),
`ciou` [N], `conf` [N] (confidence), `piap` [N], `area` [N] (Σ GT). Each function reproduces the official
`utils.py EvaluatorFull` method named in its docstring, including its comparison operators and float
arithmetic (0.05·i AUC thresholds, Python-float divisions, sequential sums), so values agree with the
official code to the last bit or within a few ulps.
"""
import itertools
from typing import Sequence

import numpy as np
import numpy.typing as npt

DEFAULT_CONF_THR = 0.5
IOU_THRS = (0.3, 0.5, 0.75)
# finalize_stats area bins on Σ GT, [min, max).
AREA_BINS = {"small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, 144 ** 2),
             "huge": (144 ** 2, 10000 ** 2)}
SUBSETS = ("all", "visible", "small", "medium", "large", "huge")


def official_auc_thresholds() -> np.ndarray:
  """0.05·i for i = 0..20 as Python computes them (0.05·6 = 0.30000000000000004, ...)."""
  return np.array([0.05 * i for i in range(21)])


def standard_auc_thresholds() -> np.ndarray:
  """The doubles nearest to i/20 for i = 0..20."""
  return np.array([i / 20 for i in range(21)])


def _as_arrays(nbox: npt.ArrayLike, ciou: npt.ArrayLike, conf: npt.ArrayLike | None = None):
  nbox = np.asarray(nbox, np.int64).reshape(-1)
  ciou = np.asarray(ciou, np.float64).reshape(-1)
  if conf is None:
    return nbox, ciou
  return nbox, ciou, np.asarray(conf, np.float64).reshape(-1)


def precision_at(nbox: npt.ArrayLike, ciou: npt.ArrayLike, threshold: float) -> float:
  """`precision_at_{10,30,50}`: mean of 1[cIoU > t] (strict) over samples with nbox > 0; NaN if none."""
  nbox, ciou = _as_arrays(nbox, ciou)
  visible = ciou[nbox > 0]
  return float(np.mean(visible > threshold)) if visible.size else float("nan")


def fraction_at_least(ciou: npt.ArrayLike, threshold: float) -> float:
  """Fraction of values with cIoU >= t (LVS `finalize_AP50`, DSOL CIoU@t, standard `ciou_frac@t`)."""
  ciou = np.asarray(ciou, np.float64).reshape(-1)
  return float(np.mean(ciou >= threshold)) if ciou.size else float("nan")


def precision_recall(nbox: npt.ArrayLike, ciou: npt.ArrayLike, conf: npt.ArrayLike, conf_thrs: npt.ArrayLike,
                     ciou_thr: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """`calc_precision_recall` at many confidence thresholds at once.

  bb = 0: FP if conf >= conf_thr. bb > 0: TP if conf >= conf_thr and cIoU >= ciou_thr, FP if conf >=
  conf_thr otherwise, FN if conf < conf_thr. P = TP/(TP+FP), R = TP/(TP+FN), 1 where a denominator is 0.

  Args:
    nbox, ciou, conf: [N] per-sample values.
    conf_thrs: scalar or [T] confidence thresholds.
    ciou_thr: cIoU threshold (>=).

  Returns:
    (precision, recall), each [T] float64 (0-d if conf_thrs is a scalar).
  """
  nbox, ciou, conf = _as_arrays(nbox, ciou, conf)
  conf_thrs = np.asarray(conf_thrs, np.float64)
  detected = conf[None, :] >= conf_thrs.reshape(-1, 1)
  visible = nbox > 0
  hit = visible & (ciou >= ciou_thr)
  true_pos = np.count_nonzero(detected & hit, axis=1)
  false_pos = np.count_nonzero(detected & ~hit, axis=1)  # Not sounding, or in the wrong place.
  false_neg = np.count_nonzero(~detected & visible, axis=1)
  with np.errstate(divide="ignore", invalid="ignore"):
    precision = np.where(true_pos + false_pos == 0, 1.0, true_pos / (true_pos + false_pos))
    recall = np.where(true_pos + false_neg == 0, 1.0, true_pos / (true_pos + false_neg))
  return precision.reshape(conf_thrs.shape), recall.reshape(conf_thrs.shape)


def f1_score(nbox: npt.ArrayLike, ciou: npt.ArrayLike, conf: npt.ArrayLike, conf_thr: float = DEFAULT_CONF_THR,
             ciou_thr: float = 0.5) -> float:
  """`f1_at_30` / `f1_at_50` (ciou_thr 0.3 / 0.5): 2·p·r/(p + r) at conf_thr, 0 if p + r = 0."""
  p, r = precision_recall(nbox, ciou, conf, conf_thr, ciou_thr)
  p, r = float(p), float(r)
  return 2 * p * r / (p + r) if (p + r) > 0 else 0.0


def slavc_ap(nbox: npt.ArrayLike, ciou: npt.ArrayLike, conf: npt.ArrayLike, ciou_thr: float = 0.5) -> float:
  """`calc_ap` (SLAVC confidence-ranked AP).

  Thresholds: ascending-sorted conf without its last value, reversed, every s-th with s = max(1, ⌊N/200⌋);
  AP = Σ_k max_{j >= k} P_j · (R_{k+1} − R_k) over all but the last point (summed left to right).
  """
  nbox, ciou, conf = _as_arrays(nbox, ciou, conf)
  step = max(1, len(ciou) // 200)
  thresholds = np.sort(conf)[:-1][::-step]
  if len(thresholds) == 0:
    return 0.0
  precision, recall = precision_recall(nbox, ciou, conf, thresholds, ciou_thr)
  precision_max = np.maximum.accumulate(precision[::-1])[::-1]
  terms = precision_max[:-1] * (recall[1:] - recall[:-1])
  total = 0.0
  for term in terms.tolist():  # Python's sum(): sequential, like the official code.
    total += term
  return total


def auc(nbox: npt.ArrayLike, ciou: npt.ArrayLike, protocol: str = "official") -> float:
  """`cal_auc`: area under the success curve c_i = mean(cIoU >= t_i) over samples with nbox > 0.

  official: t_i = 0.05·i (floats, so cIoU = 0.3 is not counted at i = 6); standard: t_i = i/20.
  Trapezoid rule over t (`sklearn.metrics.auc`). NaN if no sample has a box.
  """
  nbox, ciou = _as_arrays(nbox, ciou)
  visible = ciou[nbox > 0]
  if visible.size == 0:
    return float("nan")
  thresholds = official_auc_thresholds() if protocol == "official" else standard_auc_thresholds()
  success = np.count_nonzero(visible[None, :] >= thresholds[:, None], axis=1) / visible.size
  return float(np.trapezoid(success, thresholds))


def auc_of_list(ciou: npt.ArrayLike, protocol: str = "official") -> float:
  """AUC of a plain cIoU list (LVS/EZ-VSL `finalize_AUC`, T-VSL `cal_AUC`): every value counts."""
  ciou = np.asarray(ciou, np.float64).reshape(-1)
  return auc(np.ones(ciou.shape, np.int64), ciou, protocol)


def subset_indices(subset: str, nbox: npt.ArrayLike, area: npt.ArrayLike) -> np.ndarray:
  """`filter_subset`: indices of all / visible (nbox > 0) / an area bin (min <= Σgt < max, nbox > 0)."""
  nbox = np.asarray(nbox, np.int64).reshape(-1)
  area = np.asarray(area, np.float64).reshape(-1)
  if subset == "all":
    keep = nbox >= 0
  elif subset == "visible":
    keep = nbox > 0
  elif subset == "non-visible/non-audible":
    keep = nbox == 0
  else:
    low, high = AREA_BINS[subset]
    keep = (low <= area) & (area < high) & (nbox > 0)
  return np.flatnonzero(keep)


def finalize_stats(nbox: npt.ArrayLike, ciou: npt.ArrayLike, conf: npt.ArrayLike, piap: npt.ArrayLike,
                   area: npt.ArrayLike, iou_thrs: Sequence[float] = IOU_THRS,
                   strict: bool = False) -> dict[str, object]:
  """`EvaluatorFull.finalize_stats`: keys `{Precision,F1,AP,AUC,PIAP}-{subset}@{int(100·thr)}`.

  Precision = P at conf_thr −1000 (fraction with cIoU >= thr); AP = `slavc_ap`; AUC = `auc` (official);
  PIAP = mean piap; F1 = the official string of `f'{f*100:.1f}'` values joined by spaces, at conf
  thresholds sorted(conf)[::max(1, ⌊n/10⌋)].

  Args:
    nbox, ciou, conf, piap, area: [N] per-sample values.
    iou_thrs: cIoU thresholds.
    strict: raise ValueError on an empty subset like the official code does (its `filter_subset` returns 5
      lists to a 6-way unpack); otherwise an empty subset gives NaN entries (the code path it intended).

  Returns:
    dict in the official key order.
  """
  nbox, ciou, conf = _as_arrays(nbox, ciou, conf)
  piap = np.asarray(piap, np.float64).reshape(-1)
  area = np.asarray(area, np.float64).reshape(-1)
  stats = {}
  for iou_thr in iou_thrs:
    for subset in SUBSETS:
      index = subset_indices(subset, nbox, area)
      name = f"{subset}@{int(iou_thr * 100)}"
      if index.size == 0:
        if strict:
          raise ValueError(f"finalize_stats: subset {subset!r} is empty (the official code raises here).")
        for metric in ("Precision", "F1", "AP", "AUC", "PIAP"):
          stats[f"{metric}-{name}"] = float("nan")
        continue
      bb, ci, cf = nbox[index], ciou[index], conf[index]
      precision, _ = precision_recall(bb, ci, cf, -1000.0, iou_thr)
      conf_thrs = np.sort(cf)[::max(1, len(cf) // 10)]
      ps, rs = precision_recall(bb, ci, cf, conf_thrs, iou_thr)
      f1 = [2 * r * p / (r + p) if r + p > 0 else 0.0 for p, r in zip(ps.tolist(), rs.tolist())]
      stats[f"Precision-{name}"] = float(precision)
      stats[f"F1-{name}"] = " ".join(f"{f * 100:.1f}" for f in f1)
      stats[f"AP-{name}"] = slavc_ap(bb, ci, cf, iou_thr)
      stats[f"AUC-{name}"] = auc(bb, ci, "official")
      stats[f"PIAP-{name}"] = float(np.mean(piap[index]))
  return stats


def permutation_invariant_piap(ap_matrix: npt.ArrayLike) -> np.ndarray:
  """PIAP_perm per sample: max over permutations π of mean_k AP(GT_k, map_π(k)).

  Args:
    ap_matrix: [N, K, K] with ap_matrix[n, k, j] = pixel AP of GT k against predicted map j.

  Returns:
    [N] float64.
  """
  ap_matrix = np.asarray(ap_matrix, np.float64)
  num_sources = ap_matrix.shape[-1]
  best = np.full(ap_matrix.shape[0], -np.inf)
  sources = np.arange(num_sources)
  for perm in itertools.permutations(range(num_sources)):
    best = np.maximum(best, ap_matrix[:, sources, list(perm)].mean(axis=1))
  return best
