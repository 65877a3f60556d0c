"""Localizing the sounding objects of a user's own clip: the library of `python -m avl_jax.localize`.

The clip's audio is cut into the model's windows (config.dataset.audio_seconds at config.dataset.sample_rate,
every `stride_seconds`); each window is paired with the video frame nearest to its centre (or the one still
image), the model's audio classifier picks the sounding classes (no labels: predicted classes, or the classes
the user names), and the map of each picked class is written as a heat-map PNG, the top class's map over the
whole clip as an mp4 with the clip's audio, and everything measured (scores, picks, map peaks) as
`localize.json`. docs/localize.md describes the flags and outputs.

Class vocabularies: AVGN-family models (avgn, avgn_audioclip) score and map the dataset's classes
(`input_pipeline.dataset_class_names`); EZ-VSL has one class-agnostic map and no classifier; T-VSL models score
and map the rows of their text bank (`families/tvsl_bank.py`), to which names outside the vocabulary are
appended as zero-shot classes (encoded by the model's own frozen text tower).

Axis letters: B windows of one batch, C classes (bank rows), N audio samples, H/W frame height/width, h/w map
height/width.
"""
import dataclasses
import fractions
import json
import os
import re
import time
from typing import Any, Iterator, Sequence

from absl import logging
import av
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from avl_jax import checkpointing
from avl_jax import input_pipeline
from avl_jax import models
from avl_jax import sharding
from avl_jax import visualize
from avl_jax.datasets import raw
from avl_jax.datasets.synthetic_av import generator
from avl_jax.families import tvsl_bank
from avl_jax.metrics import gt_maps
from avl_jax.metrics import postprocess
from avl_jax.models import avgn as avgn_model
from avl_jax.models.tvsl import postprocess as tvsl_postprocess

MAP_SIZE = gt_maps.GT_SIZE  # maps are upsampled to 224 x 224 (the evaluation resolution) before peaks are read
DEFAULT_TOP_K = 2           # classes mapped per window when neither --top_k nor config.model.top_k is set
STILL_FPS = 10              # frame rate of the overlay mp4 of an --image input
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
AGNOSTIC_CLASS = "sounding_object"  # the one "class" of EZ-VSL's class-agnostic map
OVERLAY_ALPHA = 0.55        # heat-map weight of the overlays (as the evaluation PNGs)


class LocalizeError(Exception):
  """A problem with the user's inputs (file, workdir, flags): the binary prints it and exits with code 2."""


# ----------------------------------------------------------------------------------------------------- inputs

@dataclasses.dataclass
class Clip:
  """A decoded input: its audio at the model's rate, and where its frames come from.

  Attributes:
    path: the video (or the image of an --image input).
    audio: [N] float32 mono in [-1, 1] at `rate` (the model's rate).
    rate: config.dataset.sample_rate.
    source_audio: [N'] float32 mono at `source_rate`, the audio as decoded (muxed into the overlay mp4).
    source_rate: the file's own sample rate.
    width, height: frame size in pixels.
    fps: the video's average frame rate (STILL_FPS for an image).
    still: [H, W, 3] uint8 for an --image input, else None (frames are decoded from `path`).
    audio_path: the file the audio came from.
  """
  path: str
  audio: np.ndarray
  rate: int
  source_audio: np.ndarray
  source_rate: int
  width: int
  height: int
  fps: float
  still: np.ndarray | None = None
  audio_path: str = ""

  @property
  def duration(self) -> float:
    return self.audio.size / self.rate

  @property
  def resampled(self) -> bool:
    return self.source_rate != self.rate


def _check_exists(path: str, flag: str) -> None:
  if not path or not os.path.isfile(path):
    raise LocalizeError(f"{flag}={path}: no such file; check the path.")


def probe_video(path: str) -> tuple[int, int, float]:
  """(width, height, fps) of a video with both a video and an audio stream.

  Raises:
    LocalizeError: the file is missing, unreadable, or lacks a video or an audio stream.
  """
  _check_exists(path, "--video")
  try:
    with av.open(path) as container:
      videos, audios = container.streams.video, container.streams.audio
      if not videos:
        raise LocalizeError(f"{path} has no video stream; for a still image with a sound give "
                            "--image=FRAME --audio=SOUND instead of --video.")
      if not audios:
        raise LocalizeError(f"{path} has no audio stream: nothing to localize. Use a video with its sound, or "
                            "--image=FRAME --audio=SOUND with the sound in its own file.")
      video = videos[0]
      fps = float(video.average_rate or video.guessed_rate or 0) or 25.0
      return int(video.codec_context.width), int(video.codec_context.height), fps
  except LocalizeError:
    raise
  except Exception as e:  # av.error.InvalidDataError and friends: not a media file, or a broken one
    raise LocalizeError(f"{path} is unreadable ({type(e).__name__}: {e}); give an mp4 (or any video PyAV/FFmpeg "
                        "can decode) with an audio track.") from e


