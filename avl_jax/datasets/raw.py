"""Reading the raw files of the real datasets: extracted frames and wavs, or mp4 videos (PyAV), and masks.

Shared by the `music`, `vggsound` and `vgginstruments` builders, locally and on Apache Beam workers, so it
imports neither TensorFlow nor TFDS (worker processes start fast). Paths go through `etils.epath`, so the raw
tree may live on a local disk or on a cloud bucket (gs://...) when the builders run on Dataflow.

Every failure raises `SkipError` with one of REASONS; the builders skip the example and list it in the skip
report (id, file, reason, detail); any other exception while building one example becomes a `build_error`
skip (items.process), never a crash of the whole build. Every decision that alters data (resizing, resampling,
windowing, tiling, padding, clipping) is returned as a record that the builders store per example.

Axis letters: H, W frame height/width, N audio samples, C audio channels.
"""
import dataclasses
import functools
import io
import pickle
import wave

import av
from etils import epath
import numpy as np
from PIL import Image
from scipy import signal

# Why an example is skipped; the skip report's `reason` column.
REASONS = (
    "missing_files",     # the id is in the metadata but its frame/audio or video file is not in the manual dir
    "unreadable_image",  # corrupt or truncated JPEG
    "unreadable_audio",  # corrupt or truncated wav
    "unreadable_video",  # corrupt or truncated mp4 (PyAV cannot open or decode it)
    "no_video_track",    # mp4 without a video stream
    "no_audio_track",    # mp4 without an audio stream
    "missing_frame",     # the listed frame (MUSIC frame index, or the middle of a cut-short mp4) is not decodable
    "extreme_aspect_ratio",  # frame whose long side, at short side frame_short_side, exceeds JPEG_MAX_SIDE
    "unencodable_image",  # stored frame that PIL cannot encode as JPEG
    "audio_too_short",   # audio shorter than the stored window (with short_audio='skip')
    "nonfinite_audio",   # audio with NaN or infinite samples (float wav, float track of an mp4)
    "malformed_box",     # box that is not 4 finite numbers, or inverted (x2 < x1 / y2 < y1, negative w / h)
    "too_many_boxes",    # more boxes than the builder config's max_boxes (the eval pipeline's padding)
    "missing_mask",      # VGGSound-Instruments test sample without its pickled mask
    "unreadable_mask",   # mask pickle that cannot be read or holds no 2-D mask of uint8-representable values
    "unknown_class",     # class name outside the config's class vocabulary
    "malformed_row",     # metadata row with the wrong number of fields
    "build_error",       # any other exception while building the example (detail: its type, message, location)
)
SHORT_AUDIO = ("skip", "tile", "pad")
# Audio shorter than this is unusable, whatever the policy (an empty or near-empty track).
MIN_AUDIO_SECONDS = 0.1
# The largest side a baseline JPEG can hold (libjpeg's JPEG_MAX_DIMENSION); PIL fails with "broken data stream"
# (or "Maximum supported image dimension") beyond it.
JPEG_MAX_SIDE = 65500


class SkipError(Exception):
  """An example that cannot be built; it is skipped and listed in the report."""

  def __init__(self, reason: str, file: str, detail: str = ""):
    if reason not in REASONS:
      raise ValueError(f"unknown skip reason {reason!r}")
    super().__init__(f"{reason}: {file} {detail}".strip())
    self.reason = reason
    self.file = str(file)
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How clips are decoded and stored (the builder config's fields, picklable for worker processes).

  Attributes:
    sample_rate: stored audio rate in Hz (every clip is resampled to it).
    audio_seconds: length of the stored centre window; 0 stores the whole clip.
    short_audio: clips shorter than the window: 'skip' (report them), 'tile' (the official loaders' rule:
      repeat the clip, then truncate) or 'pad' (zeros at the end).
    frame_short_side: stored frames are resized (PIL bicubic) so that their short side has this length.
    jpeg_quality: quality of the stored JPEG frames.
    frame_position: mp4 layout: the frame nearest to this fraction of the video's duration (0.5 = middle).
    layout: 'auto' (extracted frame+wav when both exist, else the mp4), 'frames' or 'video'.
    video_fps: MUSIC mp4s: frame rate that maps a frame id's index to a time (0: the mp4's own rate).
  """
  sample_rate: int = 16000
  audio_seconds: float = 0.0
  short_audio: str = "skip"
  frame_short_side: int = 256
  jpeg_quality: int = 95
  frame_position: float = 0.5
  layout: str = "auto"
  video_fps: float = 0.0


# ----------------------------------------------------------------------------------------------------------------
# Files of a clip in the manual directory.
# ----------------------------------------------------------------------------------------------------------------

VIDEO_DIRS = ("", "video", "videos")  # <id>.mp4 directly in the manual dir or in one of these folders
VIDEO_EXTENSIONS = (".mp4",)


@dataclasses.dataclass(frozen=True)
class ClipFiles:
  """Where a clip's pixels and sound come from: an extracted frame + wav pair, or an mp4 (other is None)."""
  frame: str | None = None
  audio: str | None = None
  video: str | None = None


