"""Localizing the sounding objects of a user's own clip: the library of `python -m avl_jax.localize`.

The clip's audio is cut into the model's windows (config.dataset.audio_seconds at config.dataset.sample_rate,
every `stride_seconds`); each window is paired with the video frame nearest to its centre (or the one still
image), the model scores every class of its vocabulary from the window's audio (no labels: predicted classes,
or the classes the user names), and the map of each picked class is written as a heat-map PNG, the top class's
map over the whole clip as an mp4 with the clip's audio, and everything measured (scores, picks, map peaks) as
`localize.json`. docs/localize.md describes the flags and outputs.

Files: `localize_clips.py` (decoding, windows, frames), `localize_model.py` (building and restoring the model;
the vocabulary, maps, scores and post-processing come from its family, `families.base.Family.localize_*`),
`localize_outputs.py` (PNGs, the overlay mp4, the JSON), `localize_synthetic.py` (the synthetic test clip);
this file scores the windows and writes the outputs.

Axis letters: B windows of one batch, C classes of the vocabulary, K mapped classes, N audio samples, H/W frame
height/width, h/w map height/width.
"""
import os
import time
from typing import Any, Sequence

from absl import logging
import ml_collections
import numpy as np
from PIL import Image

from avl_jax import localize_clips
from avl_jax import localize_model
from avl_jax import localize_outputs
from avl_jax import resampling
from avl_jax.pipeline import data_config
from avl_jax.pipeline import image_ops

MAP_SIZE = resampling.GT_SIZE  # maps are upsampled to 224 x 224 (the evaluation resolution) before peaks are read
DEFAULT_TOP_K = 2           # classes mapped per window when neither --top_k nor config.model.top_k is set

LocalizeError = localize_clips.LocalizeError  # what `localize` raises for a bad input, workdir or flag


# ----------------------------------------------------------------------------------------------- predictions

def select_classes(scores: np.ndarray | None, top_k: int, threshold: float | None,
                   forced: Sequence[int] = ()) -> list[int]:
  """The classes mapped for one window, best first.

  As `models.layers.select_top_classes`: the `top_k` highest scores, those below `threshold` dropped except the
  best one. `forced` (--classes) replaces the pick: exactly those classes, ordered by score.

  Args:
    scores: [C] class scores, or None (class-agnostic model: its single map).
    top_k: K.
    threshold: minimum score of the 2nd..K-th class, or None.
    forced: class indices to map instead of the prediction.
  """
  if scores is None:
    return [0]
  if forced:
    return sorted(forced, key=lambda c: (-scores[c], list(forced).index(c)))
  order = [int(c) for c in np.argsort(-scores, kind="stable")[:max(1, top_k)]]
  return [c for rank, c in enumerate(order) if rank == 0 or threshold is None or scores[c] >= threshold]


