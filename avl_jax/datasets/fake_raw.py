"""Small fake raw trees of the real datasets, in both official layouts, with deliberately broken entries.

Used by the tests (tests/datasets_*_test.py), the pipeline benchmark and `launch/prepare_data.sh --demo`.
`make_tree(dataset, config, root, layout)` writes the metadata in the official formats (into
`root/metadata/`, overriding the bundled files) and the clips:

  layout 'frames': frames/<id>.jpg + audio/<id>.wav (22.05 kHz, some stereo)   -- the official loaders' layout
  layout 'video':  <id>.mp4 (H.264 + AAC, written with PyAV)

and returns a `FakeTree` saying which ids must build and which must be skipped, and why. Content is
deterministic: every clip has its own colour and tone (`clip_colour`, `clip_frequency`); MUSIC frames (and the
frames of every mp4) have a grey level that encodes their frame index (`frame_grey`), so tests can check that
the right frame was taken.
"""
import dataclasses
import fractions
import os
import pickle
import wave
import zlib

import av
import numpy as np
from PIL import Image

FRAME_SIZE = (64, 48)   # (W, H) of the fake frames
AUDIO_RATE = 22050      # the fake files' rate: the builders resample it
VIDEO_FPS = 10
CLIP_SECONDS = 1.5      # VGGSound-like clips
MUSIC_SECONDS = 3.0     # MUSIC videos


@dataclasses.dataclass
class FakeTree:
  """A fake manual dir and what a build of it must give.

  Attributes:
    root: the manual dir.
    layout: 'frames' or 'video'.
    expected: split -> ids that must build, in metadata order.
    expected_skips: split -> [(id, skip reason)] in metadata order.
    partners: split -> {id: partner id} (duet tests).
  """
  root: str
  layout: str
  expected: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  expected_skips: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)
  partners: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Content.
# ----------------------------------------------------------------------------------------------------------------


def _hash(text: str) -> int:
  return zlib.crc32(text.encode())


def clip_colour(clip_id: str) -> tuple[int, int, int]:
  h = _hash(clip_id)
  return (40 + h % 170, 40 + (h >> 8) % 170, 40 + (h >> 16) % 170)


def clip_frequency(clip_id: str) -> float:
  """A distinct tone per clip, 300..1250 Hz."""
  return 300.0 + 50.0 * (_hash(clip_id) % 20)


def frame_grey(index: int) -> int:
  """Grey level of frame `index` of a fake video (30, 36, ..., steps of 6)."""
  return 30 + 6 * (index % 35)


def _tone(clip_id: str, seconds: float, rate: int = AUDIO_RATE, channels: int = 1) -> np.ndarray:
  """[N, C] float32 sine at the clip's frequency, amplitude 0.5."""
  t = np.arange(int(round(seconds * rate))) / rate
  wave_ = 0.5 * np.sin(2 * np.pi * clip_frequency(clip_id) * t)
  return np.repeat(wave_[:, None], channels, axis=1).astype(np.float32)


def _flat_frame(rgb) -> np.ndarray:
  return np.broadcast_to(np.asarray(rgb, np.uint8), (FRAME_SIZE[1], FRAME_SIZE[0], 3)).copy()


# ----------------------------------------------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------------------------------------------


def write_jpeg(path: str, pixels: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels).save(path, format="JPEG", quality=95)


