r"""Training-pipeline throughput on a VGGSound-shaped dataset, against the official loaders reading raw files.

  python -m avl_jax.benchmarks.pipeline_benchmark [--num_examples=500] [--workdir=/tmp/bench]

1. Writes a fake raw VGGSound tree (frames/<id>.jpg with a 256 px short side, audio/<id>.wav of 10 s at
   44.1 kHz) and builds it with the `vggsound` builder (16 kHz int16, whole clips) into ArrayRecord: the
   preparation rate (examples/s, all cores) is printed too.
2. Times the grain training pipeline in one thread of this process (num_workers=0, read_threads=1): record
   read, JPEG decode, resize to 246 + random 224 crop + flip, 3 s centre window, mixing with a random partner of
   another class (its record read and windowed), batching. examples/s per worker core. Twice: as training runs
   it (uint8 frames, normalised in the jitted step: `dataset.normalize_on_device=True`, the default) and with
   the frames normalised to float32 on the host (`normalize_on_device=False`).
3. Times, in the same run and the same thread, what the official loaders do per example (docs/avgn.md §10-12):
   an O(N) partner list, PIL open + the same image transforms for the own frame, both wavs read at their
   native rate and centre-cropped, and the scipy spectrogram of the mixture (which avl_jax computes on the
   accelerator instead).
4. Prints the rates and the ratio pipeline / official loader. The target of the pipeline is >= 200 examples/s per core.

Rates per core are examples per CPU-second of this process (`time.process_time`, all its threads), so other
jobs on a shared machine do not distort them; wall-clock rates are printed beside them.
"""
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from avl_jax import config_lib  # noqa: E402
from avl_jax import input_pipeline  # noqa: E402
from avl_jax.datasets import fake_raw  # noqa: E402
from avl_jax.datasets import raw  # noqa: E402
from avl_jax.datasets import vggsound  # noqa: E402
from avl_jax.pipeline import image_ops  # noqa: E402