class DirListing:
  """`exists(path)` answered from one listing per directory, made on first use.

  Locating 200k clips with per-file existence checks costs ~1M stat calls; on gs:// each is a request, so the
  launcher of a Beam build would spend hours before any worker starts. One listing per folder costs a few paged
  requests instead.
  """

  def __init__(self):
    self._names: dict[str, frozenset[str]] = {}

  def exists(self, path: epath.Path) -> bool:
    parent = str(path.parent)
    if parent not in self._names:
      try:
        self._names[parent] = frozenset(child.name for child in path.parent.iterdir())
      except OSError:  # no such folder (FileNotFoundError, NotADirectoryError, ...): nothing in it
        self._names[parent] = frozenset()
    return path.name in self._names[parent]


def find_clip_files(manual_dir: str, frame_name: str, audio_name: str, video_name: str,
                    layout: str = "auto", listing: DirListing | None = None) -> ClipFiles:
  """Locates a clip: layout (a) `frames/<frame_name>.jpg` + `audio/<audio_name>.wav`, (b) `<video_name>.mp4`.

  `listing` (one per build) answers the existence checks from directory listings instead of a stat per file.

  Raises:
    SkipError(missing_files): neither layout has the clip's files.
  """
  exists = listing.exists if listing is not None else (lambda path: path.exists())
  root = epath.Path(manual_dir)
  frame = root / "frames" / f"{frame_name}.jpg"
  audio = root / "audio" / f"{audio_name}.wav"
  if layout in ("auto", "frames") and exists(frame) and exists(audio):
    return ClipFiles(frame=str(frame), audio=str(audio))
  if layout in ("auto", "video"):
    for folder in VIDEO_DIRS:
      for extension in VIDEO_EXTENSIONS:
        video = (root / folder / f"{video_name}{extension}") if folder else root / f"{video_name}{extension}"
        if exists(video):
          return ClipFiles(video=str(video))
  if layout == "frames":
    missing = [str(p) for p in (frame, audio) if not exists(p)]
    raise SkipError("missing_files", missing[0], "layout 'frames': missing " + " and ".join(missing))
  if layout == "video":
    raise SkipError("missing_files", str(root / f"{video_name}.mp4"), "layout 'video': no mp4")
  missing = [str(p) for p in (frame, audio) if not exists(p)]
  raise SkipError("missing_files", missing[0], f"missing {' and '.join(missing)}, and no {video_name}.mp4")


# ----------------------------------------------------------------------------------------------------------------
# Frames.
# ----------------------------------------------------------------------------------------------------------------


def read_image(path: str) -> np.ndarray:
  """Decodes an image file completely (a truncated JPEG is an error, not a grey bottom).

  Returns:
    pixels [H, W, 3] uint8 RGB.
  """
  try:
    data = epath.Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      return np.asarray(image.convert("RGB"))
  except Exception as e:  # PIL raises several types (OSError, SyntaxError, ValueError) for bad files.
    raise SkipError("unreadable_image", path, f"{type(e).__name__}: {e}") from e


def resize_short_side(pixels: np.ndarray, short_side: int, path: str = "") -> tuple[np.ndarray, dict]:
  """Resizes (PIL bicubic) so that the short side is `short_side`; returns the pixels and a record.

  Returns:
    pixels [H', W', 3] uint8 with min(H', W') = short_side, and {'size': [H, W], 'stored_size': [H', W']}.

  Raises:
    SkipError(extreme_aspect_ratio): a stored side would exceed JPEG_MAX_SIDE (e.g. a 3000 x 1 px frame at
      short side 256 is 768,000 px long); checked before resizing, so no such image is ever allocated.
  """
  height, width = pixels.shape[:2]
  scale = short_side / min(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  if max(size) > JPEG_MAX_SIDE:
    raise SkipError("extreme_aspect_ratio", path, f"{height} x {width} px (H x W) would be stored as {size[1]} x "
                    f"{size[0]} px at short side {short_side}, beyond JPEG's {JPEG_MAX_SIDE} px limit")
  if size != (width, height):
    pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.BICUBIC))
  return pixels, {"size": [height, width], "stored_size": [int(pixels.shape[0]), int(pixels.shape[1])]}