def write_wav(path: str, samples: np.ndarray, rate: int = AUDIO_RATE) -> None:
  """samples [N, C] float in [-1, 1] -> 16-bit PCM wav."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with wave.open(path, "wb") as writer:
    writer.setnchannels(samples.shape[1])
    writer.setsampwidth(2)
    writer.setframerate(rate)
    writer.writeframes(np.round(samples * 32767).astype("<i2").tobytes())


def write_float_wav(path: str, samples: np.ndarray, rate: int = AUDIO_RATE) -> None:
  """samples [N, C] float32 -> IEEE-float wav, values as given (NaN and inf included: tests of bad audio)."""
  from scipy.io import wavfile  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  wavfile.write(path, rate, np.asarray(samples, np.float32))


def write_mp4(path: str, frames: list[np.ndarray], audio: np.ndarray | None, fps: int = VIDEO_FPS,
              rate: int = AUDIO_RATE, faststart: bool = False, audio_codec: str = "aac") -> None:
  """H.264 video (+ mono audio when `audio` [N, 1] is given: AAC, or `audio_codec`='pcm_f32le', whose float
  samples are stored as given, NaN included) with PyAV; faststart puts the index (moov) before the media, as
  most downloaded mp4s have it."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with av.open(path, "w", format="mp4", options={"movflags": "faststart"} if faststart else {}) as container:
    video = container.add_stream("libx264", rate=fps)
    video.width, video.height = frames[0].shape[1], frames[0].shape[0]
    video.pix_fmt = "yuv420p"
    video.options = {"preset": "ultrafast", "crf": "10"}
    stream = None
    if audio is not None:
      stream = container.add_stream(audio_codec, rate=rate)
      stream.layout = "mono"
    for pixels in frames:
      for packet in video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
        container.mux(packet)
    for packet in video.encode():
      container.mux(packet)
    if stream is not None:
      chunk = 1024
      for start in range(0, len(audio), chunk):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[start:start + chunk, :1].T),
                                           format="flt" if audio_codec.startswith("pcm_f") else "fltp",
                                           layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = fractions.Fraction(1, rate)
        for packet in stream.encode(frame):
          container.mux(packet)
      for packet in stream.encode():
        container.mux(packet)


def write_clip(root: str, clip_id: str, layout: str, *, seconds: float = CLIP_SECONDS, channels: int = 1,
               broken: str = "") -> None:
  """One VGGSound-like clip (flat colour, tone) in `layout`; `broken` in {'', 'image', 'audio', 'video',
  'no_audio', 'missing'} writes a deliberately bad or absent file."""
  if broken == "missing":
    return
  num_frames = max(1, int(round(seconds * VIDEO_FPS)))
  if layout == "frames":
    frame_path = os.path.join(root, "frames", f"{clip_id}.jpg")
    audio_path = os.path.join(root, "audio", f"{clip_id}.wav")
    write_jpeg(frame_path, _flat_frame(clip_colour(clip_id)))
    write_wav(audio_path, _tone(clip_id, seconds, channels=channels))
    if broken == "image":
      _truncate(frame_path, 0.3)
    elif broken == "audio":
      _truncate(audio_path, 0.5)
    return
  frames = [_flat_frame(clip_colour(clip_id)) for _ in range(num_frames)]
  path = os.path.join(root, f"{clip_id}.mp4")
  write_mp4(path, frames, None if broken == "no_audio" else _tone(clip_id, seconds))
  if broken == "video":
    _truncate(path, 0.4)


def _truncate(path: str, fraction: float) -> None:
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:int(len(data) * fraction)])


def write_rows(path: str, rows: list[list[str]], crlf: bool = False) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    f.write(("\r\n" if crlf else "\n").join(",".join(row) for row in rows))


def write_json(path: str, value) -> None:
  import json  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(value, f)


def box_for(clip_id: str, index: int = 0) -> list[float]:
  """A deterministic normalised box (x, y, a, b in (0, 1); read as xyxy or xywh)."""
  h = _hash(f"{clip_id}/{index}")
  x, y = 0.05 + (h % 40) / 100, 0.05 + ((h >> 8) % 40) / 100
  return [x, y, x + 0.2 + ((h >> 16) % 20) / 100, y + 0.2 + ((h >> 24) % 20) / 100]


# ----------------------------------------------------------------------------------------------------------------
# MUSIC.
# ----------------------------------------------------------------------------------------------------------------

MUSIC_CLASSES = {"solo": ("accordion", "cello", "flute", "violin"),
                 "duet": (("cello", "acoustic_guitar"), ("flute", "violin"), ("clarinet", "acoustic_guitar"),
                          ("saxophone", "acoustic_guitar"))}


def music_frame_id(video: str, index: int) -> str:
  return f"{video}_{index // VIDEO_FPS:03d}_{index:05d}"