def read_audio(path: str, flag: str = "--audio") -> tuple[np.ndarray, int]:
  """Mono float32 audio and its rate: a wav (raw.read_wav) or any audio/video file PyAV decodes."""
  _check_exists(path, flag)
  try:
    if path.lower().endswith(".wav"):
      return raw.read_wav(path)
    return raw.decode_video_audio(path)
  except raw.SkipError as e:
    reason = {"no_audio_track": "has no audio stream", "unreadable_audio": "is not a readable wav",
              "unreadable_video": "is unreadable", "nonfinite_audio": "holds NaN or infinite samples"}
    raise LocalizeError(f"{path} {reason.get(e.reason, e.reason)} ({e.detail or e.reason}); give a PCM or float "
                        "wav, or an audio/video file with an audio track.") from e


def _at_rate(audio: np.ndarray, rate: int, target: int, path: str) -> np.ndarray:
  if rate == target:
    return audio
  logging.info("Resampling the audio of %s from %d Hz to %d Hz (config.dataset.sample_rate).", path, rate, target)
  return raw.resample(audio, rate, target)


def load_clip(sample_rate: int, *, video: str | None = None, image: str | None = None,
              audio: str | None = None) -> Clip:
  """Decodes the input: a video with its audio track, or an image plus a sound file.

  Raises:
    LocalizeError: see `probe_video` and `read_audio`; an unreadable image.
  """
  if video:
    width, height, fps = probe_video(video)
    samples, rate = read_audio(video, "--video")
    return Clip(path=video, audio=_at_rate(samples, rate, sample_rate, video), rate=sample_rate,
                source_audio=samples, source_rate=rate, width=width, height=height, fps=fps, audio_path=video)
  _check_exists(image, "--image")
  try:
    with Image.open(image) as picture:
      still = np.asarray(picture.convert("RGB"))
  except Exception as e:  # PIL.UnidentifiedImageError, truncated files
    raise LocalizeError(f"{image} is not a readable image ({type(e).__name__}: {e}); give a JPEG or PNG.") from e
  samples, rate = read_audio(audio)
  return Clip(path=image, audio=_at_rate(samples, rate, sample_rate, audio), rate=sample_rate,
              source_audio=samples, source_rate=rate, width=still.shape[1], height=still.shape[0],
              fps=float(STILL_FPS), still=still, audio_path=audio)


# ---------------------------------------------------------------------------------------------------- windows

@dataclasses.dataclass(frozen=True)
class Window:
  """One audio window: samples [start_sample, start_sample + num_samples) at `rate`."""
  index: int
  start_sample: int
  num_samples: int
  rate: int

  @property
  def start(self) -> float:
    return self.start_sample / self.rate

  @property
  def end(self) -> float:
    return (self.start_sample + self.num_samples) / self.rate

  @property
  def centre(self) -> float:
    return (self.start_sample + self.num_samples / 2) / self.rate


def make_windows(total_samples: int, rate: int, window_seconds: float, stride_seconds: float,
                 path: str = "the clip") -> list[Window]:
  """Windows of `window_seconds` every `stride_seconds` from 0 while they fit in the clip.

  The last window ends at most one stride before the clip's end; that tail is not scored on its own.

  Raises:
    LocalizeError: a stride below one sample, or a clip shorter than one window.
  """
  size = int(round(window_seconds * rate))
  stride = int(round(stride_seconds * rate))
  if stride < 1:
    raise LocalizeError(f"--stride_seconds={stride_seconds}: must be at least one sample (1 / {rate} s).")
  if total_samples < size:
    raise LocalizeError(f"{path}: its audio lasts {total_samples / rate:.2f} s, shorter than the model's window "
                        f"of {window_seconds:.2f} s (config.dataset.audio_seconds); give a clip of at least "
                        f"{window_seconds:.2f} s.")
  count = (total_samples - size) // stride + 1
  return [Window(i, i * stride, size, rate) for i in range(count)]