_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 500, "Clips in the fake VGGSound-shaped dataset.")
_CLIP_SECONDS = flags.DEFINE_float("clip_seconds", 10.0, "Audio length of each clip.")
_RAW_RATE = flags.DEFINE_integer("raw_rate", 44100, "Sample rate of the raw wavs (resampled to 16 kHz).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 20, "Classes used (of the 221), for mixing partners.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Per-host batch of the timed pipeline.")
_SECONDS = flags.DEFINE_float("min_seconds", 10.0, "Minimum timed duration of each measurement.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where to write the dataset (default: a temporary dir, removed).")
_BUILD_WORKERS = flags.DEFINE_integer("build_workers", 0, "Decode processes of the build (0: every core).")
_FRAME_SHORT_SIDE = flags.DEFINE_integer(
    "frame_short_side", 256, "Short side of the stored frames (builder default 256; 246 = the training resize "
    "size, which makes the training resize an identity).")

SAMPLE_RATE = 16000
AUDIO_SECONDS = 3.0
IMAGE_SIZE, RESIZE_SIZE = 224, 246
FRAME_SHAPE = (256, 341)  # (H, W): VGGSound frames are 16:9 or 4:3; 256 px short side


def _photo_like(rng: np.random.Generator) -> np.ndarray:
  """A smooth colour field with texture and noise: compresses like a natural frame (~20-40 KB JPEG)."""
  coarse = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
  field = np.asarray(Image.fromarray(coarse).resize(FRAME_SHAPE[::-1], Image.BICUBIC), np.float32)
  noise = rng.normal(0, 12, size=(*FRAME_SHAPE, 1)).astype(np.float32)
  return np.clip(field + noise, 0, 255).astype(np.uint8)


def write_raw_tree(root: str, num_examples: int, num_classes: int, seconds: float, rate: int) -> list[list[str]]:
  """frames/<id>.jpg + audio/<id>.wav and the train list; returns the list rows [id, class]."""
  rng = np.random.default_rng(0)
  classes = list(vggsound.vggsound.bundled_classes())[:num_classes]
  rows = []
  t = np.arange(int(seconds * rate), dtype=np.float32) / rate
  for i in range(num_examples):
    clip_id = f"bench{i:06d}_{i % 300:06d}"
    fake_raw.write_jpeg(os.path.join(root, "frames", f"{clip_id}.jpg"), _photo_like(rng))
    tone = 0.3 * np.sin(2 * np.pi * (200 + 10 * (i % 50)) * t) + 0.05 * rng.standard_normal(t.size).astype(np.float32)
    fake_raw.write_wav(os.path.join(root, "audio", f"{clip_id}.wav"), tone[:, None], rate)
    rows.append([clip_id, classes[i % num_classes]])
  fake_raw.write_rows(os.path.join(root, "vggsound_single_train.txt"), rows)
  return rows


def build(raw_dir: str, data_dir: str, num_workers: int, frame_short_side: int) -> float:
  """Builds vggsound/duet (train split) from the raw tree; returns examples/s."""
  builder = tfds.builder("vggsound/duet", data_dir=data_dir,
                         config_overrides={"splits": ("train",), "num_workers": num_workers,
                                           "frame_short_side": frame_short_side})
  start = time.perf_counter()
  builder.download_and_prepare(file_format="array_record",
                               download_config=tfds.download.DownloadConfig(manual_dir=raw_dir))
  return builder.info.splits["train"].num_examples / (time.perf_counter() - start)


class _Timer:
  """Counts examples against CPU time of this process and wall time."""

  def __init__(self):
    self.cpu, self.wall, self.count = time.process_time(), time.perf_counter(), 0

  def elapsed(self) -> float:
    return time.perf_counter() - self.wall

  def rates(self) -> tuple[float, float]:
    """(examples per CPU-second, examples per wall-second)."""
    return (self.count / max(time.process_time() - self.cpu, 1e-9),
            self.count / max(time.perf_counter() - self.wall, 1e-9))


def pipeline_rate(data_dir: str, batch_size: int, min_seconds: float,
                  normalize_on_device: bool = True) -> tuple[float, float]:
  """examples/s (per CPU-second, per wall-second) of create_train_dataset in one decode thread (decode, crop,
  flip, window, mixing, batching)."""
  config = config_lib.base_config()
  ds = config.dataset
  ds.name, ds.data_dir, ds.num_classes, ds.mix = "vggsound/duet", data_dir, 221, True
  ds.image_size, ds.resize_size, ds.sample_rate, ds.audio_seconds = IMAGE_SIZE, RESIZE_SIZE, SAMPLE_RATE, AUDIO_SECONDS
  ds.num_workers, ds.read_threads, ds.normalize_on_device = 0, 1, normalize_on_device
  iterator = iter(input_pipeline.create_train_dataset(config, batch_size, seed=0))
  for _ in range(2):  # warm-up: the class index pass, the first reads
    next(iterator)
  timer = _Timer()
  while timer.elapsed() < min_seconds:
    timer.count += len(next(iterator)["visual_class"])
  return timer.rates()


def _official_image(root: str, clip_id: str, rng: np.random.Generator) -> np.ndarray:
  """The official training transform (docs/avgn.md §11): PIL open, resize to 246, random crop, flip, normalise."""
  with Image.open(os.path.join(root, "frames", f"{clip_id}.jpg")) as image:
    image = image.convert("RGB")
  scale = RESIZE_SIZE / min(image.size)
  image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), Image.BICUBIC)
  left = int(rng.integers(0, image.size[0] - IMAGE_SIZE + 1))
  top = int(rng.integers(0, image.size[1] - IMAGE_SIZE + 1))
  image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
  if rng.random() < 0.5:
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
  return image_ops.normalize_image(image)


