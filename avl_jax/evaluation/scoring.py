"""Scoring: the model's maps and the baselines through the same metric code, per-item tables, source matching.

Methods are scored on the same items, GT and post-processing: the model, the centre prior and uniform random
maps at the model's map resolution (`BASELINES`). `match_sources` is the permutation-invariant assignment of
predicted maps to GT sources used by every family's predicted-class evaluation.
"""
import itertools

import jax
import numpy as np

from avl_jax import sharding
from avl_jax.metrics import gt_maps
from avl_jax.metrics import localization

METHODS = ("model", "center_prior", "random")
BASELINES = METHODS[1:]


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
                fixed_threshold: float | None = None) -> tuple[dict[str, dict], dict[str, dict]]:
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

  Returns:
    ({method: summary}, {method: per-item values [M_total]}), methods in METHODS order.
  """
  raw = {"model": raw_maps}
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
               num_pixels: int = gt_maps.GT_SIZE * gt_maps.GT_SIZE) -> dict[str, list]:
  """Columns of the per-item CSV (CSV_COLUMNS, then `{baseline}_ciou`, `{baseline}_ap`), one entry per item.

  `area` is Σgt / num_pixels (the GT map's H x W).
  """
  model = per_items["model"]
  table = {
      "id": list(ids), "source": np.asarray(source).tolist(), "class": np.asarray(class_id).tolist(),
      "nbox": model["nbox"].tolist(), "area": (model["area"] / num_pixels).tolist(),
      "ciou": model["ciou"].tolist(), "ap": model["pixel_ap"].tolist(),
      "piap_official": model["piap_official"].tolist(), "conf": model["conf"].tolist(),
  }
  for method in BASELINES:
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