def nearest_window(time_s: float, windows: Sequence[Window]) -> int:
  """Index of the window whose centre is nearest to `time_s` (ties: the earlier one)."""
  stride = windows[1].start_sample - windows[0].start_sample if len(windows) > 1 else 1
  position = (time_s * windows[0].rate - windows[0].num_samples / 2) / stride
  return int(np.clip(np.ceil(position - 0.5), 0, len(windows) - 1))


def iter_frames(path: str) -> Iterator[tuple[float, Any]]:
  """(time in seconds from the video stream's start, av.VideoFrame) of every decoded frame, in order."""
  try:
    with av.open(path) as container:
      video = container.streams.video[0]
      video.thread_type = "AUTO"
      start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
      for frame in container.decode(video):
        if frame.time is not None:
          yield frame.time - start, frame
  except Exception as e:  # a file that breaks mid-stream
    raise LocalizeError(f"{path}: decoding its video failed ({type(e).__name__}: {e}); the file may be "
                        "truncated; re-encode it (e.g. ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4).") from e


def window_frames(clip: Clip, windows: Sequence[Window]) -> Iterator[tuple[Window, np.ndarray, float]]:
  """(window, [H, W, 3] uint8 frame nearest to its centre, that frame's time), in window order.

  Streams the video once and keeps one frame in memory; windows past the last frame get the last frame.
  """
  if clip.still is not None:
    for window in windows:
      yield window, clip.still, window.centre
    return
  i, previous = 0, None
  for t, frame in iter_frames(clip.path):
    while i < len(windows) and t >= windows[i].centre:
      centre = windows[i].centre
      use_previous = previous is not None and centre - previous[0] <= t - centre
      chosen_t, chosen = previous if use_previous else (t, frame)
      yield windows[i], chosen.to_ndarray(format="rgb24"), chosen_t
      i += 1
    previous = (t, frame)
  if previous is None:
    raise LocalizeError(f"{clip.path}: its video stream holds no decodable frame.")
  if i < len(windows):
    logging.warning("%s: the video ends at %.2f s, before the audio; the last %d window(s) use the last frame.",
                    clip.path, previous[0], len(windows) - i)
  for window in windows[i:]:
    yield window, previous[1].to_ndarray(format="rgb24"), previous[0]


# ------------------------------------------------------------------------------------------------------ model

@dataclasses.dataclass
class LoadedModel:
  """A model ready to localize: `apply(images, waveforms)` -> (raw maps [B, C, h, w], scores [B, C] or None).

  Attributes:
    config: the (private, unlocked) config the model was built from; class_source is 'oracle' so that one call
      maps every class of `class_names`.
    kind: 'avgn' (class vectors + audio classifier: avgn, avgn_audioclip), 'agnostic' (EZ-VSL: one map, no
      classifier) or 'tvsl' (text-bank rows).
    class_names: the vocabulary, one name per map (T-VSL: the bank's display names, extra classes last).
    origin: where the variables came from ({'workdir', 'step'} or {'weights', 'format'}).
  """
  config: ml_collections.ConfigDict
  kind: str
  class_names: list[str]
  origin: dict[str, Any]
  model: Any
  variables: Any
  consts: Any
  fn: Any

  def apply(self, images: np.ndarray, waveforms: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    maps, scores = self.fn(self.variables, self.consts, jnp.asarray(images), jnp.asarray(waveforms))
    return np.asarray(maps, np.float32), (None if self.kind == "agnostic" else np.asarray(scores, np.float32))

  @property
  def tau(self) -> float:
    return float(self.config.model.get("tau", getattr(models.MODELS[self.config.model_name], "tau", 1.0)))


def _kind(config: ml_collections.ConfigDict) -> str:
  if config.model_name in ("tvsl", "tvsl_single_stage"):
    return "tvsl"
  return "avgn" if issubclass(models.MODELS[config.model_name], avgn_model.AVGN) else "agnostic"


def _same_name(a: str, b: str) -> bool:
  return a.replace("_", " ").strip().lower() == b.replace("_", " ").strip().lower()


def dataset_vocabulary(config: ml_collections.ConfigDict) -> list[str]:
  """The dataset's class names in label order ('class {i}' where its TFDS metadata has none)."""
  names = input_pipeline.dataset_class_names(config)
  return list(names) if names else [f"class {i}" for i in range(config.dataset.num_classes)]


def model_config(config: ml_collections.ConfigDict, classes: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """A private copy of `config` for localization: maps of every class (class_source='oracle'); for T-VSL the
  named `classes` missing from the bank appended to config.text.extra_classes (zero-shot rows)."""
  config = ml_collections.ConfigDict(config.to_dict())
  if "class_source" in models.model_fields(models.MODELS[config.model_name]):
    config.model.class_source = "oracle"
  if _kind(config) == "tvsl" and classes:
    bank = tvsl_bank.bank_names(config)[0]
    extra = [c for c in classes if not any(_same_name(c, name) for name in bank)]
    if extra:
      logging.info("Zero-shot classes appended to the T-VSL text bank: %s.", ", ".join(extra))
      config.text.extra_classes = tuple(config.text.extra_classes) + tuple(extra)
  return config


def _localize_fn(kind: str, model, num_classes: int):
  """Jitted (variables, consts, images [B, H, W, 3], waveforms [B, N]) -> (maps [B, C, h, w], scores [B, C])."""
  def apply(variables, consts, images, waveforms):
    batch = images.shape[0]
    ids = jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32), (batch, num_classes))
    if kind == "avgn":  # every class vector's map and the audio classifier's probabilities
      maps, classes = model.apply(variables, images, waveforms, ids, train=False, return_classes=True,
                                  method=model.localize)
      return maps, jax.nn.sigmoid(classes["class_scores"])
    if kind == "tvsl":  # every bank row's map; 'scores' are stage 1's probabilities (single stage: rho)
      maps, classes = model.apply(variables, images, waveforms, consts["text_bank"], ids, train=False,
                                  return_classes=True, method=model.localize)
      return maps, classes["scores"]
    maps = model.apply(variables, images, waveforms, ids[:, :1] * 0, train=False, method=model.localize)
    return maps, jnp.zeros((batch, 0), jnp.float32)
  return jax.jit(apply)