def _write_music_video(root: str, video: str, layout: str, frame_ids: list[str], broken: str = "") -> None:
  """A MUSIC video: frame k has grey level frame_grey(k); audio = the video's tone."""
  if broken == "missing":
    return
  num_frames = int(MUSIC_SECONDS * VIDEO_FPS)
  if layout == "frames":
    for frame_id in frame_ids:
      index = int(frame_id[-5:])
      path = os.path.join(root, "frames", f"{frame_id}.jpg")
      write_jpeg(path, _flat_frame((frame_grey(index),) * 3))
      if broken == "image":
        _truncate(path, 0.3)
    path = os.path.join(root, "audio", f"{video}.wav")
    write_wav(path, _tone(video, MUSIC_SECONDS, channels=2))
    if broken == "audio":
      _truncate(path, 0.5)
    return
  frames = [_flat_frame((frame_grey(k),) * 3) for k in range(num_frames)]
  path = os.path.join(root, f"{video}.mp4")
  write_mp4(path, frames, None if broken == "no_audio" else _tone(video, MUSIC_SECONDS))
  if broken == "video":
    _truncate(path, 0.4)


def make_music_tree(root: str, variant: str, layout: str) -> FakeTree:
  """Train: 4 videos x 2 frames (one video broken, one frame id without files); test: 4 frames with boxes
  (one malformed box)."""
  tree = FakeTree(root, layout)
  bad = "image" if layout == "frames" else "video"
  videos = [("m_-vid00001", ""), ("mvid-0000_2", ""), ("mvid0000003", bad), ("mvid0000004", "")]
  classes = MUSIC_CLASSES[variant]
  train_rows, expected, skips = [], [], []
  for v, (video, broken) in enumerate(videos):
    frame_ids = [music_frame_id(video, k) for k in (5 + 3 * v, 14 + 2 * v)]
    _write_music_video(root, video, layout, frame_ids, broken)
    names = [classes[v]] if variant == "solo" else list(classes[v])
    for frame_id in frame_ids:
      train_rows.append([frame_id] + names)
      if broken:
        skips.append((frame_id, "unreadable_image" if layout == "frames" else "unreadable_video"))
      else:
        expected.append(frame_id)
  missing = music_frame_id("mvidmissing", 7)  # a listed frame whose video was never downloaded
  train_rows.insert(2, [missing] + ([classes[0]] if variant == "solo" else list(classes[0])))
  skips.insert(0, (missing, "missing_files"))
  tree.expected["train"], tree.expected_skips["train"] = expected, skips
  # Test: frames of videos 1 and 2, plus one with a malformed box.
  test_ids = [music_frame_id(videos[0][0], 10), music_frame_id(videos[1][0], 20), music_frame_id(videos[3][0], 3),
              music_frame_id(videos[3][0], 12)]
  for frame_id in test_ids:
    if layout == "frames":
      write_jpeg(os.path.join(root, "frames", f"{frame_id}.jpg"), _flat_frame((frame_grey(int(frame_id[-5:])),) * 3))
  entries = []
  for i, frame_id in enumerate(test_ids):
    box = [0.1 + 0.1 * i, 0.2, 0.3, 0.4]  # xywh with x + w <= 1, y + h <= 1
    if variant == "solo":
      entries.append({"file": frame_id, "class": classes[i % len(classes)], "bbox": box})
    else:
      pair = classes[i % len(classes)]
      entries.append({"file": frame_id, "class_src1": pair[0], "bbox_src1": box, "class_src2": pair[1],
                      "bbox_src2": [0.5, 0.1, 0.25, 0.6]})
  malformed = test_ids[-1]
  entries[-1]["bbox" if variant == "solo" else "bbox_src2"] = [0.1, 0.2, "wide"]
  tree.expected["test"] = test_ids[:-1]
  tree.expected_skips["test"] = [(malformed, "malformed_box")]
  meta = os.path.join(root, "metadata")
  write_rows(os.path.join(meta, f"music_{variant}_train.txt"), train_rows)
  if variant == "solo":
    write_rows(os.path.join(meta, "music_solo_test.csv"), [[e["file"], e["class"]] for e in entries], crlf=True)
  else:
    write_rows(os.path.join(meta, "music_duet_test.csv"), [[e["file"]] for e in entries], crlf=True)
  write_json(os.path.join(meta, f"music_{variant}.json"), entries)
  return tree