def _official_audio(root: str, clip_id: str) -> tuple[np.ndarray, int]:
  """The official audio read (docs/avgn.md §10): the wav at its native rate (no resampling), centre 3 s."""
  waveform, rate = raw.read_wav(os.path.join(root, "audio", f"{clip_id}.wav"))
  want = int(AUDIO_SECONDS * rate)
  start = max(waveform.size // 2 - want // 2, 0)
  return waveform[start:start + want], rate


def raw_rate(root: str, rows: list[list[str]], min_seconds: float) -> tuple[float, float]:
  """examples/s (per CPU-second, per wall-second) of the official loader's per-example work, in one thread.

  Per example (docs/avgn.md §10-12): the partner from an O(N) list of the other classes' indices; the own frame
  through PIL transforms; both wavs read at their native rate and centre-cropped; the sum's scipy spectrogram,
  log(P + 1e-7) / 12 (the official loader computes it on the host; avl_jax computes it in the jitted step).
  """
  from scipy import signal  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  classes = np.array([row[1] for row in rows])
  timer = _Timer()
  while timer.elapsed() < min_seconds:
    index = int(rng.integers(len(rows)))
    candidates = [i for i in range(len(rows)) if classes[i] != classes[index]]
    partner = rows[candidates[int(rng.integers(len(candidates)))]]
    _ = _official_image(root, rows[index][0], rng)
    waveform, rate = _official_audio(root, rows[index][0])
    partner_waveform, _ = _official_audio(root, partner[0])
    _, _, power = signal.spectrogram(waveform + partner_waveform, fs=rate, nperseg=512, noverlap=274)
    _ = (np.log(power + 1e-7) / 12.0).astype(np.float32)
    timer.count += 1
  return timer.rates()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="avl_jax_pipeline_benchmark_")
  try:
    raw_dir, data_dir = os.path.join(workdir, "raw"), os.path.join(workdir, "tfds")
    shutil.rmtree(raw_dir, ignore_errors=True)
    shutil.rmtree(data_dir, ignore_errors=True)
    start = time.perf_counter()
    rows = write_raw_tree(raw_dir, _NUM_EXAMPLES.value, _NUM_CLASSES.value, _CLIP_SECONDS.value, _RAW_RATE.value)
    print(f"raw tree: {len(rows)} clips ({FRAME_SHAPE[0]}x{FRAME_SHAPE[1]} JPEG, {_CLIP_SECONDS.value:g} s wav at "
          f"{_RAW_RATE.value} Hz) in {time.perf_counter() - start:.1f} s")
    build_rate = build(raw_dir, data_dir, _BUILD_WORKERS.value, _FRAME_SHORT_SIDE.value)
    print(f"prepare (vggsound builder, {os.cpu_count()} cores, frames stored at short side "
          f"{_FRAME_SHORT_SIDE.value}): {build_rate:.1f} examples/s")
    pipeline, pipeline_wall = pipeline_rate(data_dir, _BATCH.value, _SECONDS.value)
    host_norm, host_norm_wall = pipeline_rate(data_dir, _BATCH.value, _SECONDS.value, normalize_on_device=False)
    baseline, baseline_wall = raw_rate(raw_dir, rows, _SECONDS.value)
    print(f"train pipeline (ArrayRecord; decode, crop, flip, window, mixing; uint8 frames, the default): "
          f"{pipeline:.1f} examples/s per core ({pipeline_wall:.1f}/s wall)")
    print(f"  the same, frames normalised to float32 on the host (normalize_on_device=False):     "
          f"{host_norm:.1f} examples/s per core ({host_norm_wall:.1f}/s wall)")
    print(f"official loader per example (PIL, wavs at native rate, scipy spectrogram of the mix): "
          f"{baseline:.1f} examples/s per core ({baseline_wall:.1f}/s wall)")
    print(f"ratio pipeline / official loader: {pipeline / baseline:.2f}x; target >= 200 examples/s per core: "
          f"{'met' if pipeline >= 200 else 'NOT met'}")
  finally:
    if not _WORKDIR.value:
      shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
