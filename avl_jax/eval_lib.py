"""Evaluation shared by the training loop and the eval binary: predict maps, score them, write results.

For every eval split: the model's raw localization maps for each GT source (oracle classes, as the official
evaluation), the centre-prior and uniform-random baselines at the same map resolution, all scored by the same
post-processing and metric code (avl_jax/metrics). Each host predicts and scores its own shard of the split; the
per-item values are gathered, so process 0 writes results that count every (example, source) item once:

  {workdir}/eval/{split}_{step}.json   every metric of every method, the protocol, the step, the sample counts
  {workdir}/eval/{split}_{step}.csv    one row per (example, source) item, columns CSV_COLUMNS
  {workdir}/eval/{split}_{step}.png    frame, heat map, GT boxes and binarised region per source
  {workdir}/eval/{split}_{step}_predictions.npz   with save_predictions: the maps, in the schema of
                                       avl_jax/metrics/predictions.py

`score_predictions_file` scores such a file (ours or another method's) with the same code, without a model.
Files are written to a temporary name and renamed, so a killed evaluation never leaves a truncated result.
"""
import collections.abc
import csv
import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from avl_jax import audio
from avl_jax import models
from avl_jax import tvsl_eval
from avl_jax import tvsl_lib
from avl_jax import input_pipeline
from avl_jax import sharding
from avl_jax import visualize
from avl_jax.metrics import gt_maps
from avl_jax.metrics import localization
from avl_jax.metrics import postprocess
from avl_jax.metrics import predictions

GT_SIZE = 224  # The official evaluation rasterises and scores on 224 x 224.
METHODS = ("model", "center_prior", "random")
BASELINES = METHODS[1:]
# Per-item CSV: `ap` is the true pixel AP (summary key `pixel_ap`; empty GT -> nan) under both protocols, and
# `piap_official` AVGN's swapped-argument "piap"; `area` is the GT area as a fraction of the GT map (224 x 224).
# Each baseline adds `{method}_ciou` and `{method}_ap`.
CSV_COLUMNS = ("id", "source", "class", "nbox", "area", "ciou", "ap", "piap_official", "conf")


def is_text_model(config: ml_collections.ConfigDict) -> bool:
  return config.model_name in models.TEXT_MODELS


def is_predicted(config: ml_collections.ConfigDict) -> bool:
  """T-VSL with class_source='predicted': maps come from the model's own top-K classes, not the labels."""
  return is_text_model(config) and config.model.get("class_source", "oracle") == "predicted"


def make_localize_fn(config: ml_collections.ConfigDict, model, mesh):
  """Jitted (variables, image, waveform, class_ids) -> raw maps [B, S, h, w], replicated on every host.

  T-VSL models read the text bank and the label -> bank-row table from variables['consts'] (`tvsl_lib`); their
  `image` may be the [own | partner] canvas, and class_ids are dataset labels (-1 = padding).
  """

  def localize(variables, image, waveform, class_ids):
    if is_text_model(config):
      consts = variables["consts"]
      rows = tvsl_lib.rows_of(consts["class_rows"], class_ids)
      model_variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
      if is_predicted(config):  # The maps of stage 1's top-K classes, and which classes those are.
        maps, classes = model.apply(model_variables, image, waveform, consts["text_bank"], rows, train=False,
                                    return_classes=True, method=model.localize)
        return {"maps": maps, "pred_rows": classes["class_rows"], "pred_valid": classes["valid"]}
      return model.apply(model_variables, image, waveform, consts["text_bank"], rows, train=False,
                         method=model.localize)
    if config.model_name in models.WAVEFORM_INPUT:
      spec = waveform
    else:
      spec = audio.avgn_log_spectrogram(waveform, config.dataset.sample_rate)
    return model.apply(variables, image, spec, jax.numpy.maximum(class_ids, 0), train=False,
                       method=model.localize)

  data = sharding.data_sharding(mesh)
  return jax.jit(localize, in_shardings=(sharding.replicated(mesh), data, data, data),
                 out_shardings=sharding.replicated(mesh))