# ----------------------------------------------------------------------------------------------------------------
# VGGSound.
# ----------------------------------------------------------------------------------------------------------------

VGGSOUND_CLASSES = ("playing_violin_fiddle", "dog_barking", "church_bell_ringing", "lions_roaring")


def _vggsound_train(root: str, layout: str, tree: FakeTree, classes, list_name: str,
                    write_list=write_rows) -> None:
  """Train clips c0..c6: c3 missing, c4 corrupt (jpg / mp4), c5 short (0.6 s), c6 bad audio (wav / no track)."""
  rows, expected, skips = [], [], []
  for i in range(7):
    clip_id = f"trainclip{i:02d}_{30 * i:06d}"
    broken = {3: "missing", 4: "image" if layout == "frames" else "video",
              6: "audio" if layout == "frames" else "no_audio"}.get(i, "")
    write_clip(root, clip_id, layout, seconds=0.6 if i == 5 else CLIP_SECONDS, channels=2 if i == 1 else 1,
               broken=broken)
    rows.append([clip_id, classes[i % len(classes)]])
    if broken:
      skips.append((clip_id, {"missing": "missing_files", "image": "unreadable_image", "video": "unreadable_video",
                              "audio": "unreadable_audio", "no_audio": "no_audio_track"}[broken]))
    else:
      expected.append(clip_id)
  write_list(os.path.join(root, list_name), rows)
  tree.expected["train"], tree.expected_skips["train"] = expected, skips


def make_vggsound_tree(root: str, variant: str, layout: str) -> FakeTree:
  """Train list in the manual dir; test clips t0..t4 (t3 malformed box, t4 missing files), 1-3 boxes each."""
  tree = FakeTree(root, layout)
  _vggsound_train(root, layout, tree, VGGSOUND_CLASSES, "vggsound_single_train.txt")
  test_ids = [f"testclip{i:02d}_{10 * i:06d}" for i in range(5)]
  entries = []
  for i, clip_id in enumerate(test_ids):
    write_clip(root, clip_id, layout, broken="missing" if i == 4 else "")
    boxes = [box_for(clip_id, b) for b in range(1 + i % 3)]
    if i == 3:
      boxes = [boxes[0][:3]]
    entries.append({"file": clip_id, "class": VGGSOUND_CLASSES[i % 4].replace("_", " "), "bbox": boxes})
  meta = os.path.join(root, "metadata")
  write_json(os.path.join(meta, "vggss.json"), entries)
  write_rows(os.path.join(meta, "vggss_test.csv"), [[c] for c in test_ids], crlf=True)
  write_rows(os.path.join(meta, "vggsound_single_test.csv"), [[c, VGGSOUND_CLASSES[i % 4]]
                                                              for i, c in enumerate(test_ids)])
  pairs = [(0, 1), (1, 2), (2, 0), (0, 4), (3, 1)]
  write_rows(os.path.join(meta, "vggsound_duet_test.csv"),
             [[test_ids[a], VGGSOUND_CLASSES[a % 4], test_ids[b], VGGSOUND_CLASSES[b % 4]] for a, b in pairs])
  if variant == "single":
    tree.expected["test"] = test_ids[:3]
    tree.expected_skips["test"] = [(test_ids[3], "malformed_box"), (test_ids[4], "missing_files")]
  else:
    tree.expected["test"] = [test_ids[a] for a, _ in pairs[:3]]
    tree.partners["test"] = {test_ids[a]: test_ids[b] for a, b in pairs[:3]}
    # Row 3: t0 with the missing t4 as partner; row 4: t3, whose own box is malformed.
    tree.expected_skips["test"] = [(test_ids[0], "missing_files"), (test_ids[3], "malformed_box")]
  return tree


# ----------------------------------------------------------------------------------------------------------------
# VGGSound-Instruments.
# ----------------------------------------------------------------------------------------------------------------

VGGINSTRUMENTS_CLASSES = ("accordion", "banjo", "cello", "flute")


def fake_mask(sample: str) -> np.ndarray:
  """A 0/1 uint8 mask [H, W] at the frame size with a sample-dependent rectangle."""
  mask = np.zeros((FRAME_SIZE[1], FRAME_SIZE[0]), np.uint8)
  h = _hash(sample)
  top, left = h % 20, (h >> 8) % 30
  mask[top:top + 20, left:left + 25] = 1
  return mask