def encode_jpeg(pixels: np.ndarray, quality: int, path: str = "") -> bytes:
  """pixels [H, W, 3] uint8 -> JPEG bytes.

  Raises:
    SkipError(unencodable_image): PIL cannot encode them (`path`: the source file, for the report).
  """
  buffer = io.BytesIO()
  try:
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
  except Exception as e:  # OSError ("broken data stream"), ValueError (dimensions), ...
    raise SkipError("unencodable_image", path, f"{pixels.shape[0]} x {pixels.shape[1]} px: "
                    f"{type(e).__name__}: {e}") from e
  return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# Audio.
# ----------------------------------------------------------------------------------------------------------------


def read_wav(path: str) -> tuple[np.ndarray, int]:
  """Reads a PCM (8/16/24/32-bit integer) or float wav; channels are averaged (docs/avgn.md §10).

  Returns:
    mono waveform [N] float32 in [-1, 1], and its sample rate in Hz.

  Raises:
    SkipError(unreadable_audio): not a wav, or fewer samples than its header declares (truncated).
    SkipError(nonfinite_audio): a float wav with NaN or infinite samples.
  """
  try:
    data = epath.Path(path).read_bytes()
  except Exception as e:
    raise SkipError("unreadable_audio", path, f"{type(e).__name__}: {e}") from e
  try:
    with wave.open(io.BytesIO(data)) as reader:
      channels, width, rate, declared = (reader.getnchannels(), reader.getsampwidth(), reader.getframerate(),
                                         reader.getnframes())
      frames = reader.readframes(declared)
  except (wave.Error, EOFError) as e:
    return _read_wav_scipy(path, data, e)
  if width not in (1, 2, 3, 4) or channels < 1 or rate < 1:
    raise SkipError("unreadable_audio", path, f"unsupported wav: {width}-byte samples, {channels} channels, "
                    f"{rate} Hz (8/16/24/32-bit PCM or float expected)")
  got = len(frames) // (channels * width)
  if got < declared:
    raise SkipError("unreadable_audio", path, f"truncated: header declares {declared} samples, file holds {got}")
  return _pcm_to_float(frames, width, channels), rate


def _read_wav_scipy(path: str, data: bytes, first_error: Exception) -> tuple[np.ndarray, int]:
  """Float (IEEE) wavs, which the `wave` module rejects."""
  from scipy.io import wavfile  # pylint: disable=g-import-not-at-top
  try:
    rate, samples = wavfile.read(io.BytesIO(data))
  except Exception as e:
    raise SkipError("unreadable_audio", path, f"{type(first_error).__name__}: {first_error}; {e}") from e
  samples = np.asarray(samples)
  if samples.dtype.kind == "f":
    check_finite_audio(samples, path)
    mono = samples.astype(np.float32)
  elif samples.dtype == np.uint8:
    mono = (samples.astype(np.float32) - 128.0) / 128.0
  else:
    mono = samples.astype(np.float32) / float(-np.iinfo(samples.dtype).min)
  if mono.ndim == 2:
    mono = mono.mean(axis=1)
  return np.clip(mono, -1.0, 1.0).astype(np.float32), int(rate)


def check_finite_audio(samples: np.ndarray, path: str) -> None:
  """Float samples (any shape, e.g. [N, C]) must all be finite: clipping would store NaN as 0 and inf as full scale.

  Raises:
    SkipError(nonfinite_audio): the detail counts the NaN and infinite sample values.
  """
  finite = np.isfinite(samples)
  if not finite.all():
    bad = int(samples.size - np.count_nonzero(finite))
    nan = int(np.count_nonzero(np.isnan(samples)))
    raise SkipError("nonfinite_audio", path, f"{bad} of {samples.size} sample values are not finite ({nan} NaN, "
                    f"{bad - nan} infinite); re-export the audio without them")


