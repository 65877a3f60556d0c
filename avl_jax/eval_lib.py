"""Evaluation shared by the training loop and the eval binary: predict maps, score them, write results.

For every eval split: the model's raw localization maps for each GT source (oracle classes, as the official
evaluation), the centre-prior and uniform-random baselines at the same map resolution, all scored by the same
post-processing and metric code (avl_jax/metrics). Writes `{workdir}/eval/{split}_{step}.json` and a PNG grid.
"""
import json
import os
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from avl_jax import audio
from avl_jax import input_pipeline
from avl_jax import sharding
from avl_jax import visualize
from avl_jax.metrics import gt_maps
from avl_jax.metrics import localization
from avl_jax.metrics import postprocess

GT_SIZE = 224  # The official evaluation rasterises and scores on 224 x 224.
METHODS = ("model", "center_prior", "random")


def make_localize_fn(config: ml_collections.ConfigDict, model, mesh):
  """Jitted (variables, image, waveform, class_ids) -> raw maps [B, S, h, w], replicated on every host."""

  def localize(variables, image, waveform, class_ids):
    spec = audio.avgn_log_spectrogram(waveform, config.dataset.sample_rate)
    return model.apply(variables, image, spec, class_ids, train=False, method=model.localize)

  data = sharding.data_sharding(mesh)
  return jax.jit(localize, in_shardings=(sharding.replicated(mesh), data, data, data),
                 out_shardings=sharding.replicated(mesh))


def predict_split(config, model, variables, mesh, split: str, localize_fn=None) -> dict[str, np.ndarray]:
  """Runs the model over this host's shard of `split`; returns host arrays of the valid examples.

  Returns: maps [n, S, h, w] float32 raw logits, source_class [n, S], boxes [n, NB, 4], box_source [n, NB],
  ids [n, 64] uint8, and image_uint8 [min(n, num_visualize), H, W, 3].
  """
  per_host = sharding.per_host_batch_size(config.eval_batch_size, mesh)
  data = input_pipeline.create_eval_dataset(config, split, per_host, jax.process_count())
  localize_fn = localize_fn or make_localize_fn(config, model, mesh)
  keep = ("source_class", "boxes", "box_source", "id")
  outputs = {k: [] for k in keep + ("maps", "mask")}
  frames = []
  row0 = jax.process_index() * per_host
  for batch in data.dataset:
    inputs = sharding.host_to_global(
        {k: batch[k] for k in ("image", "waveform", "source_class")}, mesh)
    class_ids = inputs["source_class"]
    maps = localize_fn(variables, inputs["image"], inputs["waveform"], jax.numpy.maximum(class_ids, 0))
    outputs["maps"].append(np.asarray(maps)[row0:row0 + per_host])
    outputs["mask"].append(batch["mask"])
    for k in keep:
      outputs[k].append(batch[k])
    if sum(len(f) for f in frames) < config.eval.num_visualize:
      frames.append(batch["image_uint8"])
  result = {k: np.concatenate(v) for k, v in outputs.items()}
  valid = result.pop("mask") > 0
  result = {k: v[valid] for k, v in result.items()}
  result["image_uint8"] = np.concatenate(frames)[valid[:sum(len(f) for f in frames)]][:config.eval.num_visualize]
  logging.info("Predicted %d examples of %s on this host (%d of %d in the split).", valid.sum(), split,
               valid.sum(), data.num_examples)
  return result


def baseline_maps(kind: str, shape: tuple[int, ...], tau: float, seed: int = 0) -> np.ndarray:
  """Trivial maps at the model's map resolution, in logit units ([-1/tau, 1/tau]).

  center_prior: an isotropic Gaussian bump at the image centre (sigma = a quarter of the side);
  random: i.i.d. uniform values per map cell.
  """
  *lead, h, w = shape
  if kind == "center_prior":
    ys = (np.arange(h) + 0.5) / h - 0.5
    xs = (np.arange(w) + 0.5) / w - 0.5
    bump = np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * 0.25 ** 2))
    return np.broadcast_to((2 * bump - 1) / tau, shape).astype(np.float32)
  if kind == "random":
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0 / tau, 1.0 / tau, size=shape).astype(np.float32)
  raise ValueError(f"Unknown baseline {kind!r}; expected 'center_prior' or 'random'.")


