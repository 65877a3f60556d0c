"""Scoring: the model's maps and the baselines through the same metric code, per-item tables, source matching.

Methods are scored on the same items, GT and post-processing: the model, the model with silent or another
example's audio (`AUDIO_ABLATIONS`), the model given each source another source's class (`CLASS_ABLATIONS`,
oracle-class models), the centre prior and uniform random maps at the model's map resolution
(`BASELINES`). `match_sources` is the permutation-invariant assignment of
predicted maps to GT sources used by every family's predicted-class evaluation.
"""
import itertools

import jax
import numpy as np

from avl_jax import resampling
from avl_jax import sharding
from avl_jax.metrics import localization
from avl_jax.metrics import ranking

AUDIO_ABLATIONS = ("silent_audio", "shuffled_audio")  # the model with its audio replaced (eval_lib.predict_split)
CLASS_ABLATIONS = ("swapped_classes",)  # the model with its oracle classes swapped (eval_lib.swapped_classes)
ABLATIONS = AUDIO_ABLATIONS + CLASS_ABLATIONS
BASELINES = ("center_prior", "random")
METHODS = ("model",) + ABLATIONS + BASELINES


def baseline_maps(kind: str, shape: tuple[int, ...], tau: float, seed: int = 0,
                  map_range: str = "logits") -> np.ndarray:
  """Trivial maps at the scored maps' resolution, in the units of `map_range`.

  center_prior: an isotropic Gaussian bump at the image centre (sigma = a quarter of the side);
  random: i.i.d. uniform values per map cell. 'logits' maps span [-1/tau, 1/tau], the others [0, 1].
  """
  *_, h, w = shape
  logits = map_range == "logits"
  if kind == "center_prior":
    ys = (np.arange(h) + 0.5) / h - 0.5
    xs = (np.arange(w) + 0.5) / w - 0.5
    bump = np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * 0.25 ** 2))
    return np.broadcast_to((2 * bump - 1) / tau if logits else bump, shape).astype(np.float32)
  if kind == "random":
    rng = np.random.default_rng(seed)
    low, high = (-1.0 / tau, 1.0 / tau) if logits else (0.0, 1.0)
    return rng.uniform(low, high, size=shape).astype(np.float32)
  raise ValueError(f"Unknown baseline {kind!r}; expected 'center_prior' or 'random'.")


def score_items(raw_maps: np.ndarray, gt: np.ndarray, nbox: np.ndarray, *, protocol: str, tau: float | None,
                map_range: str = "logits", baselines: bool = True, seed: int = 0,
                multihost: bool = True, binarize: str = "median",
                fixed_threshold: float | None = None,
                ablations: dict[str, np.ndarray] | None = None) -> tuple[dict[str, dict], dict[str, dict]]:
  """Scores maps and (optionally) the baselines at the same resolution with the same code.

  Args:
    raw_maps: [M, h, w] this host's raw maps, one per item.
    gt: [M, H, W] GT maps.   nbox: [M] boxes per item.
    protocol: 'official' | 'standard'.
    tau: temperature of 'logits' maps (None for the other ranges).
    map_range: 'logits' | 'unit' | 'minmax' (postprocess.map_scores).
    baselines: also score the centre-prior and random maps.
    seed: seed of the random baseline (each host adds its process index).
    multihost: gather the per-item values over hosts before summarising (False: the items are global).
    binarize: 'median' (threshold at each map's median) | 'fixed' (score >= fixed_threshold).
    fixed_threshold: the threshold of 'fixed' (default: localization.score_maps's).
    ablations: {name: [M, h, w] maps of the same items from the model with altered inputs}, scored as methods.

  Returns:
    ({method: summary}, {method: per-item values [M_total]}), methods in METHODS order.
  """
  raw = {"model": raw_maps, **(ablations or {})}
  if baselines:
    for kind in BASELINES:
      raw[kind] = baseline_maps(kind, raw_maps.shape, tau, seed + jax.process_index(), map_range)
  fixed = {} if fixed_threshold is None else {"fixed_threshold": fixed_threshold}
  summaries, per_items = {}, {}
  for method, maps in raw.items():
    per_item, _ = localization.score_maps(maps, gt, nbox, protocol=protocol, tau=tau, map_range=map_range,
                                          binarize=binarize, **fixed)
    if multihost:
      per_item = {k: sharding.gather_rows(np.asarray(v)) for k, v in per_item.items()}
    summaries[method] = localization.summarize(per_item, protocol=protocol, binarize=binarize)
    per_items[method] = per_item
  return summaries, per_items


def item_table(ids: list[str], source: np.ndarray, class_id: np.ndarray, per_items: dict[str, dict[str, np.ndarray]],
               num_pixels: int = resampling.GT_SIZE * resampling.GT_SIZE) -> dict[str, list]:
  """Columns of the per-item CSV (CSV_COLUMNS, then `{method}_ciou`, `{method}_ap` of each ablation and
  baseline scored), one entry per item.

  `area` is Σgt / num_pixels (the GT map's H x W).
  """
  model = per_items["model"]
  table = {
      "id": list(ids), "source": np.asarray(source).tolist(), "class": np.asarray(class_id).tolist(),
      "nbox": model["nbox"].tolist(), "area": (model["area"] / num_pixels).tolist(),
      "ciou": model["ciou"].tolist(), "ap": model["pixel_ap"].tolist(),
      "piap_official": model["piap_official"].tolist(), "conf": model["conf"].tolist(),
  }
  for method in ABLATIONS + BASELINES:
    if method in per_items:
      table[f"{method}_ciou"] = per_items[method]["ciou"].tolist()
      table[f"{method}_ap"] = per_items[method]["pixel_ap"].tolist()
  return table


