"""A synthetic test clip for `python -m avl_jax.localize --render_synthetic`: synthetic_av scenes with their
sound, and the sounding objects' boxes as the truth (docs/localize.md §1); no model needed.

Axis letters: O objects of a scene, N audio samples.
"""
import os
from typing import Any

import av
import numpy as np

from avl_jax import localize_outputs
from avl_jax.datasets.synthetic_av import generator


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
  localize_outputs.write_json(os.path.splitext(path)[0] + ".truth.json", truth)
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
      written = localize_outputs.encode_audio(container, sound, audio, rate, written, int(round((n + 1) / fps * rate)))
    localize_outputs.encode_audio(container, sound, audio, rate, written, audio.size)
    for stream in (video, sound):
      for packet in stream.encode(None):
        container.mux(packet)