def source_items(pred: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Flattens (example, source) pairs with a real source; returns (example idx, source idx, GT maps, nbox)."""
  example_idx, source_idx = np.nonzero(pred["source_class"] >= 0)
  gts, nbox = [], []
  for i, s in zip(example_idx, source_idx):
    boxes = pred["boxes"][i][pred["box_source"][i] == s]
    gts.append(gt_maps.boxes_to_gt_map(boxes, size=(GT_SIZE, GT_SIZE), combine="binarize"))
    nbox.append(len(boxes))
  gt = np.stack(gts) if gts else np.zeros((0, GT_SIZE, GT_SIZE), np.float32)
  return example_idx, source_idx, gt, np.asarray(nbox, np.int64)


def _gather(x: np.ndarray) -> np.ndarray:
  """Concatenates per-host arrays over processes (identity on one host)."""
  if jax.process_count() == 1:
    return x
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def score_split(config, pred: dict[str, np.ndarray]) -> tuple[dict[str, dict], dict[str, dict]]:
  """Scores the model and the baselines; returns ({method: summary}, {method: per-item values})."""
  example_idx, source_idx, gt, nbox = source_items(pred)
  tau = config.model.get("tau", 0.03)
  raw = {"model": pred["maps"][example_idx, source_idx]}
  if config.eval.baselines:
    raw["center_prior"] = baseline_maps("center_prior", raw["model"].shape, tau)
    raw["random"] = baseline_maps("random", raw["model"].shape, tau, seed=config.seed + jax.process_index())
  summaries, per_items = {}, {}
  for method, maps in raw.items():
    per_item, _ = localization.score_maps(maps, gt, nbox, protocol=config.eval.protocol, tau=tau)
    per_item = {k: _gather(np.asarray(v)) for k, v in per_item.items()}
    summaries[method] = localization.summarize(per_item, protocol=config.eval.protocol)
    per_items[method] = per_item
  return summaries, per_items


def evaluate_split(config, model, variables, mesh, workdir: str, step: int, split: str,
                   localize_fn=None) -> dict[str, Any]:
  pred = predict_split(config, model, variables, mesh, split, localize_fn)
  summaries, _ = score_split(config, pred)
  num_sources = np.sum(pred["source_class"] >= 0, axis=1)
  result = {
      "split": split, "step": int(step), "dataset": config.dataset.name, "model": config.model_name,
      "protocol": config.eval.protocol, "num_examples": int(_gather(np.asarray([len(num_sources)])).sum()),
      "num_items": int(_gather(np.asarray([int(num_sources.sum())])).sum()), "metrics": summaries,
  }
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{split}_{step}.json"), "w") as f:
      json.dump(result, f, indent=2, default=float)
    _write_png(config, pred, os.path.join(out_dir, f"{split}_{step}.png"))
  return result


def _write_png(config, pred, path: str) -> None:
  n = min(len(pred["image_uint8"]), config.eval.num_visualize)
  if n == 0:
    return
  maps = pred["maps"][:n]
  num_sources = maps.shape[1]
  post = postprocess.avgn_official(maps.reshape(-1, *maps.shape[2:]), tau=config.model.get("tau", 0.03),
                                   out_hw=(GT_SIZE, GT_SIZE))
  heat = np.asarray(post["pred"]).reshape(n, num_sources, GT_SIZE, GT_SIZE)
  infer = np.asarray(post["infer"]).reshape(n, num_sources, GT_SIZE, GT_SIZE)
  visualize.heatmap_grid(pred["image_uint8"][:n], heat, infer, pred["boxes"][:n], pred["box_source"][:n],
                         pred["source_class"][:n], path)


def evaluate_all(config, model, variables, mesh, workdir: str, step: int, writer=None) -> dict[str, Any]:
  """Evaluates every split in config.dataset.eval_splits; logs a table and writes scalars."""
  localize_fn = make_localize_fn(config, model, mesh)
  results = {}
  for split in config.dataset.eval_splits:
    results[split] = evaluate_split(config, model, variables, mesh, workdir, step, split, localize_fn)
    logging.info("Eval %s at step %d:\n%s", split, step, format_table(results[split]))
    if writer is not None:
      scalars = {f"eval/{split}/{k}": v for k, v in results[split]["metrics"]["model"].items()
                 if isinstance(v, (int, float, np.floating)) and k != "n_samples"}
      writer.write_scalars(step, scalars)
  return results


TABLE_KEYS = ("ciou_mean", "ciou_frac@0.3", "ciou_frac@0.5", "auc", "pixel_ap", "piap_official")


def format_table(result: dict[str, Any], keys=TABLE_KEYS) -> str:
  """A fixed-width text table: one row per method, one column per metric."""
  header = f"{'method':<14}" + "".join(f"{k:>15}" for k in keys)
  rows = [header, "-" * len(header)]
  for method, summary in result["metrics"].items():
    rows.append(f"{method:<14}" + "".join(f"{float(summary.get(k, float('nan'))):>15.4f}" for k in keys))
  return "\n".join(rows)


