"""Benchmark of `localization.score_maps` at VGGSound-Duet test size (5,158 pairs x 2 sources).

Run: `python -m avl_jax.benchmarks.metrics_benchmark [--num_samples=5158] [--num_sources=2]
[--reference_maps=200] [--num_threads=0]`.

Generates seeded random data (7x7 logits at the scale of AVGN's `Savl`, one or two random boxes per GT map),
times the vectorised `score_maps` on all maps, then times a naive per-map reference (pure NumPy, one map at a
time: the same bicubic, np.sort for conf and the threshold, np.unique-based pixel AP, closed-form
piap) on a subset and extrapolates it to the full set. Checks that both agree on the subset. Target: at most
10 s for 10,316 maps on 2 cores.
"""
import argparse
import os
import time

import numpy as np

from avl_jax import resampling
from avl_jax.metrics import aggregates
from avl_jax.metrics import gt_maps
from avl_jax.metrics import localization
from avl_jax.metrics import postprocess


def make_data(num_maps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Random raw maps [N, 7, 7] float32, binary GT maps [N, 224, 224] float32 and nbox [N] int64."""
  rng = np.random.default_rng(seed)
  raw = (10 * rng.standard_normal((num_maps, 7, 7))).astype(np.float32)
  nbox = rng.integers(1, 3, num_maps)
  size = resampling.GT_SIZE
  gt = np.zeros((num_maps, size, size), np.float32)
  coords = np.arange(size)
  for b in range(2):
    corner = rng.integers(0, 180, (num_maps, 2))
    extent = rng.integers(8, 120, (num_maps, 2))
    x1, y1 = corner[:, 0], corner[:, 1]
    x2, y2 = np.minimum(x1 + extent[:, 0], size), np.minimum(y1 + extent[:, 1], size)
    use = nbox > b
    for start in range(0, num_maps, 1024):  # Chunks keep the boolean temporaries small.
      s = slice(start, start + 1024)
      inside_y = (coords[None, :] >= y1[s, None]) & (coords[None, :] < y2[s, None])
      inside_x = (coords[None, :] >= x1[s, None]) & (coords[None, :] < x2[s, None])
      box = inside_y[:, :, None] & inside_x[:, None, :] & use[s, None, None]
      gt[s] = np.maximum(gt[s], box)
  return raw, gt, nbox.astype(np.int64)


def _reference_pixel_ap(labels: np.ndarray, scores: np.ndarray) -> float:
  """sklearn-style AP of one map with np.unique over the distinct scores."""
  num_pos = labels.sum()
  if num_pos == 0:
    return float("nan")
  values, inverse = np.unique(-scores, return_inverse=True)  # Descending scores.
  positives = np.bincount(inverse, weights=labels, minlength=len(values))
  counts = np.bincount(inverse, minlength=len(values))
  tp, total = np.cumsum(positives), np.cumsum(counts)
  return float(np.sum(positives / num_pos * (tp / total)))


def reference_scores(raw: np.ndarray, gt: np.ndarray, tau: float = postprocess.OFFICIAL_TAU) -> dict[str, np.ndarray]:
  """Naive per-map loop: ciou, piap_official, pixel_ap and conf for each map."""
  out = {k: np.zeros(len(raw)) for k in ("ciou", "piap_official", "pixel_ap", "conf")}
  for n in range(len(raw)):
    upsampled = resampling.upsample_bicubic(raw[n], (resampling.GT_SIZE, resampling.GT_SIZE))
    scores = (upsampled - np.float32(-1 / tau)) / np.float32(2 / tau)
    pred = (scores - scores.min()) / (scores.max() - scores.min())
    out["conf"][n] = np.sort(scores.reshape(-1))[-(scores.size // 4):].mean()
    thr = np.sort(pred.reshape(-1))[int(pred.size * 0.5)]
    infer = pred >= thr
    g = gt[n].astype(np.float64)
    out["ciou"][n] = (infer * g).sum() / (g.sum() + (infer * (g == 0)).sum())
    i, p, gg = float((infer & (g > 0)).sum()), float(infer.sum()), float((g > 0).sum())
    out["piap_official"][n] = (i / p) * (i / gg) + (1 - i / p) * (p / infer.size) if gg else p / infer.size
    out["pixel_ap"][n] = _reference_pixel_ap(g.reshape(-1) > 0, pred.reshape(-1))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_samples", type=int, default=5158)
  parser.add_argument("--num_sources", type=int, default=2)
  parser.add_argument("--reference_maps", type=int, default=200)
  parser.add_argument("--num_threads", type=int, default=0, help="0: min(cpu_count, 8)")
  parser.add_argument("--chunk_size", type=int, default=localization.DEFAULT_CHUNK)
  args = parser.parse_args()
  num_maps = args.num_samples * args.num_sources
  num_threads = args.num_threads or None

  t0 = time.perf_counter()
  raw, gt, nbox = make_data(num_maps)
  print(f"data: {num_maps} maps (7x7 -> {resampling.GT_SIZE}x{resampling.GT_SIZE}), "
        f"generated in {time.perf_counter() - t0:.1f} s; cpu_count={os.cpu_count()}")

  load_before = os.getloadavg()[0]
  t0, cpu0 = time.perf_counter(), time.process_time()
  per_sample, summary = localization.score_maps(raw, gt, nbox, protocol="official", num_threads=num_threads,
                                                chunk_size=args.chunk_size)
  fast_s, fast_cpu = time.perf_counter() - t0, time.process_time() - cpu0
  print(f"score_maps: {fast_s:.2f} s wall, {fast_cpu:.2f} s CPU (all threads) for {num_maps} maps = "
        f"{1e3 * fast_s / num_maps:.3f} ms/map wall (target <= 10 s: {'OK' if fast_s <= 10 else 'SLOW'}); "
        f"1-min load average before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f}")
  t0 = time.perf_counter()
  multi = localization.summarize_multi(per_sample, args.num_sources)
  stats = aggregates.finalize_stats(per_sample["nbox"], per_sample["ciou"], per_sample["conf"],
                                    per_sample["piap_official"], per_sample["area"])
  print(f"summarize_multi + finalize_stats: {time.perf_counter() - t0:.2f} s ({len(stats)} stats keys)")
  for key in ("ciou_mean", "ciou_frac@0.3", "auc", "pixel_ap", "piap_official", "slavc_ap@0.5"):
    print(f"  {key} = {summary[key]:.6f}")
  print(f"  avgn_multi/precision_at_10 = {multi['avgn_multi/precision_at_10']:.6f}")

  subset = slice(0, min(args.reference_maps, num_maps))
  t0, cpu0 = time.perf_counter(), time.process_time()
  reference = reference_scores(raw[subset], gt[subset])
  ref_s, ref_cpu = time.perf_counter() - t0, time.process_time() - cpu0
  n_ref = subset.stop
  extrapolated = ref_s / n_ref * num_maps
  print(f"naive per-map loop (1 thread): {ref_s:.2f} s wall, {ref_cpu:.2f} s CPU for {n_ref} maps = "
        f"{1e3 * ref_s / n_ref:.3f} ms/map; extrapolated to {num_maps} maps: {extrapolated:.1f} s wall; "
        f"speed-up x{extrapolated / fast_s:.1f} wall, x{ref_cpu / n_ref * num_maps / fast_cpu:.1f} CPU")
  for key, values in reference.items():
    diff = np.nanmax(np.abs(values - per_sample[key][subset]))
    print(f"  max |reference - score_maps| {key}: {diff:.3g}")


if __name__ == "__main__":
  main()