def match_sources(score: np.ndarray, valid: np.ndarray, example_idx: np.ndarray) -> np.ndarray:
  """Assigns distinct predicted maps to the GT sources of each example, maximising the summed score.

  Args:
    score: [M, K] how well predicted map k fits item m, >= 0 (e.g. its pixel AP against the item's GT).
    valid: [M, K] bool, map k of item m's example is a real prediction (an invalid map counts as -1 and
      is reported as no map).
    example_idx: [M] the example of each item.

  Returns:
    [M] int, the chosen map of each item, -1 when its example has no valid map left for it.
  """
  num_pred = score.shape[1]
  score = np.where(valid, score, -1.0)
  chosen = np.full(len(example_idx), -1, np.int64)
  for i in np.unique(example_idx):
    items = np.flatnonzero(example_idx == i)
    best, best_value = None, -np.inf
    for perm in itertools.permutations(range(num_pred), min(len(items), num_pred)):
      value = sum(score[m, k] for m, k in zip(items, perm))
      if value > best_value:
        best, best_value = perm, value
    for m, k in zip(items, best):
      chosen[m] = k if valid[m, k] else -1
  return chosen


def audio_classification(class_scores: np.ndarray, source_class: np.ndarray, multihost: bool = True) -> dict:
  """How well the model's audio class scores find the sounding classes of each mixture.

  Args:
    class_scores: [n, C] this host's class scores (logits or probabilities: only their order matters).
    source_class: [n, S] the sounding classes of each example, -1 padding.
    multihost: gather the examples over hosts first.

  Returns:
    {'map': mean over classes with a positive example of the per-class AP over examples, 'chance': the
    expected mAP of random scores (the mean positive rate of those classes), 'top1': fraction of examples whose
    best-scored class sounds, 'num_examples'}.
  """
  labels = np.zeros(class_scores.shape, np.float32)
  rows, cols = np.nonzero(source_class >= 0)
  labels[rows, source_class[rows, cols]] = 1.0
  if multihost:
    class_scores, labels = sharding.gather_rows(class_scores), sharding.gather_rows(labels)
  present = labels.sum(axis=0) > 0
  if not present.any():
    return {"map": float("nan"), "chance": float("nan"), "top1": float("nan"), "num_examples": len(labels)}
  ap = ranking.average_precision(class_scores.T[present].astype(np.float32), labels.T[present])
  top1 = labels[np.arange(len(labels)), np.argmax(class_scores, axis=1)]
  return {"map": float(np.mean(ap)), "chance": float(labels.mean(axis=0)[present].mean()),
          "top1": float(top1.mean()), "num_examples": int(len(labels))}


def match_predicted(pred: dict, example_idx: np.ndarray, source_idx: np.ndarray, gt: np.ndarray, nbox: np.ndarray,
                    score_kwargs: dict, to_scores=None) -> tuple[np.ndarray, np.ndarray, dict]:
  """Predicted-class evaluation: the model's K maps (of its own top-K classes) assigned to the GT sources.

  Each example's distinct valid maps go to its GT sources so that their summed pixel AP is largest
  (`match_sources`).

  Args:
    pred: `maps` [n, K, h, w] raw maps of the predicted classes, `pred_valid` [n, K] bool, and optionally
      `pred_rows` / `gt_rows` (the predicted and GT class ids, for class_recall).
    example_idx, source_idx, gt, nbox: the items (gt [M, H, W]).
    score_kwargs: localization.score_maps keywords of the family's maps (map_range, tau, binarize, ...).
    to_scores: optional [N, h, w] raw -> [N, H, W] transform applied before scoring (e.g. a per-map min-max).

  Returns:
    (raw maps [M, h, w] matched to the items, unmatched [M] bool (no valid map left: the caller fills it
    with its 'nothing found' map), {'class_recall': fraction of GT sources whose class is among the valid
    predictions, 'num_predicted_mean': valid predicted classes per example}).
  """
  num_pred = pred["maps"].shape[1]
  candidates = pred["maps"][example_idx].reshape((-1,) + pred["maps"].shape[2:])  # [M * K, h, w]
  if to_scores is not None:
    candidates = to_scores(candidates)
  per_pair, _ = localization.score_maps(candidates, np.repeat(gt, num_pred, axis=0), np.repeat(nbox, num_pred),
                                        **score_kwargs)
  ap = np.nan_to_num(per_pair["pixel_ap"].reshape(len(example_idx), num_pred), nan=0.0)
  valid = pred["pred_valid"][example_idx]
  chosen = match_sources(ap, valid, example_idx)
  maps = pred["maps"][example_idx, np.maximum(chosen, 0)].astype(np.float32)
  recall = float("nan")
  if "gt_rows" in pred:
    gt_rows = pred["gt_rows"][example_idx, source_idx]
    hits = np.any((pred["pred_rows"][example_idx] == gt_rows[:, None]) & valid, axis=1)
    hits = sharding.gather_rows(hits.astype(np.float64))
    recall = float(hits.mean()) if len(hits) else float("nan")
  count = sharding.gather_rows(pred["pred_valid"].sum(axis=1).astype(np.float64))
  return maps, chosen < 0, {"class_recall": recall,
                            "num_predicted_mean": float(count.mean()) if len(count) else float("nan")}
