"""Evaluation shared by the training loop and the eval binary: predict maps, score them, write results.

For every eval split: the model's raw localization maps for each GT source (oracle classes, as the official
evaluation, unless the family's config asks for predicted ones), the centre-prior and uniform-random baselines
at the same map resolution, all scored by the same post-processing and metric code (avl_jax/metrics). What
differs between model families (the frames the model sees, the constants it reads, how maps are scored and
drawn) comes from `avl_jax.families`. Each host predicts and scores its own shard of the split; the per-item
values are gathered, so process 0 writes results that count every (example, source) item once:

  {workdir}/eval/{split}_{step}.json   every metric of every method (model, ablations, baselines), the
                                       protocol, the step, the sample counts, the audio classifier's mAP
                                       (class_source='predicted': {split}_{step}_predicted.*)
  {workdir}/eval/{split}_{step}.csv    one row per (example, source) item, columns writers.CSV_COLUMNS
  {workdir}/eval/{split}_{step}.png    frame, heat map, GT boxes and binarised region per source
  {workdir}/eval/{split}_{step}_predictions.npz   with save_predictions: the maps, in the schema of
                                       avl_jax/metrics/predictions.py

`score_predictions_file` scores such a file (ours or another method's) with the same code, without a model.
"""
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import PIL.Image

from avl_jax import families
from avl_jax import input_pipeline
from avl_jax import sharding
from avl_jax.evaluation import gt as gt_lib
from avl_jax.evaluation import scoring
from avl_jax.evaluation import writers
from avl_jax.metrics import predictions
from avl_jax.pipeline import data_source


def _key(prefix: str, key: str) -> str:
  return f"{prefix}:{key}" if prefix else key