def make_vgginstruments_tree(root: str, variant: str, layout: str) -> FakeTree:
  """Train like VGGSound; test samples s0..s4: s3 without mask, s4 with a corrupt mask pickle."""
  tree = FakeTree(root, layout)
  list_name = os.path.join("metadata", f"vgginstruments{'_multi' if variant == 'multi' else ''}_train.txt")
  _vggsound_train(root, layout, tree, VGGINSTRUMENTS_CLASSES, list_name)
  samples = [f"sample{i:04d}" for i in range(5)]
  os.makedirs(os.path.join(root, "masks"), exist_ok=True)
  for i, sample in enumerate(samples):
    write_clip(root, sample, layout)
    if i == 4:
      with open(os.path.join(root, "masks", f"{sample}.pkl"), "wb") as f:
        f.write(b"\x80\x04not a pickle")
    elif i != 3:
      with open(os.path.join(root, "masks", f"{sample}.pkl"), "wb") as f:
        pickle.dump(fake_mask(sample), f)
  meta = os.path.join(root, "metadata")
  write_rows(os.path.join(meta, "vgginstruments_test.csv"),
             [[s, VGGINSTRUMENTS_CLASSES[i % 4]] for i, s in enumerate(samples)])
  pairs = [(0, 1), (1, 2), (2, 0), (0, 3), (4, 1)]
  write_rows(os.path.join(meta, "vgginstruments_multi_test.csv"),
             [[samples[a], VGGINSTRUMENTS_CLASSES[a % 4], samples[b], VGGINSTRUMENTS_CLASSES[b % 4]]
              for a, b in pairs])
  if variant == "single":
    tree.expected["test"] = samples[:3]
    tree.expected_skips["test"] = [(samples[3], "missing_mask"), (samples[4], "unreadable_mask")]
  else:
    tree.expected["test"] = [samples[a] for a, _ in pairs[:3]]
    tree.partners["test"] = {samples[a]: samples[b] for a, b in pairs[:3]}
    tree.expected_skips["test"] = [(samples[0], "missing_mask"), (samples[4], "unreadable_mask")]
  return tree


MAKERS = {"music": make_music_tree, "vggsound": make_vggsound_tree, "vgginstruments": make_vgginstruments_tree}


def make_tree(dataset: str, variant: str, root: str, layout: str) -> FakeTree:
  """Writes the fake raw tree of `dataset/variant` ('duet_44k' -> 'duet') under `root` in `layout`."""
  if layout not in ("frames", "video"):
    raise ValueError(f"layout must be 'frames' or 'video', got {layout!r}")
  return MAKERS[dataset](root, variant.split("_")[0], layout)


# ----------------------------------------------------------------------------------------------------------------
# Building (tests, benchmark).
# ----------------------------------------------------------------------------------------------------------------

# Small, fast builds of the fake trees: 32 px frames, 1 s MUSIC windows (the fake videos last 3 s), whole
# VGGSound-like clips, decoding in the calling process.
TEST_OVERRIDES = {"frame_short_side": 32, "num_workers": 1}


def small_overrides(dataset: str, **overrides) -> dict:
  """TEST_OVERRIDES (+ a 1 s audio window for music), updated with `overrides`."""
  result = dict(TEST_OVERRIDES, **({"audio_seconds": 1.0} if dataset == "music" else {}))
  result.update(overrides)
  return result


def build(name: str, manual_dir: str, data_dir: str, overrides: dict | None = None, **download_kwargs):
  """Builds `name` ('music/solo', ...) from `manual_dir` into `data_dir` (ArrayRecord); returns the builder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import avl_jax.datasets  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  builder = tfds.builder(name, data_dir=data_dir,
                         config_overrides=small_overrides(name.split("/")[0], **(overrides or {})))
  builder.download_and_prepare(file_format="array_record", download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, **download_kwargs))
  return builder


def read_split(name: str, data_dir: str, split: str) -> list[dict]:
  """Every record of a prepared split, decoded by TFDS, in record order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  return [source[i] for i in range(len(source))]