def _pcm_to_float(frames: bytes, width: int, channels: int) -> np.ndarray:
  """Interleaved little-endian PCM bytes -> mono float32 in [-1, 1].

  Signed PCM is divided by 2^(bits - 1) (32768 for 16 bits), the usual wav-reader convention (soundfile,
  torchaudio): the source file's full scale. Not `audio.int16_to_float` (/ 32767, clipped), which reads back
  *our* stored int16 waveform, written as `round(x * 32767)` by `window_audio`.
  """
  if width == 1:
    samples = (np.frombuffer(frames, np.uint8).astype(np.float32) - 128.0) / 128.0
  elif width == 2:
    samples = np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0
  elif width == 3:
    raw = np.frombuffer(frames, np.uint8).reshape(-1, 3)
    values = (raw[:, 0].astype(np.int32) | (raw[:, 1].astype(np.int32) << 8) | (raw[:, 2].astype(np.int32) << 16))
    samples = ((values << 8) >> 8).astype(np.float32) / 8388608.0  # sign-extend 24 -> 32 bits
  elif width == 4:
    samples = np.frombuffer(frames, "<i4").astype(np.float32) / 2147483648.0
  else:
    raise ValueError(f"unsupported PCM sample width {width}")
  return samples.reshape(-1, channels).mean(axis=1).astype(np.float32)


