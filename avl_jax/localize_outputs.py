"""The files `python -m avl_jax.localize` writes: heat-map overlays (PNGs), the overlay mp4, the JSON.

`draw_overlay` puts a [0, 1] map (colours of `visualize.colormap`) under a frame with a ring at its peak and a
label; `write_overlay_video` re-encodes the clip with each frame under the top-class map of its nearest window
and the clip's audio muxed back in (`encode_audio`, also used by the synthetic clip renderer).

Axis letters: N audio samples, H/W frame height/width.
"""
import dataclasses
import fractions
import json
import os
import re
from typing import Any, Iterator, Sequence

import av
import numpy as np
from PIL import Image, ImageDraw

from avl_jax import localize_clips
from avl_jax import visualize
from avl_jax.datasets import raw

AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
OVERLAY_ALPHA = 0.55        # heat-map weight of the overlays (as the evaluation PNGs)


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


def png_name(window: localize_clips.Window, class_name: str) -> str:
  """'w0003_t001.50s_red_solid_circle.png': window index, start time, class."""
  return f"w{window.index:04d}_t{window.start:07.2f}s_{_slug(class_name)}.png"


@dataclasses.dataclass
class TopMap:
  """What the overlay mp4 draws for one window: its top class's display map and label."""
  display: np.ndarray  # [224, 224] uint8
  label: str
  peak: dict[str, float]


# ----------------------------------------------------------------------------------------------------- files

def _video_frames(clip: localize_clips.Clip) -> Iterator[tuple[float, np.ndarray]]:
  """(time, [H, W, 3] uint8 frame) of every frame of the clip (an --image input: the still at STILL_FPS)."""
  if clip.still is not None:
    for n in range(int(np.ceil(clip.duration * localize_clips.STILL_FPS))):
      yield n / localize_clips.STILL_FPS, clip.still
    return
  for t, frame in localize_clips.iter_frames(clip.path):
    yield t, frame.to_ndarray(format="rgb24")


def encode_audio(container, stream, audio: np.ndarray, rate: int, written: int, upto: int) -> int:
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


def write_overlay_video(path: str, clip: localize_clips.Clip, windows: Sequence[localize_clips.Window],
                        top_maps: dict[int, TopMap]) -> None:
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
      i = localize_clips.nearest_window(t, windows)
      if cached != i:
        cached, heat = i, heat_rgb(top_maps[i].display / 255.0, width, height)
      picture = draw_overlay(frame[:height, :width], heat, top_maps[i].label, top_maps[i].peak)
      for packet in video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
        container.mux(packet)
      written = encode_audio(container, sound, audio, rate, written, int(round((t + 1 / clip.fps) * rate)))
    encode_audio(container, sound, audio, rate, written, audio.size)
    for stream in (video, sound):
      for packet in stream.encode(None):
        container.mux(packet)


def write_json(path: str, value: Any) -> None:
  """`value` as indented JSON (no NaN), written atomically (a temporary file, then renamed)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, allow_nan=False)
  os.replace(tmp, path)