def _restore_checkpoint(setup, workdir: str, step: int | None) -> tuple[Any, int]:
  checkpoints = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(checkpoints):
    raise LocalizeError(f"--workdir={workdir}: no checkpoints/ directory. Train one first (python -m avl_jax.main "
                        "--config=... --workdir=...), fix the path, or give converted weights with --weights=DIR.")
  manager = checkpointing.create_manager(workdir, create=False)
  steps = sorted(manager.all_steps())
  if not steps:
    raise LocalizeError(f"--workdir={workdir}: {checkpoints} holds no checkpoint; train first or pass --weights.")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise LocalizeError(f"--step={step}: no checkpoint for it in {checkpoints}; available steps: {steps}.")
  try:
    state = checkpointing.restore(manager, step, setup.abstract_state)
  except (checkpointing.CheckpointMismatchError, checkpointing.DamagedCheckpointError) as e:
    raise LocalizeError(f"--workdir={workdir}, step {step}: {e}") from e
  return state.variables, step


def _load_weights(setup, weights_dir: str, mesh) -> tuple[Any, dict[str, Any]]:
  """The variables of a converted-weights directory (as evaluate.evaluate_weights), replicated on `mesh`."""
  abstract = {"params": setup.abstract_state.params, "batch_stats": setup.abstract_state.batch_stats}
  target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)
  try:
    loaded, metadata = checkpointing.load_variables(weights_dir)
    variables, count = checkpointing.merge_variables(target, loaded, origin=f"--weights={weights_dir}")
  except (FileNotFoundError, ValueError) as e:
    raise LocalizeError(str(e)) from e
  total = len(jax.tree.leaves(target))
  if count != total:
    raise LocalizeError(f"--weights={weights_dir} holds {count} of the {total} variables of the model "
                        f"({metadata.get('format')}); localization needs a whole model, not an encoder.")
  return jax.device_put(variables, sharding.replicated(mesh)), metadata