def score_maps(model: localize_model.LoadedModel, raw_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Raw maps [K, h, w] -> (display maps [K, 224, 224] in [0, 1], peak values [K, 224, 224]), as the model's
  family post-processes them for evaluation (`Family.localize_postprocess`)."""
  return model.postprocess(raw_maps, (MAP_SIZE, MAP_SIZE))


def map_peak(display: np.ndarray, values: np.ndarray, width: int, height: int) -> dict[str, float]:
  """The peak of a [224, 224] display map: normalised (x, y) of its pixel centre, in frame pixels, its value."""
  row, col = np.unravel_index(int(np.argmax(display)), display.shape)
  x, y = (col + 0.5) / display.shape[1], (row + 0.5) / display.shape[0]
  return {"x": round(float(x), 5), "y": round(float(y), 5), "x_px": round(float(x * width), 1),
          "y_px": round(float(y * height), 1), "value": round(float(values[row, col]), 6)}


def model_inputs(model: localize_model.LoadedModel, clip: localize_clips.Clip,
                 items: Sequence[tuple[localize_clips.Window, np.ndarray, float]],
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(normalised frames [batch_size, S, S, 3], waveforms [batch_size, N]) of up to batch_size windows; the
  batch is padded by repeating its last window, so every call has one shape (one compilation)."""
  cfg = data_config.DataConfig.from_config(model.config.dataset)
  images = [image_ops.eval_image(Image.fromarray(frame), cfg)[0] for _, frame, _ in items]
  waves = [clip.audio[w.start_sample:w.start_sample + w.num_samples] for w, _, _ in items]
  pad = batch_size - len(items)
  return np.stack(images + images[-1:] * pad), np.stack(waves + waves[-1:] * pad).astype(np.float32)


# --------------------------------------------------------------------------------------------------- outputs

def _batch_records(model: localize_model.LoadedModel, clip: localize_clips.Clip, items, options: dict[str, Any],
                   output_dir: str, top_maps: dict[int, localize_outputs.TopMap]) -> list[dict[str, Any]]:
  """Runs one batch of windows; writes their PNGs, fills `top_maps`; returns their JSON records."""
  images, waves = model_inputs(model, clip, items, options["batch_size"])
  raw_maps, scores = model.apply(images, waves)
  records = []
  for b, (window, frame, frame_time) in enumerate(items):
    row = None if scores is None else scores[b]
    picked = select_classes(row, options["top_k"], options["score_threshold"], options["forced"])
    display, values = score_maps(model, raw_maps[b, picked])
    localized = []
    for k, c in enumerate(picked):
      name = model.class_names[c]
      peak = map_peak(display[k], values[k], clip.width, clip.height)
      score = None if row is None else round(float(row[c]), 6)
      label = name if score is None else f"{name} {score:.2f}"
      png = os.path.join("windows", localize_outputs.png_name(window, name))
      heat = localize_outputs.heat_rgb(display[k], frame.shape[1], frame.shape[0])
      overlay = localize_outputs.draw_overlay(frame, heat, label, peak)
      Image.fromarray(overlay).save(os.path.join(output_dir, png))
      localized.append({"class": name, "score": score, "peak": peak, "png": png})
      if k == 0:
        top_maps[window.index] = localize_outputs.TopMap(np.round(display[0] * 255).astype(np.uint8),
                                                         f"{window.start:.2f} s {label}", peak)
    records.append({
        "index": window.index, "start": round(window.start, 6), "end": round(window.end, 6),
        "centre": round(window.centre, 6), "frame_time": round(float(frame_time), 6),
        "class_scores": {} if row is None else {n: round(float(s), 6) for n, s in zip(model.class_names, row)},
        "predicted": [model.class_names[c] for c in picked], "localized": localized})
  return records


def process_windows(model: localize_model.LoadedModel, clip: localize_clips.Clip,
                    windows: Sequence[localize_clips.Window], options: dict[str, Any],
                    output_dir: str) -> tuple[list[dict[str, Any]], dict[int, localize_outputs.TopMap]]:
  """Every window through the model in batches (streaming the video once); logs every options['log_every']."""
  os.makedirs(os.path.join(output_dir, "windows"), exist_ok=True)
  records, top_maps, batch = [], {}, []
  start, logged = time.time(), 0
  for item in localize_clips.window_frames(clip, windows):
    batch.append(item)
    if len(batch) == options["batch_size"] or item[0].index == windows[-1].index:
      records += _batch_records(model, clip, batch, options, output_dir, top_maps)
      batch = []
      if len(records) - logged >= options["log_every"] or len(records) == len(windows):
        logged = len(records)
        logging.info("Localized %d/%d windows (up to %.2f s of %.2f s) in %.1f s; last: %s.", len(records),
                     len(windows), records[-1]["end"], clip.duration, time.time() - start,
                     ", ".join(records[-1]["predicted"]))
  return records, top_maps


# ------------------------------------------------------------------------------------------------ the binary

def default_output_dir(workdir: str | None, input_path: str) -> str:
  """{workdir}/localize/{input stem}."""
  if not workdir:
    raise LocalizeError("Give --output_dir (with --weights and no --workdir there is no default).")
  return os.path.join(workdir, "localize", os.path.splitext(os.path.basename(input_path))[0])


def _options(model: localize_model.LoadedModel, *, top_k: int | None, score_threshold: float | None, forced: list[int],
             batch_size: int, log_every: int, stride_seconds: float) -> dict[str, Any]:
  cfg_top_k = model.config.model.get("top_k")
  top_k = int(top_k or cfg_top_k or DEFAULT_TOP_K)
  if top_k > len(model.class_names):
    logging.info("top_k=%d exceeds the model's %d classes; mapping all of them.", top_k, len(model.class_names))
    top_k = len(model.class_names)
  if score_threshold is None:
    score_threshold = model.config.model.get("score_threshold")
  if batch_size < 1 or log_every < 1:
    raise LocalizeError(f"--batch_size={batch_size} and --log_every={log_every} must be at least 1.")
  return dict(top_k=top_k, score_threshold=score_threshold, forced=forced, batch_size=batch_size,
              log_every=log_every, stride_seconds=stride_seconds)


def _summary(clip: localize_clips.Clip, model: localize_model.LoadedModel, windows, options, records,
             outputs) -> dict[str, Any]:
  fields = model.fields
  return {
      "input": {"path": os.path.abspath(clip.path), "kind": "image" if clip.still is not None else "video",
                "audio": os.path.abspath(clip.audio_path), "duration_seconds": round(clip.duration, 6),
                "width": clip.width, "height": clip.height, "fps": clip.fps, "audio_rate": clip.source_rate,
                "resampled_to": clip.rate if clip.resampled else None},
      "model": {"model_name": model.config.model_name, **model.origin, "kind": fields["kind"],
                "class_mode": "forced" if options["forced"] else "predicted", "top_k": options["top_k"],
                "score_threshold": options["score_threshold"], "peak_value": fields["peak_value"],
                "classes": model.class_names},
      "window_seconds": windows[0].num_samples / clip.rate,
      "stride_seconds": options["stride_seconds"],
      "sample_rate": clip.rate, "num_windows": len(windows), "windows": records, "outputs": outputs,
  }


def localize(config: ml_collections.ConfigDict, *, video: str | None = None, image: str | None = None,
             audio: str | None = None, workdir: str | None = None, step: int | None = None,
             weights: str | None = None, output_dir: str | None = None, stride_seconds: float | None = None,
             top_k: int | None = None, score_threshold: float | None = None, classes: Sequence[str] = (),
             batch_size: int = 8, log_every: int = 10, write_video: bool = True) -> dict[str, Any]:
  """Localizes the sounding objects of a clip (see the module docstring); returns the written JSON's content.

  The input is decoded and windowed before the model is built, so a bad file fails in a second.

  Raises:
    LocalizeError: a bad input file, a clip shorter than one window, a missing workdir / checkpoint / weights,
      a class name outside the vocabulary.
  """
  ds = config.dataset
  clip = localize_clips.load_clip(int(ds.sample_rate), video=video, image=image, audio=audio)
  window_seconds = float(ds.audio_seconds)
  stride_seconds = window_seconds / 2 if stride_seconds is None else float(stride_seconds)
  windows = localize_clips.make_windows(clip.audio.size, clip.rate, window_seconds, stride_seconds, clip.audio_path)
  logging.info("%s: %.2f s of audio (%d Hz%s), %d windows of %.2f s every %.2f s.", clip.path, clip.duration,
               clip.source_rate, f", resampled to {clip.rate} Hz" if clip.resampled else "", len(windows),
               window_seconds, stride_seconds)
  output_dir = output_dir or default_output_dir(workdir, clip.path)
  model = localize_model.load_model(config, workdir=workdir, step=step, weights=weights, classes=classes)
  forced = localize_model.resolve_classes(model, classes)
  options = _options(model, top_k=top_k, score_threshold=score_threshold, forced=forced, batch_size=batch_size,
                     log_every=log_every, stride_seconds=stride_seconds)
  os.makedirs(output_dir, exist_ok=True)
  records, top_maps = process_windows(model, clip, windows, options, output_dir)
  outputs = {"json": "localize.json", "video": "overlay.mp4" if write_video else None,
             "pngs": sum(len(r["localized"]) for r in records), "png_dir": "windows"}
  if write_video:
    localize_outputs.write_overlay_video(os.path.join(output_dir, "overlay.mp4"), clip, windows, top_maps)
  summary = _summary(clip, model, windows, options, records, outputs)
  summary["output_dir"] = os.path.abspath(output_dir)
  localize_outputs.write_json(os.path.join(output_dir, "localize.json"), summary)
  return summary