def predict_split(config, model, variables, mesh, split: str, localize_fn=None) -> dict[str, np.ndarray]:
  """Runs the model over this host's shard of `split`; returns host arrays of the valid examples.

  With per-source frames (real duet/multi test sets store each source's own frame as `source_image`), source s
  is localized on its own frame with the shared mixture audio, as the official `validate_multi` does.

  Returns: maps [n, S, h, w] float32 raw logits, source_class [n, S], boxes [n, NB, 4], box_source [n, NB],
  ids [n, 64] uint8, image_uint8 [min(n, num_visualize), H, W, 3], `gt_format` (str, '' for synthetic_av), and
  when the dataset has them boxes_raw [n, NB, 4] float64, gt_mask [n, S, 224, 224], has_gt_mask [n, S].
  """
  per_host = sharding.per_host_batch_size(config.eval_batch_size, mesh)
  data = input_pipeline.create_eval_dataset(config, split, per_host, jax.process_count())
  localize_fn = localize_fn or make_localize_fn(config, model, mesh)
  keep = ["source_class", "boxes", "box_source", "id"]
  outputs = None
  frames = []
  text_model = is_text_model(config)
  canvas = text_model and data.partner_frames
  row0 = jax.process_index() * per_host
  for batch in data.dataset:
    if outputs is None:
      keep += [k for k in ("boxes_raw", "gt_mask", "has_gt_mask", "partner_id") if k in batch]
      outputs = {k: [] for k in keep + ["maps", "mask"]}
    inputs = sharding.host_to_global(
        {k: batch[k] for k in ("image", "waveform", "source_class")}, mesh)
    class_ids = inputs["source_class"]
    if text_model:
      # T-VSL: one call maps every source. Partner-frame test sets (vggsound/duet, vgginstruments/multi) are
      # evaluated on the [own | partner] canvas as the official validate_multi; otherwise on the own frame.
      image = inputs["image"]
      if canvas:
        image = sharding.host_to_global({"image": np.concatenate(
            [batch["source_image"][:, 0], batch["source_image"][:, 1]], axis=2)}, mesh)["image"]
      out = localize_fn(variables, image, inputs["waveform"], class_ids)
      if isinstance(out, dict):
        for key in ("pred_rows", "pred_valid"):
          outputs.setdefault(key, []).append(np.asarray(out[key])[row0:row0 + per_host])
        out = out["maps"]
      maps = np.asarray(out)
    elif "source_image" in batch:
      num_sources = batch["source_image"].shape[1]
      per_source = []
      for s in range(num_sources):
        image_s = sharding.host_to_global({"image": batch["source_image"][:, s]}, mesh)["image"]
        per_source.append(np.asarray(localize_fn(variables, image_s, inputs["waveform"], class_ids))[:, s])
      maps = np.stack(per_source, axis=1)
    else:
      maps = np.asarray(localize_fn(variables, inputs["image"], inputs["waveform"], class_ids))
    outputs["maps"].append(maps[row0:row0 + per_host])
    outputs["mask"].append(batch["mask"])
    for k in keep:
      outputs[k].append(batch[k])
    if sum(len(f) for f in frames) < config.eval.num_visualize:
      frame = batch["image_uint8"]
      if canvas:
        partner = input_pipeline.denormalize_image(batch["source_image"][:, 1], config.dataset.image_norm)
        frame = np.concatenate([frame, partner], axis=2)
      frames.append(frame)
  if outputs is None:
    raise input_pipeline.DataError(f"Split {split!r} of {config.dataset.name!r} produced no batch.")
  result = {k: np.concatenate(v) for k, v in outputs.items()}
  valid = result.pop("mask") > 0
  result = {k: v[valid] for k, v in result.items()}
  if "pred_rows" in result:  # predicted classes: also the GT classes' bank rows, to report class recall
    table = variables["consts"]["class_rows"]
    table = np.asarray(table.addressable_data(0) if hasattr(table, "addressable_data") else table)
    result["gt_rows"] = np.where(result["source_class"] >= 0, table[np.maximum(result["source_class"], 0)], -1)
  bad = ~np.isfinite(result["maps"]).all(axis=tuple(range(1, result["maps"].ndim)))
  if bad.any():
    names = input_pipeline.decode_ids(result["id"][bad][:5])
    raise FloatingPointError(
        f"The model produced non-finite heat maps for {int(bad.sum())} of {len(bad)} examples of {split!r} "
        f"(first: {names}). The weights are broken (diverged training, or converted weights with invalid "
        "BatchNorm statistics); nothing was scored.")
  result["image_uint8"] = np.concatenate(frames)[valid[:sum(len(f) for f in frames)]][:config.eval.num_visualize]
  result["gt_format"] = getattr(data, "gt_format", "") or ""
  result["canvas"] = bool(canvas)
  logging.info("Predicted %d examples of %s on this host (%d of %d in the split).", valid.sum(), split,
               valid.sum(), data.num_examples)
  return result


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
  size = (GT_SIZE, GT_SIZE)
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