def resample(waveform: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
  """Polyphase resampling (scipy `resample_poly`, Kaiser window): [N] float32 -> [round(N * to / from)]."""
  if from_rate == to_rate:
    return waveform
  divisor = np.gcd(int(from_rate), int(to_rate))
  out = signal.resample_poly(waveform.astype(np.float64), int(to_rate) // divisor, int(from_rate) // divisor)
  return out.astype(np.float32)


def window_audio(waveform: np.ndarray, rate: int, options: DecodeOptions, path: str) -> tuple[np.ndarray, dict]:
  """Resamples to options.sample_rate, takes the centre window, converts to int16; records every decision.

  The window starts at max(N / 2 - n / 2, 0) (the official centre crop); clips shorter than the window are
  skipped, tiled or zero-padded according to options.short_audio.

  Returns:
    waveform [n] int16 (n = the window, or the whole clip with audio_seconds = 0), and a record with
    `rate` (the file's), `samples` (the clip's, at the stored rate), `offset` (window start), `fill`
    ('none' | 'tiled' | 'padded') and `clipped` (samples beyond full scale after resampling, set to +-1).

  Raises:
    SkipError: audio_too_short, nonfinite_audio (NaN or inf in `waveform`).
  """
  check_finite_audio(waveform, path)
  if waveform.size < MIN_AUDIO_SECONDS * rate:
    raise SkipError("audio_too_short", path, f"{waveform.size} samples at {rate} Hz")
  stored = resample(waveform, rate, options.sample_rate)
  record = {"rate": int(rate), "samples": int(stored.size), "offset": 0, "fill": "none"}
  want = int(round(options.audio_seconds * options.sample_rate)) if options.audio_seconds > 0 else stored.size
  if stored.size >= want:
    start = max(stored.size // 2 - want // 2, 0)
    stored = stored[start:start + want]
    record["offset"] = int(start)
  elif options.short_audio == "tile":
    stored = np.tile(stored, want // stored.size + 1)[:want]
    record["fill"] = "tiled"
  elif options.short_audio == "pad":
    stored = np.concatenate([stored, np.zeros(want - stored.size, np.float32)])
    record["fill"] = "padded"
  else:
    raise SkipError("audio_too_short", path,
                    f"{record['samples'] / options.sample_rate:.3f} s < window {options.audio_seconds} s")
  clipped = int(np.count_nonzero(np.abs(stored) > 1.0))
  record["clipped"] = clipped
  return np.round(np.clip(stored, -1.0, 1.0) * 32767.0).astype(np.int16), record


# ----------------------------------------------------------------------------------------------------------------
# Videos (PyAV).
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DecodedVideo:
  """A frame and the whole audio track of an mp4."""
  frame: np.ndarray   # [H, W, 3] uint8
  frame_time: float   # seconds from the start of the video stream
  fps: float          # the video stream's average frame rate
  audio: np.ndarray   # [N] float32 mono in [-1, 1]
  audio_rate: int


def decode_video(path: str, *, frame_position: float | None = None, frame_index: int | None = None,
                 video_fps: float = 0.0, audio: bool = True) -> DecodedVideo:
  """Decodes one frame and the audio track of an mp4.

  The frame is the one whose timestamp is nearest to `frame_position` x duration, or, with `frame_index`, to
  frame_index / fps (fps = `video_fps`, or the stream's average rate when 0). The audio is decoded whole at its
  native rate, channels averaged (audio=False: not decoded, `audio` is empty; a missing track is still an error).

  Raises:
    SkipError: unreadable_video, no_video_track, no_audio_track.
  """
  try:
    with epath.Path(path).open("rb") as f, av.open(f) as container:
      if not container.streams.video:
        raise SkipError("no_video_track", path)
      if not container.streams.audio:
        raise SkipError("no_audio_track", path)
      video = container.streams.video[0]
      fps = float(video.average_rate or video.guessed_rate or 0) or 25.0
      if frame_index is not None:
        target = frame_index / (video_fps or fps)
      else:
        target = float(frame_position if frame_position is not None else 0.5) * _duration(container, video)
      frame, frame_time = _frame_near(container, video, target, fps)
      if abs(frame_time - target) > 1.5 / (video_fps or fps):
        raise SkipError("missing_frame", path, f"frame at {target:.3f} s requested, the nearest decodable frame "
                        f"is at {frame_time:.3f} s (a frame index past the end, or a cut-short file)")
      samples, rate = np.zeros((0,), np.float32), 0
      if audio:
        container.seek(0)
        samples, rate = _decode_audio(container, path)
  except SkipError:
    raise
  except Exception as e:  # av.error.* (InvalidDataError, ...), EOFError, ValueError on truncated files
    raise SkipError("unreadable_video", path, f"{type(e).__name__}: {e}") from e
  if audio and samples.size == 0:
    raise SkipError("no_audio_track", path, "the audio stream holds no samples")
  return DecodedVideo(frame=frame, frame_time=frame_time, fps=fps, audio=samples, audio_rate=rate)


def _duration(container, video) -> float:
  if video.duration is not None and video.time_base is not None:
    return float(video.duration * video.time_base)
  if container.duration is not None:
    return container.duration / av.time_base
  raise ValueError("the video has no duration")


def _frame_near(container, video, target: float, fps: float) -> tuple[np.ndarray, float]:
  """The decoded frame whose time is nearest to `target` seconds (ties: the earlier one)."""
  start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
  if target > 1.0 and video.time_base is not None:
    # Seek to the keyframe at or before the target, then decode forward.
    container.seek(int((start + target - 1.0) / video.time_base), stream=video, backward=True)
  best, best_time = None, None
  for frame in container.decode(video):
    if frame.time is None:
      continue
    time = frame.time - start
    if best is None or abs(time - target) < abs(best_time - target) - 1e-9:
      best, best_time = frame, time
    if time > target + 1.0 / fps:
      break
  if best is None:
    raise ValueError("no decodable video frame")
  return best.to_ndarray(format="rgb24"), float(best_time)


# A decoded audio track shorter than this fraction of its declared duration (less TRUNCATION_SLACK_SECONDS of
# codec priming and padding) is a cut-short file: mp4s with their index at the front decode up to the cut.
TRUNCATION_FRACTION = 0.95
TRUNCATION_SLACK_SECONDS = 0.1


def _decode_audio(container, path: str) -> tuple[np.ndarray, int]:
  """The first audio stream, resampled by PyAV to planar float at its own rate and layout, channels averaged.

  Raises:
    SkipError(unreadable_video): the track decodes to clearly less than its declared duration (truncated).
    SkipError(nonfinite_audio): the decoded track holds NaN or infinite samples.
  """
  stream = container.streams.audio[0]
  resampler = av.AudioResampler(format="fltp", layout=stream.layout.name if stream.layout else None,
                                rate=stream.rate)
  chunks = []
  for frame in container.decode(stream):
    for out in resampler.resample(frame):
      chunks.append(out.to_ndarray())
  for out in resampler.resample(None):
    chunks.append(out.to_ndarray())
  if not chunks:
    return np.zeros((0,), np.float32), int(stream.rate or 0)
  samples = np.concatenate(chunks, axis=1)  # [C, N]
  check_finite_audio(samples, path)  # float tracks (e.g. pcm_f32le) can hold NaN / inf
  if stream.duration is not None and stream.time_base is not None and stream.rate:
    declared, decoded = float(stream.duration * stream.time_base), samples.shape[1] / stream.rate
    if decoded < TRUNCATION_FRACTION * declared - TRUNCATION_SLACK_SECONDS:
      raise SkipError("unreadable_video", path, f"truncated: the audio track declares {declared:.2f} s, "
                      f"{decoded:.2f} s decode")
  return np.clip(samples.mean(axis=0), -1.0, 1.0).astype(np.float32), int(stream.rate)


def decode_video_audio(path: str) -> tuple[np.ndarray, int]:
  """Whole audio track of an mp4: mono [N] float32 and its rate."""
  try:
    with epath.Path(path).open("rb") as f, av.open(f) as container:
      if not container.streams.audio:
        raise SkipError("no_audio_track", path)
      audio, rate = _decode_audio(container, path)
  except SkipError:
    raise
  except Exception as e:
    raise SkipError("unreadable_video", path, f"{type(e).__name__}: {e}") from e
  if audio.size == 0:
    raise SkipError("no_audio_track", path, "the audio stream holds no samples")
  return audio, rate


def stored_audio(path: str, is_video: bool, options: DecodeOptions) -> tuple[np.ndarray, dict]:
  """`window_audio` of a wav or an mp4's audio track, cached per worker process (keyed by path, size, mtime).

  The official MUSIC loaders use one audio file per video for every frame of it (docs/datasets.md §2), so
  consecutive frames hit this cache instead of decoding and resampling minutes of audio again. The returned
  array is shared: do not modify it.
  """
  try:
    stat = epath.Path(path).stat()
    version = (int(stat.length), float(stat.mtime))
  except Exception:  # pylint: disable=broad-except  (a missing file fails in the read below)
    version = None
  return _stored_audio(path, version, is_video, options)


@functools.lru_cache(maxsize=4)
def _stored_audio(path: str, version, is_video: bool, options: DecodeOptions) -> tuple[np.ndarray, dict]:
  del version  # part of the cache key only
  waveform, rate = decode_video_audio(path) if is_video else read_wav(path)
  return window_audio(waveform, rate, options, path)


# ----------------------------------------------------------------------------------------------------------------
# Masks (VGGSound-Instruments test GT).
# ----------------------------------------------------------------------------------------------------------------


def find_mask(manual_dir: str, sample: str, folder: str = "masks") -> str:
  """`{manual_dir}/{folder}/{sample}.*` (key = the file name up to its first '.', docs/metrics.md §2)."""
  root = epath.Path(manual_dir) / folder
  if root.exists():
    for candidate in sorted(root.glob(f"{sample}.*")):
      if candidate.name.split(".", 1)[0] == sample:
        return str(candidate)
  raise SkipError("missing_mask", str(root / f"{sample}.pkl"), f"no {sample}.* in {root}")


def read_mask(path: str) -> np.ndarray:
  """Unpickles a segmentation mask (a 2-D array, [H, W, 1], or a dict holding one), values kept.

  Only open pickles you trust: unpickling runs code. Values must be integers in [0, 255] (bool included), so
  they are stored losslessly as PNG.

  Returns:
    mask [H, W] uint8.
  """
  try:
    with epath.Path(path).open("rb") as f:
      value = pickle.load(f)
  except Exception as e:
    raise SkipError("unreadable_mask", path, f"{type(e).__name__}: {e}") from e
  if isinstance(value, dict):
    arrays = [v for v in value.values() if isinstance(v, np.ndarray)]
    if len(arrays) != 1:
      raise SkipError("unreadable_mask", path, f"a dict with {len(arrays)} arrays (keys {sorted(value)})")
    value = arrays[0]
  mask = np.asarray(value)
  if mask.ndim == 3 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  if mask.ndim != 2 or mask.size == 0:
    raise SkipError("unreadable_mask", path, f"expected a 2-D mask, got shape {mask.shape}")
  if mask.dtype.kind not in "biuf":
    raise SkipError("unreadable_mask", path, f"dtype {mask.dtype}")
  values = mask.astype(np.float64)
  if not np.all(np.isfinite(values)) or np.any(values != np.round(values)) or values.min() < 0 or values.max() > 255:
    raise SkipError("unreadable_mask", path, "values are not integers in [0, 255]")
  return values.astype(np.uint8)
