"""Result files of an evaluation, each written to a temporary name and renamed (a killed run never leaves a
truncated file): the JSON summary, the per-item CSV, the heat-map PNG, the predictions file, the text table.
"""
import collections.abc
import csv
import glob
import json
import os
from typing import Any

import numpy as np

from avl_jax import resampling
from avl_jax import visualize
from avl_jax.evaluation import scoring
from avl_jax.metrics import postprocess
from avl_jax.pipeline import data_source

# Per-item CSV: `ap` is the true pixel AP (summary key `pixel_ap`; empty GT -> nan) under both protocols, and
# `piap_official` the official swapped-argument "piap"; `area` is the GT area as a fraction of the GT map (224 x 224).
# Each baseline adds `{method}_ciou` and `{method}_ap`.
CSV_COLUMNS = ("id", "source", "class", "nbox", "area", "ciou", "ap", "piap_official", "conf")

TMP_PREFIX = ".tmp-"  # atomic_write's temporary names: .tmp-{pid}-{name}


def atomic_write(path: str, write: collections.abc.Callable[[str], None]) -> None:
  """write(tmp) then rename over `path` (same directory, same extension, so format-by-name writers work)."""
  directory, name = os.path.split(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}-{name}")
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


class OutputNotWritableError(PermissionError):
  """The results directory cannot be written (read-only file system, permissions)."""


def check_writable(directory: str, hint: str = "") -> None:
  """Creates `directory` and writes/removes a probe file in it; OutputNotWritableError (with `hint`) if not."""
  probe = os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}-write-probe")
  try:
    os.makedirs(directory, exist_ok=True)
    with open(probe, "w") as f:
      f.write("")
    os.remove(probe)
  except OSError as e:
    raise OutputNotWritableError(f"{directory} is not writable ({e.strerror or e}).{hint}") from e


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def remove_stale_temp_files(directory: str) -> list[str]:
  """Removes `atomic_write` temporaries left in `directory` by killed processes (their pid no longer runs).

  Temporaries of live processes (a concurrent evaluation) are kept. Returns the removed paths.
  """
  removed = []
  if not os.path.isdir(directory):
    return removed
  for name in sorted(os.listdir(directory)):
    if not name.startswith(TMP_PREFIX):
      continue
    pid = name[len(TMP_PREFIX):].split("-", 1)[0]
    if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
      path = os.path.join(directory, name)
      try:
        os.remove(path)
        removed.append(path)
      except OSError:
        pass
  return removed


def write_json(path: str, value: Any) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(value, f, indent=2, default=float)
  atomic_write(path, write)


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
  atomic_write(path, write)


def write_heatmaps(path: str, frames: np.ndarray, raw_maps: np.ndarray, boxes: np.ndarray, box_source: np.ndarray,
                   source_class: np.ndarray, tau: float, class_names: list[str] | None = None,
                   every_box_on_every_panel: bool = False) -> None:
  """PNG grid: per example the frame with GT boxes, then per source heat map, GT box, binarised region.

  Writes `path` directly; wrap the call in `atomic_write` for a kill-safe file.

  Args:
    path: the .png file.
    frames: [n, Hf, Wf, 3] uint8.
    raw_maps: [n, S, h, w] raw maps (finite where source_class >= 0).
    boxes: [n, NB, 4] normalised xyxy, -1 padding; box_source: [n, NB] source slot per box (-1 padding).
    source_class: [n, S] class per source (-1: no source, not drawn).
    tau: temperature (the picture does not depend on it: it shows the min-max map).
    class_names: labels indexed by class (default 'class {c}').
    every_box_on_every_panel: see visualize.heatmap_grid (predicted classes).
  """
  n, num_sources = raw_maps.shape[:2]
  if n == 0:
    return
  maps = np.where((source_class >= 0)[..., None, None], raw_maps, 0).astype(np.float32)
  upsampled = postprocess.upsample_to(maps.reshape(-1, *maps.shape[2:]), (resampling.GT_SIZE, resampling.GT_SIZE))
  pred = postprocess.minmax_normalize(postprocess.map_scores(upsampled, "logits", tau))
  thr, _ = postprocess.median_threshold(pred)
  heat = pred.reshape(n, num_sources, resampling.GT_SIZE, resampling.GT_SIZE)
  infer = (pred >= thr[:, None, None]).reshape(n, num_sources, resampling.GT_SIZE, resampling.GT_SIZE)
  visualize.heatmap_grid(frames[:n], heat, infer, boxes, box_source, source_class, path, class_names=class_names,
                         size=resampling.GT_SIZE, every_box_on_every_panel=every_box_on_every_panel)


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
              num_sources=present.sum(axis=1), class_ids=source_class, ids=data_source.decode_ids(pred["id"]),
              map_range="logits", tau=np.float64(tau), step=None if step is None else int(step))