def avgn_duet_gt_bug(pred: dict[str, Any]) -> tuple[dict[str, Any], int]:
  """The official AVGN vggsound_duet test GT (spec/metrics.md §2, defect i): source 0 is scored against the GT of
  the *partner* and source 1 against the GT of the partner's partner (the partner's own csv row).

  Returns a copy of `pred` whose boxes / boxes_raw / box_source are replaced accordingly, and how many items have
  no such GT (the partner's partner is not an example of the split, e.g. skipped at preparation: empty GT).
  The partners are looked up over every host's examples.
  """
  ids = input_pipeline.decode_ids(sharding.gather_rows(pred["id"]))
  all_raw, all_boxes, all_source = (sharding.gather_rows(pred[k]) for k in ("boxes_raw", "boxes", "box_source"))
  row_of = {example_id: r for r, example_id in enumerate(ids)}
  partners = input_pipeline.decode_ids(pred["partner_id"])
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
  gt = np.stack(gts) if gts else np.zeros((0, GT_SIZE, GT_SIZE), np.float32)
  return example_idx, source_idx, gt, np.asarray(nbox, np.int64)


def score_items(raw_maps: np.ndarray, gt: np.ndarray, nbox: np.ndarray, *, protocol: str, tau: float,
                map_range: str = "logits", baselines: bool = True, seed: int = 0,
                multihost: bool = True, binarize: str = "median",
                fixed_threshold: float = postprocess.TVSL_THRESHOLD) -> tuple[dict[str, dict], dict[str, dict]]:
  """Scores maps and (optionally) the baselines at the same resolution with the same code.

  Args:
    raw_maps: [M, h, w] this host's raw maps, one per item.
    gt: [M, H, W] GT maps.   nbox: [M] boxes per item.
    protocol: 'official' | 'standard'.
    tau: temperature of 'logits' maps.
    map_range: 'logits' | 'unit' | 'minmax' (postprocess.map_scores).
    baselines: also score the centre-prior and random maps.
    seed: seed of the random baseline (each host adds its process index).
    multihost: gather the per-item values over hosts before summarising (False: the items are global).
    binarize: 'median' (AVGN) | 'fixed' (T-VSL: score >= fixed_threshold).

  Returns:
    ({method: summary}, {method: per-item values [M_total]}), methods in METHODS order.
  """
  raw = {"model": raw_maps}
  if baselines:
    for kind in BASELINES:
      raw[kind] = baseline_maps(kind, raw_maps.shape, tau, seed + jax.process_index(), map_range)
  summaries, per_items = {}, {}
  for method, maps in raw.items():
    per_item, _ = localization.score_maps(maps, gt, nbox, protocol=protocol, tau=tau, map_range=map_range,
                                          binarize=binarize, fixed_threshold=fixed_threshold)
    if multihost:
      per_item = {k: sharding.gather_rows(np.asarray(v)) for k, v in per_item.items()}
    summaries[method] = localization.summarize(per_item, protocol=protocol, binarize=binarize)
    per_items[method] = per_item
  return summaries, per_items


def item_table(ids: list[str], source: np.ndarray, class_id: np.ndarray, per_items: dict[str, dict[str, np.ndarray]],
               num_pixels: int = GT_SIZE * GT_SIZE) -> dict[str, list]:
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