def load_model(config: ml_collections.ConfigDict, *, workdir: str | None = None, step: int | None = None,
               weights: str | None = None, classes: Sequence[str] = ()) -> LoadedModel:
  """Builds `config`'s model on one local device and restores a workdir checkpoint (latest, or `step`) or a
  converted-weights directory.

  Raises:
    LocalizeError: a missing workdir, checkpoint, step or weights directory, or variables that do not fit.
  """
  from avl_jax import train  # pylint: disable=g-import-not-at-top  (TensorFlow via clu: after the input checks)
  config = model_config(config, classes)
  mesh = sharding.create_mesh([(name, 1) for name, _ in config.mesh], devices=jax.local_devices()[:1])
  setup = train.build(config, mesh)
  if weights:
    variables, metadata = _load_weights(setup, weights, mesh)
    origin = {"weights": os.path.abspath(weights), "format": metadata.get("format")}
  else:
    variables, restored = _restore_checkpoint(setup, workdir, step)
    origin = {"workdir": os.path.abspath(workdir), "step": int(restored)}
  consts = train.make_consts(setup, variables["params"], mesh)
  kind = _kind(config)
  if kind == "tvsl":
    names = tvsl_bank.bank_names(config)[0]
  elif kind == "avgn":
    names = dataset_vocabulary(config)
  else:
    names = [AGNOSTIC_CLASS]
  fn = _localize_fn(kind, setup.model, len(names))
  logging.info("Loaded %s (%s) with %d classes.", config.model_name, origin, len(names))
  return LoadedModel(config=config, kind=kind, class_names=list(names), origin=origin, model=setup.model,
                     variables=variables, consts=consts, fn=fn)


def resolve_classes(model: LoadedModel, classes: Sequence[str]) -> list[int]:
  """Indices (into model.class_names) of the names the user forced with --classes.

  Raises:
    LocalizeError: a name outside the vocabulary (AVGN family), or --classes with a class-agnostic model.
  """
  if not classes:
    return []
  if model.kind == "agnostic":
    raise LocalizeError(f"--classes: {model.config.model_name} has one class-agnostic map and no class "
                        "vocabulary; drop --classes.")
  ids = []
  for name in classes:
    matches = [i for i, known in enumerate(model.class_names) if _same_name(name, known)]
    if not matches:
      raise LocalizeError(f"--classes: {name!r} is not a class of this model; valid names: "
                          f"{', '.join(model.class_names)}.")
    if matches[0] not in ids:
      ids.append(matches[0])
  return ids


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