TABLE_KEYS = ("ciou_mean", "ciou_frac@0.3", "ciou_frac@0.5", "auc", "pixel_ap", "piap_official")


def format_result(result: dict[str, Any], name: str | None = None) -> str:
  """A header naming the split (or `name`), step, counts and protocol, then `format_table`."""
  classes = ", predicted classes" if result.get("class_source") == "predicted" else ""
  text = (f"{name or result['split']} (step {result['step']}, {result['num_examples']} examples, {result['num_items']} "
          f"sources, protocol {result['protocol']}{classes}):\n{format_table(result)}")
  audio = result.get("audio_classification")
  if audio:
    text += (f"\naudio classifier: mAP {audio['map']:.4f} (chance {audio['chance']:.4f}), "
             f"top-1 {audio['top1']:.4f}")
  return text


def latest_results(directory: str) -> dict[tuple[str, str], dict[str, Any]]:
  """{(split, class_source): result JSON} of the newest step of each in an eval directory ({} if none).

  class_source is 'oracle' for results without one (every model without an audio classifier).
  """
  latest = {}
  for path in sorted(glob.glob(os.path.join(directory, "*_*.json"))):
    try:
      with open(path) as f:
        result = json.load(f)
      key = (result["split"], result.get("class_source", "oracle"))
      step = int(result["step"])
    except (OSError, ValueError, KeyError, TypeError):
      continue  # not a result file (e.g. a hand-written note)
    if key not in latest or step > int(latest[key]["step"]):
      latest[key] = result
  return latest


def format_comparison(results: list[dict[str, Any]], keys=TABLE_KEYS) -> str:
  """One table over several results of a split (e.g. oracle and predicted classes of one checkpoint).

  Rows: each result's model and audio ablations, labelled with its class source, then the baselines once
  (they do not depend on the class source). Below: each result's audio-classifier line.
  """
  header = f"{'method':<36}" + "".join(f"{k:>15}" for k in keys)
  rows = [header, "-" * len(header)]

  def row(label, summary):
    rows.append(f"{label:<36}" + "".join(f"{float(summary.get(k, float('nan'))):>15.4f}" for k in keys))
  baselines = {}
  for result in results:
    source = result.get("class_source")
    for method, summary in result["metrics"].items():
      if method in scoring.BASELINES:
        baselines.setdefault(method, summary)
      else:
        row(f"{method} ({source} classes)" if source else method, summary)
  for method, summary in baselines.items():
    row(method, summary)
  first = results[0]
  text = (f"{first['split']} (step {first['step']}, {first['num_examples']} examples, {first['num_items']} sources, "
          f"protocol {first['protocol']}):\n" + "\n".join(rows))
  for result in results:
    audio = result.get("audio_classification")
    if audio:
      text += (f"\naudio classifier ({result.get('class_source', 'oracle')} run): mAP {audio['map']:.4f} "
               f"(chance {audio['chance']:.4f}), top-1 {audio['top1']:.4f}")
    if "class_recall" in result:
      text += f"\npredicted classes: class_recall {float(result['class_recall']):.4f}"
  return text


def format_table(result: dict[str, Any], keys=TABLE_KEYS) -> str:
  """A fixed-width text table: one row per method, one column per metric."""
  header = f"{'method':<16}" + "".join(f"{k:>15}" for k in keys)
  rows = [header, "-" * len(header)]
  for method, summary in result["metrics"].items():
    rows.append(f"{method:<16}" + "".join(f"{float(summary.get(k, float('nan'))):>15.4f}" for k in keys))
  return "\n".join(rows)