def _atomic_write(path: str, write: collections.abc.Callable[[str], None]) -> None:
  """write(tmp) then rename over `path` (same directory, same extension, so format-by-name writers work)."""
  directory, name = os.path.split(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".tmp-{os.getpid()}-{name}")
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, value: Any) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(value, f, indent=2, default=float)
  _atomic_write(path, write)


def write_csv(path: str, table: dict[str, list]) -> None:
  """One row per item; floats with 6 significant digits (nan for undefined values)."""
  def cell(v):
    return f"{v:.6g}" if isinstance(v, float) else v

  def write(tmp):
    with open(tmp, "w", newline="") as f:
      out = csv.writer(f)
      out.writerow(table)
      for row in zip(*table.values()):
        out.writerow([cell(v) for v in row])
  _atomic_write(path, write)


def write_heatmaps(path: str, frames: np.ndarray, raw_maps: np.ndarray, boxes: np.ndarray, box_source: np.ndarray,
                   source_class: np.ndarray, tau: float, class_names: list[str] | None = None) -> None:
  """PNG grid: per example the frame with GT boxes, then per source heat map, GT box, binarised region.

  Args:
    path: the .png file.
    frames: [n, Hf, Wf, 3] uint8.
    raw_maps: [n, S, h, w] raw maps (finite where source_class >= 0).
    boxes: [n, NB, 4] normalised xyxy, -1 padding; box_source: [n, NB] source slot per box (-1 padding).
    source_class: [n, S] class per source (-1: no source, not drawn).
    tau: temperature (the picture does not depend on it: it shows the min-max map).
    class_names: labels indexed by class (default 'class {c}').
  """
  n, num_sources = raw_maps.shape[:2]
  if n == 0:
    return
  maps = np.where((source_class >= 0)[..., None, None], raw_maps, 0).astype(np.float32)
  post = postprocess.avgn_official(maps.reshape(-1, *maps.shape[2:]), tau=tau, out_hw=(GT_SIZE, GT_SIZE))
  heat = np.asarray(post["pred"]).reshape(n, num_sources, GT_SIZE, GT_SIZE)
  infer = np.asarray(post["infer"]).reshape(n, num_sources, GT_SIZE, GT_SIZE)
  _atomic_write(path, lambda tmp: visualize.heatmap_grid(frames[:n], heat, infer, boxes, box_source, source_class,
                                                         tmp, class_names=class_names, size=GT_SIZE))


def prediction_arrays(pred: dict[str, np.ndarray], tau: float, step: int | None = None) -> dict[str, Any]:
  """`predict_split`'s arrays (all hosts) -> the predictions-file schema (maps stay raw logits, boxes per source).

  Returns:
    keyword arguments of `predictions.save`: maps [N, S, h, w], boxes [N, S, NB, 4] (-1 padding, rows kept
    where they were), num_sources, class_ids, ids, map_range 'logits', tau, step.
  """
  source_class = pred["source_class"]
  n, num_sources = source_class.shape
  present = source_class >= 0
  if np.any(present[:, 1:] & ~present[:, :-1]):
    raise ValueError("Sources must fill the first slots of source_class (padding -1 at the end).")
  boxes = np.full((n, num_sources, pred["boxes"].shape[1], 4), -1.0, np.float32)
  for s in range(num_sources):
    rows = pred["box_source"] == s
    boxes[:, s][rows] = pred["boxes"][rows]
  return dict(maps=pred["maps"].astype(np.float32), boxes=boxes, box_format="xyxy", box_combine="binarize",
              num_sources=present.sum(axis=1), class_ids=source_class, ids=input_pipeline.decode_ids(pred["id"]),
              map_range="logits", tau=np.float64(tau), step=None if step is None else int(step))