def score_maps(model: LoadedModel, raw_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Raw maps [K, h, w] -> (display maps [K, 224, 224] in [0, 1], peak values [K, 224, 224]).

  AVGN family: bicubic upsampling, the official fixed-range score (logit + 1/tau) / (2/tau) as the value (0.5
  = logit 0), its per-map min-max for display. T-VSL: the official post-processing (bicubic, min-max, inverted
  with config.model.invert_map) for display, the upsampled raw map as the value.
  """
  size = (MAP_SIZE, MAP_SIZE)
  if model.kind == "tvsl":
    default = getattr(models.MODELS[model.config.model_name], "invert_map", True)
    invert = bool(model.config.model.get("invert_map", default))
    post = tvsl_postprocess.postprocess_maps(raw_maps, invert=invert, out_hw=size,
                                             threshold=model.config.eval.tvsl_threshold)
    return np.nan_to_num(post["score"]).astype(np.float32), post["upsampled"]
  values = postprocess.avgn_scores(postprocess.upsample_to(raw_maps, size), model.tau)
  return postprocess.minmax_normalize(values), values


def map_peak(display: np.ndarray, values: np.ndarray, width: int, height: int) -> dict[str, float]:
  """The peak of a [224, 224] display map: normalised (x, y) of its pixel centre, in frame pixels, its value."""
  row, col = np.unravel_index(int(np.argmax(display)), display.shape)
  x, y = (col + 0.5) / display.shape[1], (row + 0.5) / display.shape[0]
  return {"x": round(float(x), 5), "y": round(float(y), 5), "x_px": round(float(x * width), 1),
          "y_px": round(float(y * height), 1), "value": round(float(values[row, col]), 6)}


def model_inputs(model: LoadedModel, clip: Clip, items: Sequence[tuple[Window, np.ndarray, float]],
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(normalised frames [batch_size, S, S, 3], waveforms [batch_size, N]) of up to batch_size windows; the
  batch is padded by repeating its last window, so every call has one shape (one compilation)."""
  cfg = input_pipeline.DataConfig.from_config(model.config.dataset)
  images = [input_pipeline.eval_image(Image.fromarray(frame), cfg)[0] for _, frame, _ in items]
  waves = [clip.audio[w.start_sample:w.start_sample + w.num_samples] for w, _, _ in items]
  pad = batch_size - len(items)
  return np.stack(images + images[-1:] * pad), np.stack(waves + waves[-1:] * pad).astype(np.float32)


# -------------------------------------------------------------------------------------------------- drawing

def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "class"


def heat_rgb(display: np.ndarray, width: int, height: int) -> np.ndarray:
  """[224, 224] map in [0, 1] -> [H, W, 3] float32 colours (visualize.colormap), bilinear to the frame size."""
  grey = Image.fromarray(np.round(np.clip(display, 0, 1) * 255).astype(np.uint8)).resize((width, height),
                                                                                       Image.BILINEAR)
  return visualize.colormap(np.asarray(grey, np.float32) / 255.0).astype(np.float32)


def draw_overlay(frame: np.ndarray, heat: np.ndarray, label: str, peak: dict[str, float] | None) -> np.ndarray:
  """The frame [H, W, 3] uint8 under a heat map [H, W, 3], with a ring at the peak and a label."""
  blended = (1 - OVERLAY_ALPHA) * frame.astype(np.float32) + OVERLAY_ALPHA * heat
  picture = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(picture)
  if peak is not None:
    radius = max(4, min(frame.shape[:2]) // 30)
    x, y = peak["x_px"], peak["y_px"]
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=(255, 255, 255), width=2)
  draw.rectangle((0, 0, 8 + 6 * len(label), 16), fill=(0, 0, 0))
  draw.text((4, 3), label, fill=(255, 255, 255))
  return np.asarray(picture)


def png_name(window: Window, class_name: str) -> str:
  """'w0003_t001.50s_red_solid_circle.png': window index, start time, class."""
  return f"w{window.index:04d}_t{window.start:07.2f}s_{_slug(class_name)}.png"


# --------------------------------------------------------------------------------------------------- outputs

@dataclasses.dataclass
class TopMap:
  """What the overlay mp4 draws for one window: its top class's display map and label."""
  display: np.ndarray  # [224, 224] uint8
  label: str
  peak: dict[str, float]


def _batch_records(model: LoadedModel, clip: Clip, items, options: dict[str, Any], output_dir: str,
                   top_maps: dict[int, TopMap]) -> list[dict[str, Any]]:
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
      png = os.path.join("windows", png_name(window, name))
      overlay = draw_overlay(frame, heat_rgb(display[k], frame.shape[1], frame.shape[0]), label, peak)
      Image.fromarray(overlay).save(os.path.join(output_dir, png))
      localized.append({"class": name, "score": score, "peak": peak, "png": png})
      if k == 0:
        top_maps[window.index] = TopMap(np.round(display[0] * 255).astype(np.uint8), f"{window.start:.2f} s {label}",
                                        peak)
    records.append({
        "index": window.index, "start": round(window.start, 6), "end": round(window.end, 6),
        "centre": round(window.centre, 6), "frame_time": round(float(frame_time), 6),
        "class_scores": {} if row is None else {n: round(float(s), 6) for n, s in zip(model.class_names, row)},
        "predicted": [model.class_names[c] for c in picked], "localized": localized})
  return records


def process_windows(model: LoadedModel, clip: Clip, windows: Sequence[Window], options: dict[str, Any],
                    output_dir: str) -> tuple[list[dict[str, Any]], dict[int, TopMap]]:
  """Every window through the model in batches (streaming the video once); logs every options['log_every']."""
  os.makedirs(os.path.join(output_dir, "windows"), exist_ok=True)
  records, top_maps, batch = [], {}, []
  start, logged = time.time(), 0
  for item in window_frames(clip, windows):
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


def _video_frames(clip: Clip) -> Iterator[tuple[float, np.ndarray]]:
  if clip.still is not None:
    for n in range(int(np.ceil(clip.duration * STILL_FPS))):
      yield n / STILL_FPS, clip.still
    return
  for t, frame in iter_frames(clip.path):
    yield t, frame.to_ndarray(format="rgb24")


def _encode_audio(container, stream, audio: np.ndarray, rate: int, written: int, upto: int) -> int:
  """Encodes audio[written:upto] in whole codec frames (the last one zero-padded); returns the new `written`."""
  size = stream.codec_context.frame_size or 1024
  while written < min(upto, audio.size):
    chunk = audio[written:written + size]
    if chunk.size < size:
      chunk = np.pad(chunk, (0, size - chunk.size))
    frame = av.AudioFrame.from_ndarray(chunk[None, :].astype(np.float32), format="fltp", layout="mono")
    frame.sample_rate, frame.pts = rate, written
    for packet in stream.encode(frame):
      container.mux(packet)
    written += size
  return written


def write_overlay_video(path: str, clip: Clip, windows: Sequence[Window], top_maps: dict[int, TopMap]) -> None:
  """The clip with each frame under the top-class map of the window whose centre is nearest, at the clip's frame
  rate (constant), with the clip's audio (mono, AAC) muxed in."""
  width, height = clip.width - clip.width % 2, clip.height - clip.height % 2  # yuv420p needs even sides
  audio, rate = clip.source_audio, clip.source_rate
  if rate not in AAC_RATES:
    audio, rate = raw.resample(audio, rate, 48000), 48000
  codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
  with av.open(path, "w") as container:
    video = container.add_stream(codec, rate=fractions.Fraction(clip.fps).limit_denominator(1001))
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    if codec == "libx264":
      video.options = {"crf": "18"}
    sound = container.add_stream("aac", rate=rate, layout="mono")
    written, cached, heat = 0, None, None
    for t, frame in _video_frames(clip):
      i = nearest_window(t, windows)
      if cached != i:
        cached, heat = i, heat_rgb(top_maps[i].display / 255.0, width, height)
      picture = draw_overlay(frame[:height, :width], heat, top_maps[i].label, top_maps[i].peak)
      for packet in video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
        container.mux(packet)
      written = _encode_audio(container, sound, audio, rate, written, int(round((t + 1 / clip.fps) * rate)))
    _encode_audio(container, sound, audio, rate, written, audio.size)
    for stream in (video, sound):
      for packet in stream.encode(None):
        container.mux(packet)


def _to_json(path: str, value: Any) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, allow_nan=False)
  os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ the binary