def shuffled_audio(waveform: np.ndarray, valid: np.ndarray, last: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
  """Each valid example gets the waveform of the next valid example of its batch (a cyclic shift, so no
  example keeps its own); a batch with a single valid example takes the previous batch's first waveform.

  Args:
    waveform: [b, N] this host's batch.   valid: [b] bool, real (not padding) rows.
    last: a waveform [N] of the previous batch (None for the first batch).

  Returns:
    (shuffled [b, N], the waveform to hand to the next batch).
  """
  rows = np.flatnonzero(valid)
  shuffled = waveform.copy()
  if len(rows) > 1:
    shuffled[rows] = waveform[np.roll(rows, -1)]
  elif len(rows) == 1 and last is not None:
    shuffled[rows[0]] = last
  return shuffled, (waveform[rows[0]].copy() if len(rows) else last)


def swapped_classes(source_class: np.ndarray, num_classes: int) -> np.ndarray:
  """The `swapped_classes` ablation's class ids: every source gets a class that is not its own.

  The classes of an example's sources shift by one slot (source s takes source s+1's, the last the first's); a
  source that would keep its own class (the only source of its example, or two sources of one class) takes the
  next class id, (c + 1) mod num_classes. Padding (-1) stays.

  Args:
    source_class: [b, S] dataset labels, -1 padding (sources fill the first slots).
    num_classes: the dataset's number of classes.

  Returns:
    [b, S] int, the same dtype.
  """
  swapped = source_class.copy()
  for row in range(len(source_class)):
    slots = np.flatnonzero(source_class[row] >= 0)
    swapped[row, slots] = source_class[row, np.roll(slots, -1)]
  same = (swapped == source_class) & (source_class >= 0)
  swapped[same] = (source_class[same] + 1) % num_classes
  return swapped


def make_localize_fn(config: ml_collections.ConfigDict, model, mesh):
  """Jitted (variables, consts, image, waveform, class_ids) -> {'maps': raw maps [B, S, h, w], ...}, replicated.

  `consts` are the family's constant inputs (`train.make_consts`); class_ids are dataset labels (-1 padding).
  """
  family = families.of(config)

  def localize(variables, consts, image, waveform, class_ids):
    return family.localize(config, model, variables, consts, image, waveform, class_ids)

  data, replicated = sharding.data_sharding(mesh), sharding.replicated(mesh)
  # Variables keep the sharding they come with (replicated, or FSDP-sharded by config.sharding_rules).
  return jax.jit(localize, in_shardings=(None, replicated, data, data, data), out_shardings=replicated)


def predict_split(config, model, variables, mesh, split: str, localize_fn=None, *,
                  consts: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
  """Runs the model over this host's shard of `split`; returns host arrays of the valid examples.

  The family decides which frames the model sees (`Family.eval_views`): e.g. each source on its own frame
  with the shared mixture audio where the test set stores per-source frames, or an [own | partner] canvas.

  Returns: maps [n, S, h, w] float32 raw maps, source_class [n, S], boxes [n, NB, 4], box_source [n, NB],
  ids [n, 64] uint8, image_uint8 [min(n, num_visualize), H, W', 3], `gt_format` (str, '' for synthetic_av),
  `canvas` (bool), when the dataset has them boxes_raw [n, NB, 4] float64, gt_mask [n, S, 224, 224],
  has_gt_mask [n, S], partner_id, and any extra per-example outputs of the family's `localize`; for each
  ablation that ran (`scoring.ABLATIONS`: config.eval.audio_ablations, and config.eval.class_ablation where the
  family maps the classes it is given) {name: {'maps': ..., the audio ablations' extra outputs}}.
  """
  family = families.of(config)
  consts = {} if consts is None else consts
  per_host = sharding.per_host_batch_size(config.eval_batch_size, mesh)
  data = input_pipeline.create_eval_dataset(config, split, per_host, jax.process_count())
  localize_fn = localize_fn or make_localize_fn(config, model, mesh)
  keep = ["source_class", "boxes", "box_source", "id"]
  outputs = None
  frames = []
  canvas = False
  audio_ablations = bool(config.eval.audio_ablations)
  class_ablation = bool(config.eval.class_ablation) and family.maps_given_classes(config)
  last_audio = None
  row0 = jax.process_index() * per_host
  for batch in data.dataset:
    if outputs is None:
      keep += [k for k in ("boxes_raw", "gt_mask", "has_gt_mask", "partner_id") if k in batch]
      outputs = {k: [] for k in keep + ["mask"]}
    views = family.eval_views(config, batch, data.partner_frames)
    canvas = views.canvas
    images = [(sharding.host_to_global({"image": image}, mesh)["image"], source) for image, source in views.images]
    # The model's inputs ({prefix: (waveform, class ids)}): as given, then each ablation ('' = as given).
    passes = {"": (batch["waveform"], batch["source_class"])}
    if audio_ablations:
      passes["silent_audio"] = (np.zeros_like(batch["waveform"]), batch["source_class"])
      shuffled, last_audio = shuffled_audio(batch["waveform"], batch["mask"] > 0, last_audio)
      passes["shuffled_audio"] = (shuffled, batch["source_class"])
    if class_ablation:
      passes["swapped_classes"] = (batch["waveform"], swapped_classes(batch["source_class"], config.dataset.num_classes))
    for prefix, (waveform, class_ids) in passes.items():
      inputs = sharding.host_to_global({"waveform": waveform, "source_class": class_ids}, mesh)
      maps = None
      for view, (image, source) in enumerate(images):
        out = localize_fn(variables, consts, image, inputs["waveform"], inputs["source_class"])
        view_maps = np.asarray(out["maps"])[row0:row0 + per_host]
        if maps is None:
          maps = view_maps.copy()
        if source is not None:
          maps[:, source] = view_maps[:, source]
        if view == 0 and prefix not in scoring.CLASS_ABLATIONS:  # the class scores etc. do not see the classes
          for key in sorted(set(out) - {"maps"}):
            outputs.setdefault(_key(prefix, key), []).append(np.asarray(out[key])[row0:row0 + per_host])
      outputs.setdefault(_key(prefix, "maps"), []).append(maps)
    outputs["mask"].append(batch["mask"])
    for k in keep:
      outputs[k].append(batch[k])
    if sum(len(f) for f in frames) < config.eval.num_visualize:
      frames.append(views.frames)
  if outputs is None:
    raise data_source.DataError(f"Split {split!r} of {config.dataset.name!r} produced no batch.")
  result = {k: np.concatenate(v) for k, v in outputs.items()}
  valid = result.pop("mask") > 0
  result = {k: v[valid] for k, v in result.items()}
  for name in scoring.ABLATIONS:  # {'silent_audio': {'maps': ..., ...}, ...} for each ablation that ran
    if _key(name, "maps") in result:
      result[name] = {k.split(":", 1)[1]: result.pop(k) for k in list(result) if k.startswith(name + ":")}
  bad = ~np.isfinite(result["maps"]).all(axis=tuple(range(1, result["maps"].ndim)))
  if bad.any():
    names = data_source.decode_ids(result["id"][bad][:5])
    raise FloatingPointError(
        f"The model produced non-finite heat maps for {int(bad.sum())} of {len(bad)} examples of {split!r} "
        f"(first: {names}). The weights are broken (diverged training, or converted weights with invalid "
        "BatchNorm statistics); nothing was scored.")
  if frames:
    result["image_uint8"] = np.concatenate(frames)[valid[:sum(len(f) for f in frames)]][:config.eval.num_visualize]
  else:  # config.eval.num_visualize = 0: nothing is drawn
    result["image_uint8"] = np.zeros((0, 0, 0, 3), np.uint8)
  result["gt_format"] = getattr(data, "gt_format", "") or ""
  result["canvas"] = bool(canvas)
  logging.info("Predicted %d examples of %s on this host (%d of %d in the split).", valid.sum(), split,
               valid.sum(), data.num_examples)
  return result


def _class_suffix(result: dict[str, Any]) -> str:
  """'' for oracle classes (official), else '_{class_source}': such results sit beside the oracle ones."""
  source = result.get("class_source", "oracle")
  return "" if source == "oracle" else f"_{source}"


def output_dir(workdir: str, output: str | None = None) -> str:
  """Where a workdir's evaluation results go: `output` if given (evaluate --output_dir), else {workdir}/eval."""
  return output or os.path.join(workdir, "eval")


def result_stem(workdir: str, result: dict[str, Any], output: str | None = None) -> str:
  """{output_dir}/{split}_{step}, with `_class_suffix` (e.g. test_duet_800_predicted)."""
  return os.path.join(output_dir(workdir, output), f"{result['split']}_{result['step']}{_class_suffix(result)}")


def evaluate_split(config, model, variables, mesh, workdir: str, step: int, split: str, localize_fn=None, *,
                   consts: dict[str, Any] | None = None, save_predictions: bool = False,
                   output: str | None = None) -> dict[str, Any]:
  """Predicts, scores and (process 0) writes the JSON, CSV and PNG of one split; returns the JSON's content.

  Files go to `output_dir(workdir, output)` ({workdir}/eval by default).
  """
  family = families.of(config)
  if save_predictions and not family.supports_prediction_files:
    raise ValueError(f"--save_predictions is not available for {config.model_name} yet: the predictions-file "
                     "schema cannot hold its maps. The per-item CSV and JSON are written as usual.")
  pred = predict_split(config, model, variables, mesh, split, localize_fn, consts=consts)
  pred, extra = gt_lib.apply_rules(config, pred)
  example_idx, source_idx, gt, nbox = gt_lib.source_items(pred, config.eval.protocol)
  inputs = family.scoring_inputs(config, pred, example_idx, source_idx, gt, nbox)
  extra.update(inputs.extra)
  ablations = {}
  for name in scoring.ABLATIONS:
    if name in pred:  # the same scoring inputs, from the maps (and predicted classes) of the altered audio
      altered = family.scoring_inputs(config, {**pred, **pred[name]}, example_idx, source_idx, gt.copy(), nbox)
      ablations[name] = altered.raw_maps
      for key, value in altered.extra.items():
        extra[f"{name}/{key}"] = value
      if "class_scores" in pred[name]:
        extra[f"{name}/audio_classification"] = scoring.audio_classification(
            pred[name]["class_scores"], pred["source_class"])
  summaries, per_items = scoring.score_items(
      inputs.raw_maps, inputs.gt, nbox, protocol=config.eval.protocol, tau=inputs.tau, map_range=inputs.map_range,
      baselines=config.eval.baselines, seed=config.seed, binarize=inputs.binarize,
      fixed_threshold=inputs.threshold, ablations=ablations)
  item_ids = data_source.decode_ids(sharding.gather_rows(pred["id"][example_idx]))
  item_source = sharding.gather_rows(source_idx.astype(np.int64))
  item_class = sharding.gather_rows(pred["source_class"][example_idx, source_idx].astype(np.int64))
  result = {
      "split": split, "step": int(step), "dataset": config.dataset.name, "model": config.model_name,
      "protocol": config.eval.protocol, **family.result_fields(config),
      "canvas": bool(pred.get("canvas", False)),
      "num_examples": int(sharding.gather_rows(np.asarray([len(pred["source_class"])])).sum()),
      "num_items": len(item_source), "metrics": summaries, **extra,
  }
  if "class_scores" in pred:  # the model's audio classifier on the same examples
    result["audio_classification"] = scoring.audio_classification(pred["class_scores"], pred["source_class"])
  export = None
  if save_predictions:  # every host takes part in the gathers; process 0 writes
    export = {k: sharding.gather_rows(pred[k]) for k in ("maps", "boxes", "box_source", "source_class", "id")}
  if jax.process_index() == 0:
    stem = result_stem(workdir, result, output)
    writers.write_json(f"{stem}.json", result)
    writers.write_csv(f"{stem}.csv", scoring.item_table(item_ids, item_source, item_class, per_items))
    n = min(len(pred["image_uint8"]), config.eval.num_visualize)
    if n:
      writers.atomic_write(f"{stem}.png", lambda tmp: family.draw(tmp, config, pred, n))
    if export is not None:
      arrays = writers.prediction_arrays(export, result["tau"], step)
      writers.atomic_write(f"{stem}_predictions.npz", lambda tmp: predictions.save(tmp, **arrays))
  return result


def evaluate_all(config, model, variables, mesh, workdir: str, step: int, writer=None, *,
                 consts: dict[str, Any] | None = None, splits: list[str] | None = None, localize_fn=None,
                 save_predictions: bool = False, output: str | None = None, log_tables: bool = True) -> dict[str, Any]:
  """Evaluates `splits` (default config.dataset.eval_splits); logs a table and writes `eval/{split}/*` scalars.

  `log_tables=False` logs one line per split instead of the table (the evaluate binary prints the tables).

  `localize_fn` (from make_localize_fn) can be passed in so that many checkpoints share one compilation.
  """
  localize_fn = localize_fn or make_localize_fn(config, model, mesh)
  results = {}
  for split in (config.dataset.eval_splits if splits is None else splits):
    results[split] = evaluate_split(config, model, variables, mesh, workdir, step, split, localize_fn,
                                    consts=consts, save_predictions=save_predictions, output=output)
    if log_tables:
      logging.info("Eval:\n%s", writers.format_result(results[split]))
    else:
      logging.info("Evaluated %s at step %d: %s.", split, step, result_stem(workdir, results[split], output) + ".json")
    if writer is not None:
      tag = split + _class_suffix(results[split])
      scalars = {f"eval/{tag}/{k}": v for k, v in results[split]["metrics"]["model"].items()
                 if isinstance(v, (int, float, np.floating)) and k != "n_samples"}
      for method, summary in results[split]["metrics"].items():  # ablations and baselines, for comparison
        if method != "model":
          scalars.update({f"eval/{tag}/{method}/{k}": summary[k] for k in writers.TABLE_KEYS if k in summary})
      for k, v in results[split].get("audio_classification", {}).items():
        if k != "num_examples":
          scalars[f"eval/{tag}/audio_{k}"] = v
      writer.write_scalars(step, scalars)
      png = result_stem(workdir, results[split], output) + ".png"
      if jax.process_index() == 0 and os.path.exists(png):  # the heat-map grid, also in TensorBoard
        with PIL.Image.open(png) as image:
          writer.write_images(step, {f"eval/{tag}/heatmaps": np.asarray(image.convert("RGB"))[None]})
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
  summaries, per_items = scoring.score_items(items.raw_maps, items.gt, items.nbox, protocol=protocol, tau=items.tau,
                                     map_range=items.map_range, baselines=baselines, seed=seed, multihost=False)
  result = {
      "predictions": os.path.abspath(path), "step": items.step, "protocol": protocol,
      "map_range": items.map_range, "tau": items.tau, "num_examples": items.num_examples,
      "num_items": len(items.nbox), "metrics": summaries,
  }
  stem = os.path.splitext(output or path)[0]
  if jax.process_index() == 0:
    writers.write_json(output or f"{stem}.json", result)
    item_ids = [items.ids[i] for i in items.example]
    writers.write_csv(f"{stem}.csv", scoring.item_table(item_ids, items.source, items.class_id, per_items, items.gt[0].size))
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
  writers.atomic_write(path, lambda tmp: writers.write_heatmaps(
      tmp, items.frames[:n], raw, boxes.reshape(n, -1, 4), box_source.reshape(n, -1), source_class, items.tau,
      class_names))
