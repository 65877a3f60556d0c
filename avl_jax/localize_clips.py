"""The input of `python -m avl_jax.localize`: decoding the user's clip and cutting it into the model's windows.

A video with its audio track, or a still image plus a sound file (`load_clip`); the audio, resampled to the
model's rate, is cut into windows of config.dataset.audio_seconds every `stride_seconds` (`make_windows`), and
each window is paired with the video frame nearest to its centre (`window_frames`, streaming the video once).
Every problem with the user's files is a `LocalizeError` naming the file and the fix.

Axis letters: N audio samples, H/W frame height/width.
"""
import dataclasses
import os
from typing import Any, Iterator, Sequence

from absl import logging
import av
import numpy as np
from PIL import Image

from avl_jax.datasets import raw

STILL_FPS = 10              # frame rate of the overlay mp4 of an --image input


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