def default_output_dir(workdir: str | None, input_path: str) -> str:
  """{workdir}/localize/{input stem}."""
  if not workdir:
    raise LocalizeError("Give --output_dir (with --weights and no --workdir there is no default).")
  return os.path.join(workdir, "localize", os.path.splitext(os.path.basename(input_path))[0])


def _options(model: LoadedModel, *, top_k: int | None, score_threshold: float | None, forced: list[int],
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


def _summary(clip: Clip, model: LoadedModel, windows, options, records, outputs) -> dict[str, Any]:
  value = "tvsl_raw_map" if model.kind == "tvsl" else "avgn_fixed_range_score"
  return {
      "input": {"path": os.path.abspath(clip.path), "kind": "image" if clip.still is not None else "video",
                "audio": os.path.abspath(clip.audio_path), "duration_seconds": round(clip.duration, 6),
                "width": clip.width, "height": clip.height, "fps": clip.fps, "audio_rate": clip.source_rate,
                "resampled_to": clip.rate if clip.resampled else None},
      "model": {"model_name": model.config.model_name, **model.origin, "kind": model.kind,
                "class_mode": "forced" if options["forced"] else "predicted", "top_k": options["top_k"],
                "score_threshold": options["score_threshold"], "peak_value": value,
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
  clip = load_clip(int(ds.sample_rate), video=video, image=image, audio=audio)
  window_seconds = float(ds.audio_seconds)
  stride_seconds = window_seconds / 2 if stride_seconds is None else float(stride_seconds)
  windows = make_windows(clip.audio.size, clip.rate, window_seconds, stride_seconds, clip.audio_path)
  logging.info("%s: %.2f s of audio (%d Hz%s), %d windows of %.2f s every %.2f s.", clip.path, clip.duration,
               clip.source_rate, f", resampled to {clip.rate} Hz" if clip.resampled else "", len(windows),
               window_seconds, stride_seconds)
  output_dir = output_dir or default_output_dir(workdir, clip.path)
  model = load_model(config, workdir=workdir, step=step, weights=weights, classes=classes)
  forced = resolve_classes(model, classes)
  options = _options(model, top_k=top_k, score_threshold=score_threshold, forced=forced, batch_size=batch_size,
                     log_every=log_every, stride_seconds=stride_seconds)
  os.makedirs(output_dir, exist_ok=True)
  records, top_maps = process_windows(model, clip, windows, options, output_dir)
  outputs = {"json": "localize.json", "video": "overlay.mp4" if write_video else None,
             "pngs": sum(len(r["localized"]) for r in records), "png_dir": "windows"}
  if write_video:
    write_overlay_video(os.path.join(output_dir, "overlay.mp4"), clip, windows, top_maps)
  summary = _summary(clip, model, windows, options, records, outputs)
  summary["output_dir"] = os.path.abspath(output_dir)
  _to_json(os.path.join(output_dir, "localize.json"), summary)
  return summary


# ------------------------------------------------------------------------------------------ a synthetic clip

def _contains(box: np.ndarray, x: float, y: float) -> bool:
  return bool(box[0] <= x <= box[2] and box[1] <= y <= box[3])


def synthetic_scene(rng: np.random.Generator, sounding: int, num_classes: int, size: int,
                    off_centre: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One synthetic_av scene: the sounding class plus 1..2 silent distractors of other classes.

  With `off_centre`, scenes are redrawn until the sounding object's box misses the image centre (where the
  centre prior peaks). Returns (frame [size, size, 3] uint8, classes [O] (sounding first), boxes [O, 4]
  normalised xyxy).
  """
  others = [c for c in range(num_classes) if c != sounding]
  for _ in range(100):
    distractors = rng.choice(others, size=int(rng.integers(1, min(2, len(others)) + 1)), replace=False)
    classes = np.array([sounding, *distractors])
    frame, boxes = generator.render_scene(rng, classes, size)
    if not off_centre or not _contains(boxes[0], 0.5, 0.5):
      break
  return frame, classes, boxes


def render_synthetic(path: str, *, num_scenes: int = 8, scene_seconds: float = 1.0, fps: int = 10,
                     size: int = 160, num_classes: int = 8, sample_rate: int = 16000, seed: int = 0,
                     off_centre: bool = True) -> dict[str, Any]:
  """Renders an mp4 of synthetic_av scenes with their sound, and `{stem}.truth.json` beside it.

  Scene i lasts `scene_seconds`: a still frame with objects of distinct classes, one of them sounding (class
  i mod num_classes, so consecutive windows change class), its sound at a random gain plus background noise as
  the audio (generator.mix_audio). With --stride_seconds=scene_seconds and a window of scene_seconds, window i
  is scene i. The truth JSON lists per scene its time span, sounding class and box (normalised xyxy) and the
  distractors' classes and boxes.

  Returns:
    the truth JSON's content.
  """
  frames, audio, scenes = [], [], []
  per_scene = int(round(scene_seconds * sample_rate))
  for i in range(num_scenes):
    rng = np.random.default_rng([seed, 1000, i])
    sounding = i % num_classes
    frame, classes, boxes = synthetic_scene(rng, sounding, num_classes, size, off_centre)
    frames.append(frame)
    audio.append(generator.mix_audio(rng, classes[:1], per_scene, sample_rate).astype(np.float32) / 32767.0)
    names = generator.class_names(num_classes)
    scenes.append({"index": i, "start": i * scene_seconds, "end": (i + 1) * scene_seconds,
                   "sounding_class": names[sounding], "box": [round(float(v), 5) for v in boxes[0]],
                   "distractors": [{"class": names[c], "box": [round(float(v), 5) for v in b]}
                                   for c, b in zip(classes[1:], boxes[1:])]})
  _write_still_scenes(path, frames, np.concatenate(audio), fps, scene_seconds, sample_rate)
  truth = {"video": os.path.abspath(path), "scene_seconds": scene_seconds, "sample_rate": sample_rate,
           "size": size, "scenes": scenes}
  _to_json(os.path.splitext(path)[0] + ".truth.json", truth)
  return truth


def _write_still_scenes(path: str, frames: list[np.ndarray], audio: np.ndarray, fps: int, scene_seconds: float,
                        rate: int) -> None:
  """An mp4 (H.264 or MPEG-4 Part 2, AAC) showing each frame for scene_seconds, with `audio` [N] at `rate`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
  per_scene = int(round(scene_seconds * fps))
  with av.open(path, "w") as container:
    video = container.add_stream(codec, rate=fps)
    video.height, video.width = frames[0].shape[:2]
    video.pix_fmt = "yuv420p"
    if codec == "libx264":
      video.options = {"crf": "12"}
    sound = container.add_stream("aac", rate=rate, layout="mono")
    written = 0
    for n in range(per_scene * len(frames)):
      picture = av.VideoFrame.from_ndarray(frames[n // per_scene], format="rgb24")
      for packet in video.encode(picture):
        container.mux(packet)
      written = _encode_audio(container, sound, audio, rate, written, int(round((n + 1) / fps * rate)))
    _encode_audio(container, sound, audio, rate, written, audio.size)
    for stream in (video, sound):
      for packet in stream.encode(None):
        container.mux(packet)
