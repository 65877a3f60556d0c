"""Procedural audio-visual scenes for `synthetic_av`: pure numpy + PIL, deterministic, usable without TFDS.

Every example is generated from `np.random.default_rng([seed, split_index, example_index])`, so building the
dataset twice (or calling `make_example` twice) yields identical arrays, and examples can be generated in any
order or in parallel.

Each of the K classes has a fixed visual appearance (shape, colour, texture) and a fixed sound (fundamental,
timbre, temporal pattern), given by `class_spec(k)`; class k is the same for every K, so a K = 8 dataset is the
first 8 classes of a K = 16 one. A scene is a cluttered background with 1 to 3 objects of distinct classes; 1 or 2
of them sound, the others are silent distractors. The audio is the sum of the sounding objects' sounds at random
gains plus background noise.

Axis letters: H, W image height/width, N audio samples, S sounding sources, NB boxes.
"""
import dataclasses
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SPLITS = ("train", "test_single", "test_duet")
MAX_CLASSES = 32

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon")
TEXTURES = ("solid", "striped", "dotted", "checkered")  # adjectives: they are part of the class names
# Saturated, well separated colours; the background and clutter are desaturated so objects stand out.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 85, 225),
    "yellow": (240, 215, 40),
    "magenta": (215, 50, 205),
    "cyan": (40, 205, 215),
    "orange": (250, 135, 25),
    "purple": (125, 45, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
TIMBRES = ("pure", "bright", "hollow", "breathy")
PATTERNS = ("swell", "pulses", "tremolo", "chirps")

# Object box side as a fraction of the image side.
MIN_OBJECT_SIZE, MAX_OBJECT_SIZE = 0.30, 0.60
# Largest fraction of the smaller of two boxes that another box may cover (objects stay mostly visible).
MAX_OVERLAP = 0.2


@dataclasses.dataclass(frozen=True)
class SceneConfig:
  """What `make_example` needs; `SyntheticAvConfig` (the TFDS builder config) carries the same fields."""
  num_classes: int = 8
  image_size: int = 64
  duration_s: float = 1.0
  sample_rate: int = 16000
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class ClassSpec:
  """The fixed appearance and sound of one class."""
  index: int
  name: str
  shape: str
  colour: str
  rgb: tuple[int, int, int]
  texture: str
  fundamental_hz: float
  timbre: str
  pattern: str
  pattern_rate_hz: float


def class_spec(k: int) -> ClassSpec:
  """Returns the appearance and sound of class `k` (0 <= k < MAX_CLASSES), independent of K."""
  if not 0 <= k < MAX_CLASSES:
    raise ValueError(f"class index {k} outside [0, {MAX_CLASSES})")
  group = k // len(SHAPES)  # 0..3: each group of 8 classes reuses the shapes with a new texture.
  shape = SHAPES[k % len(SHAPES)]
  texture = TEXTURES[group]
  colour = list(COLOURS)[(k + 3 * group) % len(COLOURS)]
  # Fundamentals: the 8 shapes are 0.6 octave apart (160 Hz .. 2.9 kHz); each group shifts them by 0.15 octave,
  # so any two classes differ by >= 11 % in pitch and also in timbre or temporal pattern.
  fundamental = 160.0 * 2.0 ** (0.6 * (k % len(SHAPES)) + 0.15 * group)
  timbre = TIMBRES[k % len(TIMBRES)]
  pattern = PATTERNS[(k // len(TIMBRES) + k) % len(PATTERNS)]  # (timbre, pattern) unique for k < 16.
  rate = 2.0 + (k * 7 % 5) * 0.75  # 2 .. 5 Hz
  name = f"{colour}_{texture}_{shape}"
  return ClassSpec(k, name, shape, colour, COLOURS[colour], texture, fundamental, timbre, pattern, rate)


def class_names(num_classes: int) -> list[str]:
  """Returns human-readable class names, e.g. `['red_solid_circle', 'green_solid_square', ...]`."""
  return [class_spec(k).name for k in range(num_classes)]


def split_index(split: str) -> int:
  """Returns the index of `split` in SPLITS (part of the RNG seed)."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  return SPLITS.index(split)


def example_id(split: str, index: int) -> str:
  """Returns the example id, e.g. `train_000123`."""
  return f"{split}_{index:06d}"


# ----------------------------------------------------------------------------------------------------------------
# Images.
# ----------------------------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """A smooth, muted random colour field with pixel noise and a few non-class clutter strokes and blobs.

  Returns:
    pixels [size, size, 3] float32.
  """
  grid = rng.integers(2, 5)
  coarse = rng.uniform(60, 190, size=(grid, grid, 3))
  grey = coarse.mean(axis=-1, keepdims=True)
  coarse = grey + 0.45 * (coarse - grey)  # desaturate: class colours must remain the most saturated pixels
  field = Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BICUBIC)
  draw = ImageDraw.Draw(field)
  for _ in range(rng.integers(3, 7)):
    colour = _muted_colour(rng)
    if rng.random() < 0.5:  # stroke: a random polyline
      points = [tuple(p) for p in rng.uniform(0, size, size=(rng.integers(2, 5), 2))]
      draw.line(points, fill=colour, width=int(rng.integers(1, max(2, size // 24) + 1)))
    else:  # blob: an irregular polygon, never one of the class shapes
      centre = rng.uniform(0, size, size=2)
      num_vertices = rng.integers(5, 9)
      angles = np.sort(rng.uniform(0, 2 * np.pi, num_vertices))
      radii = rng.uniform(0.02, 0.09, num_vertices) * size
      points = centre + np.stack([np.cos(angles), np.sin(angles)], -1) * radii[:, None]
      draw.polygon([tuple(p) for p in points], fill=colour)
  # Luminance (grey) noise: as sensor-like as colour noise and a third of the random draws.
  noise = np.float32(6.0) * rng.standard_normal((size, size, 1), dtype=np.float32)
  return np.asarray(field, np.float32) + noise


def _muted_colour(rng: np.random.Generator) -> tuple[int, int, int]:
  rgb = rng.uniform(40, 210, size=3)
  rgb = rgb.mean() + 0.4 * (rgb - rgb.mean())
  return tuple(int(c) for c in rgb)


def _shape_mask(shape: str, canvas_size: tuple[int, int], box: np.ndarray, angle: float) -> np.ndarray:
  """Rasterises `shape` inscribed in the pixel box (x1, y1, x2, y2) of a canvas, 2x supersampled.

  Args:
    shape: one of SHAPES.
    canvas_size: (w, h) of the canvas in pixels.
    box: square pixel box in canvas coordinates.
    angle: rotation in radians.

  Returns:
    coverage [h, w] float32 in [0, 1].
  """
  scale = 2
  width, height = canvas_size
  canvas = Image.new("L", (width * scale, height * scale), 0)
  draw = ImageDraw.Draw(canvas)
  x1, y1, x2, y2 = box * scale
  cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2

  def polygon(radii, num_points, offset):
    angles = angle + offset + np.arange(num_points) * 2 * np.pi / num_points
    radii = np.resize(np.asarray(radii, np.float64), num_points)
    return [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for rr, a in zip(radii, angles)]

  if shape == "circle":
    draw.ellipse([x1, y1, x2, y2], fill=255)
  elif shape == "ring":
    draw.ellipse([x1, y1, x2, y2], fill=255)
    inner = 0.5 * r
    draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
  elif shape == "square":
    draw.polygon(polygon([r], 4, np.pi / 4), fill=255)
  elif shape == "diamond":
    draw.polygon(polygon([r, 0.6 * r], 4, 0.0), fill=255)
  elif shape == "triangle":
    draw.polygon(polygon([r], 3, -np.pi / 2), fill=255)
  elif shape == "star":
    draw.polygon(polygon([r, 0.42 * r], 10, -np.pi / 2), fill=255)
  elif shape == "hexagon":
    draw.polygon(polygon([r], 6, 0.0), fill=255)
  elif shape == "cross":
    arm, length = 0.32 * r, 0.94 * r  # corners stay inside the circle of radius r, hence inside the box
    for theta in (angle, angle + np.pi / 2):
      direction, normal = np.array([np.cos(theta), np.sin(theta)]), np.array([-np.sin(theta), np.cos(theta)])
      corners = [np.array([cx, cy]) + sd * length * direction + sn * arm * normal
                 for sd, sn in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
      draw.polygon([tuple(c) for c in corners], fill=255)
  else:
    raise ValueError(f"unknown shape {shape!r}")
  canvas = canvas.resize((width, height), Image.BOX)
  return np.asarray(canvas, np.float32) / 255.0


def _texture(rng: np.random.Generator, spec: ClassSpec, yy: np.ndarray, xx: np.ndarray,
             box: np.ndarray) -> np.ndarray:
  """The object's colour pattern at pixel coordinates (yy, xx), with mild colour jitter and shading.

  Args:
    rng: the example's generator.
    spec: the object's class.
    yy, xx: [h, w] pixel coordinates of the region to colour.
    box: the object's pixel box (x1, y1, x2, y2).

  Returns:
    pixels [h, w, 3] float32.
  """
  base = np.clip(np.asarray(spec.rgb, np.float32) + rng.normal(0, 10.0, 3), 0, 255).astype(np.float32)
  # The second colour of patterned textures: a much darker version, or a light one for very dark colours.
  second = base * 0.3 if base.mean() > 60 else base + 140.0
  side = max(box[2] - box[0], 1.0)
  period = side * rng.uniform(0.22, 0.32)
  theta = rng.uniform(0, np.pi)
  u = xx * np.cos(theta) + yy * np.sin(theta)
  v = -xx * np.sin(theta) + yy * np.cos(theta)
  if spec.texture == "solid":
    use_second = np.zeros(xx.shape, bool)
  elif spec.texture == "striped":
    use_second = _fraction(u / period) < 0.5
  elif spec.texture == "checkered":
    use_second = (np.floor(u / (period * 0.7)) + np.floor(v / (period * 0.7))) % 2 == 1
  elif spec.texture == "dotted":
    cu, cv = (_fraction(u / period) - 0.5) * period, (_fraction(v / period) - 0.5) * period
    use_second = cu ** 2 + cv ** 2 < (0.28 * period) ** 2
  else:
    raise ValueError(f"unknown texture {spec.texture!r}")
  pattern = np.where(use_second[..., None], second, base)
  # Soft directional shading, as from a light source, so objects are not perfectly flat.
  shading = 1.0 + 0.12 * ((xx - box[0]) / side - 0.5) * rng.uniform(-1, 1)
  return pattern * shading[..., None].astype(np.float32)


def _place_boxes(rng: np.random.Generator, num_objects: int, size: int) -> np.ndarray:
  """Random square pixel boxes that overlap each other by at most MAX_OVERLAP.

  Returns:
    boxes [num_objects, 4] float64, pixel xyxy.
  """
  for attempt in range(200):
    shrink = 1.0 - 0.4 * attempt / 200  # crowded scenes fall back to smaller objects
    sides = rng.uniform(MIN_OBJECT_SIZE, MAX_OBJECT_SIZE, num_objects) * size * shrink
    x1 = rng.uniform(0, size - sides)
    y1 = rng.uniform(0, size - sides)
    boxes = np.stack([x1, y1, x1 + sides, y1 + sides], axis=-1)
    if all(_overlap(boxes[i], boxes[j]) <= MAX_OVERLAP
           for i in range(num_objects) for j in range(i + 1, num_objects)):
      return boxes
  raise RuntimeError("could not place objects")  # unreachable in practice with <= 3 objects


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection area over the area of the smaller box."""
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
  return w * h / smaller


def render_scene(rng: np.random.Generator, classes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Draws the objects of `classes` on a cluttered background, in random depth order.

  Args:
    rng: the example's generator.
    classes: [O] class id of each object.
    size: image side in pixels.

  Returns:
    frame [size, size, 3] uint8, and tight normalised xyxy boxes [O, 4] float32 of each object's full extent
    (occluded parts included; the placement keeps occlusion small).
  """
  pixels = _background(rng, size)
  boxes = _place_boxes(rng, len(classes), size)
  tight = np.zeros((len(classes), 4), np.float32)
  for i in rng.permutation(len(classes)):
    spec = class_spec(int(classes[i]))
    # Only the object's box region (one pixel of margin for anti-aliasing) is rasterised and composited.
    x1, y1 = (max(int(c) - 1, 0) for c in boxes[i][:2])
    x2, y2 = (min(int(np.ceil(c)) + 1, size) for c in boxes[i][2:])
    local_box = boxes[i] - np.array([x1, y1, x1, y1])
    mask = _shape_mask(spec.shape, (x2 - x1, y2 - y1), local_box, angle=rng.uniform(-0.35, 0.35))
    yy, xx = np.mgrid[y1:y2, x1:x2].astype(np.float32)
    colours = _texture(rng, spec, yy, xx, boxes[i])
    region = pixels[y1:y2, x1:x2]
    pixels[y1:y2, x1:x2] = mask[..., None] * colours + (1.0 - mask[..., None]) * region
    ys, xs = np.nonzero(mask > 0.25)
    if len(xs):
      tight[i] = ((xs.min() + x1) / size, (ys.min() + y1) / size, (xs.max() + 1 + x1) / size,
                  (ys.max() + 1 + y1) / size)
    else:  # only for absurdly small images: keep the placement box
      tight[i] = np.clip(boxes[i] / size, 0.0, 1.0)
  frame = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
  return frame, tight


# ----------------------------------------------------------------------------------------------------------------
# Audio.
# ----------------------------------------------------------------------------------------------------------------


def _partials(timbre: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (frequency multiples, amplitudes) of a timbre; the fundamental is always the loudest partial."""
  if timbre == "pure":
    return np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.25, 0.08])
  if timbre == "bright":  # sawtooth-like, all harmonics 1/n
    n = np.arange(1, 11, dtype=np.float64)
    return n, 0.8 / n ** 1.1 * np.r_[1.25, np.ones(9)]
  if timbre == "hollow":  # clarinet-like, odd harmonics only
    n = np.arange(1, 12, 2, dtype=np.float64)
    return n, 1.0 / n
  if timbre == "breathy":  # weak harmonics; a noise band is added in `class_sound`
    return np.array([1.0, 2.0]), np.array([1.0, 0.15])
  raise ValueError(f"unknown timbre {timbre!r}")


def _fraction(x: np.ndarray) -> np.ndarray:
  """x mod 1 (np.mod is several times slower than floor)."""
  return x - np.floor(x)


def _envelope(pattern: str, rate: float, t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Returns (amplitude envelope [N], relative frequency deviation [N]) of a temporal pattern, float32."""
  phase = np.float32(rng.uniform(0, 1))
  rate = np.float32(rate)
  two_pi = np.float32(2 * np.pi)
  cycle = _fraction(t * rate + phase)
  no_glide = np.zeros_like(t)
  if pattern == "swell":  # steady tone with a slow swell
    return 0.8 + 0.2 * np.sin(two_pi * (np.float32(0.5) * t + phase)), no_glide
  if pattern == "pulses":  # percussive bursts: fast attack, exponential decay, silence between
    return np.minimum(cycle / np.float32(0.02), 1.0) * np.exp(cycle * np.float32(-8.0)), no_glide
  if pattern == "tremolo":  # deep, fast amplitude modulation
    return 0.55 + 0.45 * np.sin(two_pi * (3 * rate * t + phase)), no_glide
  if pattern == "chirps":  # repeated small upward glides (+-3 %) with a smooth gate
    return np.sin(np.float32(np.pi) * cycle) ** 2, np.float32(0.06) * (cycle - np.float32(0.5))
  raise ValueError(f"unknown pattern {pattern!r}")


def _smooth_noise(rng: np.random.Generator, num_samples: int, sample_rate: int, bandwidth_hz: float) -> np.ndarray:
  """Low-pass noise of about `bandwidth_hz`: Gaussian knots at 2 x bandwidth, linearly interpolated.

  Much cheaper than FFT filtering, and spectrally good enough for a rumble or a noise band.

  Returns:
    noise [N] float32, unit peak.
  """
  step = max(sample_rate / (2.0 * bandwidth_hz), 1.0)
  knots = rng.standard_normal(int(num_samples / step) + 2, dtype=np.float32)
  noise = np.interp(np.arange(num_samples, dtype=np.float32) / np.float32(step), np.arange(len(knots)), knots)
  noise = noise.astype(np.float32)
  return noise / (np.abs(noise).max() + np.float32(1e-9))


def class_sound(rng: np.random.Generator, k: int, num_samples: int, sample_rate: int) -> np.ndarray:
  """Synthesises one instance of class `k`'s sound with unit peak amplitude.

  Returns:
    waveform [N] float32.
  """
  spec = class_spec(k)
  t = np.arange(num_samples, dtype=np.float32) / np.float32(sample_rate)
  f0 = spec.fundamental_hz * rng.uniform(0.985, 1.015)
  envelope, glide = _envelope(spec.pattern, spec.pattern_rate_hz * rng.uniform(0.9, 1.1), t, rng)
  multiples, amplitudes = _partials(spec.timbre)
  # Phase of the fundamental (in cycles) is the integral of the instantaneous frequency (the glide). It is
  # accumulated in float64 and wrapped to [0, 1) so that the float32 sines of the partials stay exact enough.
  cycles = np.cumsum((f0 / sample_rate) * (1.0 + glide.astype(np.float64))) + rng.uniform(0, 1)
  base_phase = (np.float32(2 * np.pi) * _fraction(cycles)).astype(np.float32)
  sound = np.zeros(num_samples, np.float32)
  for multiple, amplitude in zip(multiples, amplitudes):
    if multiple * f0 * 1.03 >= sample_rate / 2:
      continue  # above Nyquist
    sound += np.float32(amplitude) * np.sin(np.float32(multiple) * base_phase)
  if spec.timbre == "breathy" and 3.4 * f0 < sample_rate / 2:
    # A noise band around the 3rd harmonic: low-pass noise (+-0.25 f0) ring-modulated onto 3 f0.
    band = _smooth_noise(rng, num_samples, sample_rate, 0.25 * f0)
    sound += np.float32(0.5) * band * np.sin(np.float32(3.0) * base_phase)
  sound *= envelope
  return sound / (np.abs(sound).max() + np.float32(1e-9))


def mix_audio(rng: np.random.Generator, classes: np.ndarray, num_samples: int, sample_rate: int) -> np.ndarray:
  """Sums the sounding classes at random gains with background noise, as int16 below full scale.

  Returns:
    waveform [N] int16.
  """
  mix = np.zeros(num_samples, np.float32)
  for k in classes:
    mix += np.float32(rng.uniform(0.25, 0.6)) * class_sound(rng, int(k), num_samples, sample_rate)
  # Background: quiet white noise plus a quiet low rumble.
  mix += np.float32(rng.uniform(0.005, 0.02)) * rng.standard_normal(num_samples, dtype=np.float32)
  mix += np.float32(rng.uniform(0.005, 0.02)) * _smooth_noise(rng, num_samples, sample_rate, 80.0)
  peak = np.abs(mix).max()
  if peak > 0.9:  # rare: two loud sources in phase; scale down rather than clip
    mix *= np.float32(0.9) / peak
  return np.round(mix * np.float32(32767)).astype(np.int16)


# ----------------------------------------------------------------------------------------------------------------
# Examples.
# ----------------------------------------------------------------------------------------------------------------


def make_example(config: Any, split: str, index: int) -> dict[str, Any]:
  """Generates example `index` of `split`, deterministically.

  Args:
    config: any object with `num_classes`, `image_size`, `duration_s`, `sample_rate` and `seed` attributes
      (a `SceneConfig`, or the builder's `SyntheticAvConfig`).
    split: one of SPLITS. `train` and `test_single`: 1 sounding source + 0..2 silent distractors;
      `test_duet`: 2 sounding sources (random order) + 0..1 distractor.
    index: example index within the split.

  Returns:
    A dict with the shared schema's features: `id` str, `frame` [H, W, 3] uint8, `waveform` [N] int16,
    `sample_rate` int, `label` [K] float32 multi-hot of the sounding classes, `num_sources` S,
    `source_class` [S] int32, `boxes` [S, 4] float32 normalised xyxy (one per source), `box_source` [S] int32.
  """
  num_classes = int(config.num_classes)
  if not 2 <= num_classes <= MAX_CLASSES:
    raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got {num_classes}")
  rng = np.random.default_rng([int(config.seed), split_index(split), int(index)])
  num_sounding = 2 if split == "test_duet" else 1
  max_distractors = min(3 - num_sounding, num_classes - num_sounding)
  num_distractors = int(rng.integers(0, max_distractors + 1))
  # Distinct classes; the first `num_sounding` sound, in random (= annotation) order.
  classes = rng.choice(num_classes, size=num_sounding + num_distractors, replace=False)
  frame, boxes = render_scene(rng, classes, int(config.image_size))
  num_samples = int(round(float(config.duration_s) * int(config.sample_rate)))
  sounding = classes[:num_sounding]
  waveform = mix_audio(rng, sounding, num_samples, int(config.sample_rate))
  label = np.zeros(num_classes, np.float32)
  label[sounding] = 1.0
  return {
      "id": example_id(split, index),
      "frame": frame,
      "waveform": waveform,
      "sample_rate": np.int32(config.sample_rate),
      "label": label,
      "num_sources": np.int32(num_sounding),
      "source_class": sounding.astype(np.int32),
      "boxes": boxes[:num_sounding],
      "box_source": np.arange(num_sounding, dtype=np.int32),
  }