def evaluate_split(config, model, variables, mesh, workdir: str, step: int, split: str, localize_fn=None, *,
                   save_predictions: bool = False) -> dict[str, Any]:
  """Predicts, scores and (process 0) writes the JSON, CSV and PNG of one split; returns the JSON's content."""
  if save_predictions and is_text_model(config):
    raise ValueError("--save_predictions is not available for T-VSL models yet: the predictions-file schema has "
                     "no canvas placement. The per-item CSV and JSON are written as usual.")
  pred = predict_split(config, model, variables, mesh, split, localize_fn)
  tau = config.model.get("tau", 0.03)
  extra = {}
  if config.eval.get("avgn_duet_gt_bug", False):
    if pred.get("gt_format") != "vggsound_duet" or config.eval.protocol != "official":
      raise ValueError("config.eval.avgn_duet_gt_bug reproduces the official AVGN vggsound_duet test GT: it needs "
                       f"a vggsound/duet dataset and protocol='official' (got gt_format={pred.get('gt_format')!r}, "
                       f"protocol={config.eval.protocol!r}).")
    pred, extra["avgn_duet_gt_bug_missing"] = avgn_duet_gt_bug(pred)
    extra["avgn_duet_gt_bug_missing"] = int(sharding.gather_rows(np.asarray([extra["avgn_duet_gt_bug_missing"]])).sum())
  example_idx, source_idx, gt, nbox = source_items(pred, config.eval.protocol)
  if is_text_model(config):
    raw_items, gt, scoring, predicted = tvsl_eval.score_inputs(config, pred, example_idx, source_idx, gt, nbox)
    extra.update(predicted)
  else:
    raw_items, scoring = pred["maps"][example_idx, source_idx], dict(map_range="logits")
  summaries, per_items = score_items(raw_items, gt, nbox, protocol=config.eval.protocol, tau=tau,
                                     baselines=config.eval.baselines, seed=config.seed, **scoring)
  item_ids = input_pipeline.decode_ids(sharding.gather_rows(pred["id"][example_idx]))
  item_source = sharding.gather_rows(source_idx.astype(np.int64))
  item_class = sharding.gather_rows(pred["source_class"][example_idx, source_idx].astype(np.int64))
  result = {
      "split": split, "step": int(step), "dataset": config.dataset.name, "model": config.model_name,
      "protocol": config.eval.protocol, "tau": float(tau),
      "map_range": ("logits" if not is_text_model(config) else
                    "tvsl_inverted_minmax" if config.model.get("invert_map", True) else "tvsl_minmax"),
      "canvas": bool(pred.get("canvas", False)),
      "num_examples": int(sharding.gather_rows(np.asarray([len(pred["source_class"])])).sum()),
      "num_items": len(item_source), "metrics": summaries, **extra,
  }
  export = None
  if save_predictions:  # every host takes part in the gathers; process 0 writes
    export = {k: sharding.gather_rows(pred[k]) for k in ("maps", "boxes", "box_source", "source_class", "id")}
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, "eval")
    stem = os.path.join(out_dir, f"{split}_{step}")
    write_json(f"{stem}.json", result)
    write_csv(f"{stem}.csv", item_table(item_ids, item_source, item_class, per_items))
    n = min(len(pred["image_uint8"]), config.eval.num_visualize)
    if is_text_model(config):
      if n:
        _atomic_write(f"{stem}.png", lambda tmp: tvsl_eval.heatmap_grid(tmp, config, pred, n))
    else:
      write_heatmaps(f"{stem}.png", pred["image_uint8"][:n], pred["maps"][:n], pred["boxes"][:n],
                     pred["box_source"][:n], pred["source_class"][:n], tau)
    if export is not None:
      arrays = prediction_arrays(export, tau, step)
      _atomic_write(f"{stem}_predictions.npz", lambda tmp: predictions.save(tmp, **arrays))
  return result


def evaluate_all(config, model, variables, mesh, workdir: str, step: int, writer=None, *,
                 splits: list[str] | None = None, localize_fn=None,
                 save_predictions: bool = False) -> dict[str, Any]:
  """Evaluates `splits` (default config.dataset.eval_splits); logs a table and writes `eval/{split}/*` scalars.

  `localize_fn` (from make_localize_fn) can be passed in so that many checkpoints share one compilation.
  """
  localize_fn = localize_fn or make_localize_fn(config, model, mesh)
  results = {}
  for split in (config.dataset.eval_splits if splits is None else splits):
    results[split] = evaluate_split(config, model, variables, mesh, workdir, step, split, localize_fn,
                                    save_predictions=save_predictions)
    logging.info("Eval %s at step %d:\n%s", split, step, format_table(results[split]))
    if writer is not None:
      scalars = {f"eval/{split}/{k}": v for k, v in results[split]["metrics"]["model"].items()
                 if isinstance(v, (int, float, np.floating)) and k != "n_samples"}
      writer.write_scalars(step, scalars)
  return results


def score_predictions_file(path: str, output: str | None = None, *, protocol: str = "official",
                           map_range: str | None = None, tau: float | None = None, baselines: bool = True,
                           num_visualize: int = 16, seed: int = 0) -> dict[str, Any]:
  """Scores a predictions file (avl_jax/metrics/predictions.py schema) like a checkpoint's split.

  Writes `output` (default: the file with .json), the per-item CSV beside it (.csv) and, when the file has
  `frames`, the PNG (.png). Runs on one process (the items are not sharded).

  Args:
    path: the .npz predictions file.
    output: result JSON path.
    protocol: 'official' | 'standard'.
    map_range, tau: override the file's (predictions.load).
    baselines: also score the centre-prior and random maps at the maps' resolution.
    num_visualize: examples drawn in the PNG.
    seed: seed of the random baseline.

  Returns:
    the JSON's content.

  Raises:
    predictions.PredictionsError: the file violates the schema.
  """
  items = predictions.load(path, protocol, map_range, tau)
  summaries, per_items = score_items(items.raw_maps, items.gt, items.nbox, protocol=protocol, tau=items.tau,
                                     map_range=items.map_range, baselines=baselines, seed=seed, multihost=False)
  result = {
      "predictions": os.path.abspath(path), "step": items.step, "protocol": protocol,
      "map_range": items.map_range, "tau": items.tau, "num_examples": items.num_examples,
      "num_items": len(items.nbox), "metrics": summaries,
  }
  stem = os.path.splitext(output or path)[0]
  if jax.process_index() == 0:
    write_json(output or f"{stem}.json", result)
    item_ids = [items.ids[i] for i in items.example]
    write_csv(f"{stem}.csv", item_table(item_ids, items.source, items.class_id, per_items, items.gt[0].size))
    if items.frames is not None and num_visualize > 0:
      _write_file_heatmaps(f"{stem}.png", items, num_visualize)
  return result


def _write_file_heatmaps(path: str, items: predictions.Items, num_visualize: int) -> None:
  """The PNG of a predictions file: its used slots, boxes per source, classes (or slot names)."""
  n = min(items.num_examples, num_visualize)
  num_slots = items.boxes_xyxy.shape[1]
  raw = np.zeros((n, num_slots, *items.raw_maps.shape[1:]), np.float32)
  first = items.example < n
  raw[items.example[first], items.source[first]] = items.raw_maps[first]
  used = np.arange(num_slots)[None, :] < items.num_sources[:n, None]
  class_names = None
  source_class = np.full((n, num_slots), -1, np.int64)
  source_class[items.example[first], items.source[first]] = items.class_id[first]
  if np.any(source_class[used] < 0):  # no class ids: label the panels by slot
    source_class = np.where(used, np.arange(num_slots)[None, :], -1)
    class_names = [f"source {s}" for s in range(num_slots)]
  boxes = items.boxes_xyxy[:n]
  box_source = np.where(np.all(boxes == -1, axis=-1), -1, np.arange(num_slots)[None, :, None])
  write_heatmaps(path, items.frames[:n], raw, boxes.reshape(n, -1, 4), box_source.reshape(n, -1), source_class,
                 items.tau, class_names)


TABLE_KEYS = ("ciou_mean", "ciou_frac@0.3", "ciou_frac@0.5", "auc", "pixel_ap", "piap_official")


def format_table(result: dict[str, Any], keys=TABLE_KEYS) -> str:
  """A fixed-width text table: one row per method, one column per metric."""
  header = f"{'method':<14}" + "".join(f"{k:>15}" for k in keys)
  rows = [header, "-" * len(header)]
  for method, summary in result["metrics"].items():
    rows.append(f"{method:<14}" + "".join(f"{float(summary.get(k, float('nan'))):>15.4f}" for k in keys))
  return "\n".join(rows)
