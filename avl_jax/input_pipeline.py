"""grain input pipelines over the shared TFDS schema (avl_jax/datasets/schema.py).

Train: tfds.data_source (the whole split, on every host) -> MapDataset -> seed -> shuffle -> repeat ->
random_map(decode + augment) -> random_map(mix with a partner of another class) -> this process's rows of every
global batch (`ProcessRows`) -> to_iter_dataset -> batch -> mp_prefetch. Every host draws the same global order
(one shuffle, one seed: process 0's), and process p of P reads rows [p b, (p + 1) b) of each global batch of
B = P b, the rows its devices own in the global array (`sharding.host_to_global`): P processes train on the
same global batches as one process, whatever P (tests/multiprocess_test.py).
Eval:  the same source, deterministic decode, padded to a whole number of batches with a `mask`, so every
example is scored exactly once on every host count.

Real datasets (music, vggsound, vgginstruments; avl_jax/datasets/schema.py `make_real_features`) add, in eval
batches: `source_image` (each source's own frame: the duet partner's frame for source 1 of vggsound/duet and
vgginstruments/multi, the shared frame for MUSIC's natural duets), the duet partner's audio summed into
`waveform` (config `dataset.eval_mix_partner_audio`, default True; False = the official VGGSound-Instruments
multi loader, which forgot it), `boxes_raw` (official box values for the `official` protocol) and, for mask GT,
`gt_mask` / `has_gt_mask`. Training reads every config unchanged (`dataset.mix` picks single or duet).

Hosts only decode JPEGs and slice waveforms; the spectrogram is computed in the jitted step (avl_jax/audio.py).
Training images leave the host as uint8 and are normalised in the jitted step (`device_normalize_image`, config
`dataset.normalize_on_device`, default True): 4x fewer bytes to batch and to copy to the devices, and ~0.6 ms less
host work per example. Eval batches stay float32 (the 'torch_tensor' resize yields values off the uint8 grid).
Randomness comes only from grain's per-element generators, keyed on the element's global index, so a (seed, step)
pair always yields the same global batch and the iterator state checkpoints exactly.
"""
import dataclasses
import functools
import io
import logging as std_logging
import os
from typing import Any

from absl import logging
from etils import epath
import grain
import ml_collections
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from avl_jax import datasets  # noqa: F401  (registers the TFDS builders)
from avl_jax.metrics import gt_maps
from avl_jax.metrics import postprocess

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# CLIP's normalisation (the models on CLIP-trained encoders, docs/tvsl.md §7).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
IMAGE_NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD)}
PAD_CLASS = -1


class DataError(ValueError):
  """An example that cannot be used, with the example id in the message."""


def open_source(dataset_name: str, split: str, data_dir: str | None, *, per_process: bool = True):
  """tfds ArrayRecord data source of (this process's shard of) a split, frames left JPEG-encoded.

  per_process=True: `tfds.split_for_jax_process` (eval: each host scores its own examples); False: the split
  as named. Training reads `tfds.even_splits(split, 1)[0]` on every host (`create_train_dataset`).
  """
  if per_process:
    split = tfds.split_for_jax_process(split)
  try:
    return tfds.data_source(dataset_name, split=split, data_dir=data_dir, download=False,
                            decoders={"frame": tfds.decode.SkipDecoding()})
  except Exception as e:  # tfds raises several types for "not prepared"; re-raise with the fix.
    raise FileNotFoundError(
        f"Dataset {dataset_name!r} split {split!r} is not prepared in data_dir={data_dir!r} ({e}). Build it "
        f"first, e.g. `python -m avl_jax.prepare --dataset={dataset_name} --data_dir=DIR`.") from e


def prepared_info(dataset_name: str, data_dir: str | None) -> tfds.core.DatasetInfo:
  """The DatasetInfo of a prepared dataset; FileNotFoundError (with the command that builds it) otherwise."""
  try:
    builder = tfds.builder(dataset_name, data_dir=data_dir)
    prepared = builder.is_prepared()
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(f"config.dataset.name={dataset_name!r} cannot be opened ({e}).") from e
  if not prepared:
    raise FileNotFoundError(
        f"Dataset {dataset_name!r} is not prepared in data_dir={data_dir!r}. Build it first, e.g. "
        f"`python -m avl_jax.prepare --dataset={dataset_name} --data_dir=DIR`.")
  return builder.info


class TrainRecords:
  """Random access to the fields training reads, parsed straight from the serialized records.

  TFDS's generic decoding of every feature costs ~0.6 ms per record, 4x the read itself; training reads two
  records per mixed example and only needs `id`, `frame` (JPEG bytes), `waveform`, `sample_rate` and
  `source_class`. The records are tf.Example protos as TFDS writes them (bytes, int64 lists, and raw bytes for
  the BYTES-encoded waveform); `check` compares both decodings on a record before use.
  """

  def __init__(self, source):
    self.source = source  # the TFDS data source (picklable for grain workers)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    serialized = self.source.data_source[int(index)]
    feature = tf_example_pb2.Example.FromString(serialized).features.feature
    return {
        "id": feature["id"].bytes_list.value[0],
        "frame": feature["frame"].bytes_list.value[0],
        "waveform": np.frombuffer(feature["waveform"].bytes_list.value[0], np.int16),
        "sample_rate": int(feature["sample_rate"].int64_list.value[0]),
        "source_class": np.asarray(feature["source_class"].int64_list.value, np.int32),
    }

  def check(self, index: int = 0) -> bool:
    """Whether record `index` reads the same here and through TFDS."""
    ours, theirs = self[index], self.source[index]
    return all(np.array_equal(np.asarray(ours[k]), np.asarray(theirs[k])) for k in ours)


def train_records(source):
  """`TrainRecords` over a TFDS source, or the source itself if the fast parse disagrees with TFDS."""
  if len(source) == 0:
    return source
  records = TrainRecords(source)
  try:
    if records.check(0):
      return records
  except (KeyError, IndexError, AttributeError, ValueError) as e:
    logging.warning("Fast record parsing failed (%s); using TFDS decoding.", e)
    return source
  logging.warning("Fast record parsing disagrees with TFDS decoding; using TFDS decoding.")
  return source


def _example_id(record: dict[str, Any]) -> str:
  value = record.get("id", "?")
  return value.decode() if isinstance(value, bytes) else str(value)


def decode_frame(record: dict[str, Any]) -> Image.Image:
  try:
    return Image.open(io.BytesIO(record["frame"])).convert("RGB")
  except Exception as e:
    raise DataError(f"Example {_example_id(record)}: cannot decode its JPEG frame ({e}).") from e


@functools.lru_cache(maxsize=4)
def _normalization_table(norm: str = "imagenet") -> np.ndarray:
  """[256 * 3] float32: entry 3v + c = (v / 255 - mean[c]) / std[c], computed with the same float32 ops."""
  if norm not in IMAGE_NORMS:
    raise ValueError(f"config.dataset.image_norm={norm!r}; expected one of {sorted(IMAGE_NORMS)}.")
  mean, std = IMAGE_NORMS[norm]
  values = np.arange(256, dtype=np.float32)[:, None]
  return ((values / 255.0 - mean) / std).astype(np.float32).reshape(-1)


@functools.lru_cache(maxsize=8)
def _channel_pattern(size: int) -> np.ndarray:
  """[size] uint16: 0, 1, 2, 0, 1, 2, ... (the channel of each value of a flattened [H, W, 3] image)."""
  return np.resize(np.arange(3, dtype=np.uint16), size)


def normalize_image(image: Image.Image, norm: str = "imagenet") -> np.ndarray:
  """PIL RGB -> [H, W, 3] float32, normalised with the ImageNet (default) or CLIP mean and std.

  A lookup in a table of the 256 x 3 possible values: bit-identical to the arithmetic and ~5x faster
  (broadcasting over a trailing axis of 3 is slow in NumPy).
  """
  pixels = np.asarray(image, np.uint8)
  index = pixels.reshape(-1) * np.uint16(3)
  index += _channel_pattern(index.size)
  return _normalization_table(norm).take(index).reshape(pixels.shape)


EVAL_RESIZES = ("pil", "torch_tensor")


def eval_image(image: Image.Image, cfg: "DataConfig") -> tuple[np.ndarray, Image.Image]:
  """The eval frame: (normalised [S, S, 3] float32, the PIL frame at S x S for display and uint8 output).

  eval_resize 'pil' (docs/avgn.md §11): PIL bicubic resize (antialiased when shrinking), then normalise.
  'torch_tensor' (docs/tvsl.md §7): the frame as a float tensor in [0, 1], resized by
  PyTorch's tensor bicubic (A = -0.75, no antialias, values not clamped), then normalised.
  """
  size = (cfg.image_size, cfg.image_size)
  resized = image.resize(size, Image.BICUBIC)
  if cfg.eval_resize == "pil":
    return normalize_image(resized, cfg.image_norm), resized
  if cfg.eval_resize != "torch_tensor":
    raise ValueError(f"config.dataset.eval_resize={cfg.eval_resize!r}; expected one of {EVAL_RESIZES}.")
  pixels = np.asarray(image, np.float32).transpose(2, 0, 1) / np.float32(255.0)  # [3, H, W]
  tensor = postprocess.upsample_bicubic(pixels, size).transpose(1, 2, 0)
  mean, std = IMAGE_NORMS[cfg.image_norm]
  return ((tensor - mean) / std).astype(np.float32), resized


def device_normalize_image(images, norm: str = "imagenet"):
  """uint8 [..., H, W, 3] -> float32 normalised, in jnp (called inside the jitted train step): the float32 ops of
  `normalize_image`, (v / 255 - mean) / std, so both paths agree (tests/input_pipeline_test.py). Float inputs
  are taken as already normalised (dataset.normalize_on_device=False) and returned unchanged."""
  import jax.numpy as jnp  # the host-side module does not otherwise need JAX
  if images.dtype != jnp.uint8:
    return images
  if norm not in IMAGE_NORMS:
    raise ValueError(f"config.dataset.image_norm={norm!r}; expected one of {sorted(IMAGE_NORMS)}.")
  mean, std = (jnp.asarray(v) for v in IMAGE_NORMS[norm])
  return (images.astype(jnp.float32) / jnp.float32(255.0) - mean) / std


def denormalize_image(image: np.ndarray, norm: str = "imagenet") -> np.ndarray:
  """Inverse of `normalize_image` on [..., H, W, 3] float32 -> uint8 (exact: the 256 levels stay distinct)."""
  mean, std = IMAGE_NORMS[norm]
  return np.clip(np.rint((np.asarray(image, np.float32) * std + mean) * 255.0), 0, 255).astype(np.uint8)


def audio_window(record: dict[str, Any], sample_rate: int, num_samples: int) -> np.ndarray:
  """Centre window of `num_samples` int16 samples, tiled when the clip is shorter (docs/avgn.md §10)."""
  rate = int(record["sample_rate"])
  if rate != sample_rate:
    raise DataError(f"Example {_example_id(record)}: sample rate {rate} Hz, the config expects "
                    f"{sample_rate} Hz (prepare the dataset at the configured rate).")
  wave = np.asarray(record["waveform"])
  if wave.ndim != 1 or wave.size == 0:
    raise DataError(f"Example {_example_id(record)}: empty or malformed waveform of shape {wave.shape}.")
  if wave.size < num_samples:  # Official: the crop starts at 0, the clip is tiled and truncated.
    return np.tile(wave, num_samples // wave.size + 1)[:num_samples]
  start = (wave.size - num_samples) // 2
  return wave[start:start + num_samples]


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The parts of `config.dataset` the host-side transforms need (picklable for worker processes).

  The last three are eval switches of the real datasets: `eval_mix_partner_audio` (sum a duet partner's audio
  into `waveform`), `per_source_frames` (emit `source_image`), `gt_masks` (emit `gt_mask`; set from the
  dataset's features).
  """
  num_classes: int
  image_size: int
  resize_size: int
  sample_rate: int
  num_samples: int
  max_sources: int
  max_boxes: int
  eval_mix_partner_audio: bool = True
  per_source_frames: bool = True
  gt_masks: bool = False
  image_norm: str = "imagenet"
  canvas: bool = False
  eval_resize: str = "pil"
  normalize_on_device: bool = True

  @classmethod
  def from_config(cls, ds: ml_collections.ConfigDict) -> "DataConfig":
    return cls(num_classes=ds.num_classes, image_size=ds.image_size, resize_size=ds.resize_size,
               sample_rate=ds.sample_rate, num_samples=int(round(ds.audio_seconds * ds.sample_rate)),
               max_sources=ds.max_sources, max_boxes=ds.max_boxes,
               eval_mix_partner_audio=bool(ds.get("eval_mix_partner_audio", True)),
               per_source_frames=bool(ds.get("per_source_frames", True)),
               image_norm=ds.get("image_norm", "imagenet"), canvas=bool(ds.get("canvas", False)),
               eval_resize=ds.get("eval_resize", "pil"),
               normalize_on_device=bool(ds.get("normalize_on_device", True)))


def _primary_class(record: dict[str, Any], cfg: DataConfig) -> int:
  classes = np.asarray(record["source_class"])
  if classes.size == 0 or not 0 <= int(classes[0]) < cfg.num_classes:
    raise DataError(f"Example {_example_id(record)}: source classes {classes.tolist()} are not valid ids "
                    f"in [0, {cfg.num_classes}).")
  return int(classes[0])


def train_pixels(image: Image.Image, cfg: DataConfig) -> np.ndarray:
  """A training frame as it leaves the host: uint8 (normalised in the step) or normalised float32."""
  if cfg.normalize_on_device:
    return np.asarray(image, np.uint8)
  return normalize_image(image, cfg.image_norm)


def _one_hot(index: int, num_classes: int) -> np.ndarray:
  out = np.zeros((num_classes,), np.float32)
  out[index] = 1.0
  return out


class TrainDecode(grain.transforms.RandomMap):
  """Decode + augment (docs/avgn.md §11): resize the short side, random crop, random horizontal flip."""

  def __init__(self, cfg: DataConfig):
    self.cfg = cfg

  def random_map(self, record, rng: np.random.Generator):
    cfg = self.cfg
    own_class = _primary_class(record, cfg)
    return {
        "image": train_pixels(augment_frame(decode_frame(record), cfg, rng), cfg),
        "waveform": audio_window(record, cfg.sample_rate, cfg.num_samples).astype(np.float32) / 32767.0,
        "visual_class": np.int32(own_class),
        "audio_label": _one_hot(own_class, cfg.num_classes),
        "source_class": np.array([own_class], np.int32),
    }


def augment_frame(image: Image.Image, cfg: DataConfig, rng: np.random.Generator) -> Image.Image:
  """Short side to resize_size (bicubic), random image_size crop, horizontal flip with probability 0.5."""
  scale = cfg.resize_size / min(image.size)
  size = (max(cfg.image_size, round(image.size[0] * scale)), max(cfg.image_size, round(image.size[1] * scale)))
  left = int(rng.integers(0, size[0] - cfg.image_size + 1))
  top = int(rng.integers(0, size[1] - cfg.image_size + 1))
  # Resize-then-crop in one step: PIL resamples only the crop's box, with the filter taps of the whole-image
  # resize to `size` (equal up to float rounding: +-1 in ~0.1 % of values; 1.7x faster).
  if size == image.size:  # frames stored at the resize size: the resize is the identity, as in PIL
    image = image.crop((left, top, left + cfg.image_size, top + cfg.image_size))
  else:
    sx, sy = image.size[0] / size[0], image.size[1] / size[1]
    box = (left * sx, top * sy, (left + cfg.image_size) * sx, (top + cfg.image_size) * sy)
    image = image.resize((cfg.image_size, cfg.image_size), Image.BICUBIC, box=box)
  if rng.random() < 0.5:
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
  return image


class MixWithPartner(grain.transforms.RandomMap):
  """Training-time mixing (docs/avgn.md §12): add the waveform of a random partner of a different class.

  The partner is uniform over all training examples whose primary class differs (O(1) per draw from a
  class-sorted index); the image stays the element's own frame; audio_label becomes own + partner and
  source_class [own, partner]. With `canvas` the image becomes [own | partner] [S, 2S, 3], the
  partner's frame augmented independently.
  """

  def __init__(self, source, primary_classes: np.ndarray, cfg: DataConfig):
    self.source = source
    self.cfg = cfg
    self.order = np.argsort(primary_classes, kind="stable")
    counts = np.bincount(primary_classes, minlength=cfg.num_classes)
    self.class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    self.class_count = counts
    if np.count_nonzero(counts) < 2:
      raise DataError("Training-time mixing needs at least two classes in the training split; "
                      f"found class counts {counts.tolist()}.")

  def random_map(self, element, rng: np.random.Generator):
    own = int(element["visual_class"])
    start, count = self.class_start[own], self.class_count[own]
    r = int(rng.integers(0, len(self.order) - count))
    if r >= start:
      r += count  # Skip the own-class block of the class-sorted index.
    record = self.source[int(self.order[r])]
    partner = audio_window(record, self.cfg.sample_rate, self.cfg.num_samples).astype(np.float32) / 32767.0
    partner_class = _primary_class(record, self.cfg)
    out = dict(element)
    out["waveform"] = element["waveform"] + partner  # Raw sum, no rescaling (official behaviour).
    out["audio_label"] = element["audio_label"] + _one_hot(partner_class, self.cfg.num_classes)
    out["source_class"] = np.array([own, partner_class], np.int32)
    if self.cfg.canvas:  # [own | partner] on the width, each frame augmented on its own (docs/tvsl.md §7).
      partner_image = augment_frame(decode_frame(record), self.cfg, rng)
      out["image"] = np.concatenate([element["image"], train_pixels(partner_image, self.cfg)], axis=1)
    return out


def primary_classes(source, num_classes: int) -> np.ndarray:
  """Primary (first-source) class of every record of `source` [N] int32 (one pass over the split)."""
  cfg = DataConfig(num_classes, 1, 1, 1, 1, 1, 1)
  return np.array([_primary_class(source[i], cfg) for i in range(len(source))], np.int32)


CLASS_INDEX_CHECKS = 32  # records re-read to validate a cached class index


def cached_primary_classes(records, tfds_source, num_classes: int) -> np.ndarray:
  """`primary_classes`, cached next to the prepared dataset.

  The mixing index needs every training record's class, and a record holds the whole clip: one pass over full
  VGGSound reads ~70 GB (~0.5 ms per record here). The first run writes `class_index-<split shard>-<n>.npy`
  into the dataset's directory (when writable; else it is recomputed each run); later runs load it and re-read
  CLASS_INDEX_CHECKS random records to check it still describes the data (a stale cache is rebuilt).
  """
  split = getattr(tfds_source, "split", "")
  if isinstance(split, tfds.core.subsplits_utils._EvenSplit):  # pylint: disable=protected-access
    split = f"{split.split}-{split.index}of{split.count}"
  name = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(split))
  directory = epath.Path(tfds_source.dataset_info.data_dir)
  path = directory / f"class_index-{name}-{len(records)}.npy"
  cfg = DataConfig(num_classes, 1, 1, 1, 1, 1, 1)
  try:
    with path.open("rb") as f:
      classes = np.load(f)
    checks = np.random.default_rng().choice(len(records), min(CLASS_INDEX_CHECKS, len(records)), replace=False)
    if classes.shape == (len(records),) and all(classes[i] == _primary_class(records[int(i)], cfg) for i in checks):
      return classes.astype(np.int32)
    logging.warning("The class index %s does not match the records; rebuilding it.", path)
  except (OSError, ValueError):
    pass  # absent or unreadable: build it
  classes = primary_classes(records, num_classes)
  tmp = directory / f".{path.name}.{os.getpid()}.tmp"
  try:
    with tmp.open("wb") as f:
      np.save(f, classes)
    tmp.replace(path)
  except OSError as e:
    logging.warning("Cannot cache the class index in %s (%s); it is recomputed on every start.", directory, e)
  return classes


class ProcessRows(grain.MapDataset):
  """This process's elements of a global stream of batches: element x here is element `global_index(x)` of the
  parent (the whole global stream), so that this process's batch k is rows [p b, (p + 1) b) of global batch k.

  b = per_host_batch, B = P b. Without grain workers (W = 1), local element k b + j is global element
  k B + p b + j. With W > 1 workers, grain's mp_prefetch hands worker w elements w, w + W, w + 2W, ... of this
  dataset and interleaves the workers' batches round-robin: the 1-process global batch k is then global elements
  w + W (i B + r), r in [0, B) (w = k mod W, i = k div W), and this process takes r in [p b, (p + 1) b). With
  P = 1 the map is the identity. The parent's per-element random generators are keyed on the global index, so
  every element (crop, flip, mixing partner) is the one a single process would draw.
  """

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, per_host_batch: int, process_index: int, process_count: int,
               num_workers: int = 0):
    super().__init__(parent)
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
    self.per_host_batch = int(per_host_batch)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.workers = max(int(num_workers), 1)
    block = self.workers * self.per_host_batch * self.process_count  # global elements per round of the workers
    self._length = (len(parent) // block) * self.workers * self.per_host_batch

  def global_index(self, index: int) -> int:
    worker, m = index % self.workers, index // self.workers
    batch, row = divmod(m, self.per_host_batch)
    return worker + self.workers * ((batch * self.process_count + self.process_index) * self.per_host_batch + row)

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self.global_index(int(index) % self._length)]

  def __str__(self) -> str:
    return (f"ProcessRows(process {self.process_index} of {self.process_count}, per_host_batch="
            f"{self.per_host_batch}, workers={self.workers})")


def global_train_seed(seed: int) -> int:
  """The shuffle seed every process uses: process 0's `seed` (a broadcast on multi-process runs), so hosts whose
  callers passed different seeds still draw one global order."""
  import jax  # pylint: disable=g-import-not-at-top  (the host-side module does not otherwise need JAX)
  if jax.process_count() == 1:
    return int(seed)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  words = np.asarray([(int(seed) >> 32) & 0xFFFFFFFF, int(seed) & 0xFFFFFFFF], np.uint32)
  high, low = (int(w) for w in np.asarray(multihost_utils.broadcast_one_to_all(words)))
  agreed = (high << 32) | low
  if agreed != int(seed):
    logging.info("Train data seed: process 0's %d on every process (this one was given %d).", agreed, seed)
  return agreed


def create_train_dataset(config: ml_collections.ConfigDict, per_host_batch: int, seed: int, *,
                         process_index: int | None = None, process_count: int | None = None) -> grain.IterDataset:
  """Infinite, shuffled, augmented (and mixed) training batches: this process's rows of each global batch.

  Batches: image [b, S, S, 3] uint8 (float32, normalised, with dataset.normalize_on_device=False; [b, S, 2S, 3]
  with dataset.canvas; `device_normalize_image` turns them into the model's input), waveform [b, N] float32 in
  [-2, 2], visual_class [b] int32, audio_label [b, K] float32, source_class [b, 2] int32 ([b, 1] without mix).

  One global order on every host: the whole split shuffled with `seed` (process 0's on a multi-process run,
  `global_train_seed`), global batches of B = process_count * per_host_batch, of which process p yields rows
  [p b, (p + 1) b) (`ProcessRows`): the row block its devices own when `sharding.host_to_global` assembles the
  global array (devices in process order along the batch axes). With one process this is the plain pipeline.
  process_index / process_count default to JAX's; given explicitly (tests) no collective runs.
  """
  ds_config = config.dataset
  cfg = DataConfig.from_config(ds_config)
  if process_index is None and process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
    seed = global_train_seed(seed)
  elif process_index is None or process_count is None:
    raise ValueError("Give both process_index and process_count, or neither.")
  # The whole split on every host (`even_splits(split, 1)[0]` is what one process has always read).
  source = open_source(ds_config.name, tfds.even_splits(ds_config.train_split, 1)[0], ds_config.data_dir,
                       per_process=False)
  if len(source) == 0:
    raise DataError(f"Split {ds_config.train_split!r} of {ds_config.name!r} is empty.")
  if cfg.canvas and not ds_config.mix:
    raise DataError("config.dataset.canvas=True (the [own | partner] training canvas) needs "
                    "config.dataset.mix=True: the partner supplies the second frame and sound.")
  tfds_source, source = source, train_records(source)
  dataset = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  dataset = dataset.random_map(TrainDecode(cfg))
  if ds_config.mix:
    classes = cached_primary_classes(source, tfds_source, cfg.num_classes)
    dataset = dataset.random_map(MixWithPartner(source, classes, cfg))
  if process_count > 1:
    dataset = ProcessRows(dataset, per_host_batch, process_index, process_count, ds_config.num_workers)
  # Batch after to_iter_dataset so the read-ahead buffer counts examples, not batches (with grain's default
  # 500-element buffer per worker, batching first held ~1.5 GB of decoded batches in every worker).
  iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=ds_config.read_threads, prefetch_buffer_size=2 * per_host_batch))
  iter_dataset = iter_dataset.batch(per_host_batch, drop_remainder=True)
  if ds_config.num_workers > 0:
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=ds_config.num_workers, per_worker_buffer_size=ds_config.worker_buffer_size))
  return iter_dataset


class EvalDecode(grain.transforms.Map):
  """Deterministic eval decode: resize to a square (docs/avgn.md §11), window the audio, pad the sources.

  Outputs per example: image [S', S', 3] (the own frame) and image_uint8, waveform [N], source_class [S],
  boxes [NB, 4], box_source [NB], id [64], mask; with a real dataset also source_image [S, S', S', 3] (with
  per_source_frames), boxes_raw [NB, 4] float64 and, with mask GT, gt_mask [S, 224, 224] + has_gt_mask [S]
  (S = max_sources, NB = max_boxes, S' = image_size).
  """

  def __init__(self, cfg: DataConfig, source, num_local: int, real: bool = False):
    self.cfg = cfg
    self.source = source
    self.num_local = num_local
    self.real = real

  def map(self, index):
    cfg = self.cfg
    index = int(index)
    valid = index < self.num_local
    # Padding elements repeat record 0 and carry mask 0: shapes stay static and nothing is counted twice.
    record = self.source[index if valid else 0]
    normalized, image = eval_image(decode_frame(record), cfg)
    classes = np.asarray(record["source_class"], np.int32)
    boxes = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
    box_source = np.asarray(record["box_source"], np.int32)
    if classes.size > cfg.max_sources or boxes.shape[0] > cfg.max_boxes:
      raise DataError(f"Example {_example_id(record)}: {classes.size} sources / {boxes.shape[0]} boxes exceed "
                      f"max_sources={cfg.max_sources} / max_boxes={cfg.max_boxes}.")
    if box_source.shape != (boxes.shape[0],) or np.any(box_source >= classes.size) or np.any(box_source < 0):
      raise DataError(f"Example {_example_id(record)}: box_source {box_source.tolist()} does not index its "
                      f"{classes.size} sources.")
    source_class = np.full((cfg.max_sources,), PAD_CLASS, np.int32)
    source_class[:classes.size] = classes
    padded_boxes = np.full((cfg.max_boxes, 4), -1.0, np.float32)
    padded_boxes[:boxes.shape[0]] = boxes
    padded_box_source = np.full((cfg.max_boxes,), -1, np.int32)
    padded_box_source[:boxes.shape[0]] = box_source
    example_id = np.zeros((64,), np.uint8)  # Fixed-width bytes so ids survive batching.
    raw_id = _example_id(record).encode()[:64]
    example_id[:len(raw_id)] = np.frombuffer(raw_id, np.uint8)
    out = {
        "image": normalized,
        "image_uint8": np.asarray(image, np.uint8),
        "waveform": eval_waveform(record, cfg),
        "source_class": source_class,
        "boxes": padded_boxes,
        "box_source": padded_box_source,
        "id": example_id,
        "mask": np.float32(valid),
    }
    if self.real:
      out.update(_real_eval_features(record, normalized, classes.size, cfg))
    return out


def eval_waveform(record: dict[str, Any], cfg: DataConfig) -> np.ndarray:
  """The audio the model hears at test time [N] float32: own window + the duet partner's (raw sum, no
  rescaling, as the official mixtures), or the own window only without partner / with the official
  VGGSound-Instruments-multi behaviour (eval_mix_partner_audio=False)."""
  waveform = audio_window(record, cfg.sample_rate, cfg.num_samples).astype(np.float32) / 32767.0
  partner = np.asarray(record.get("partner_waveform", np.zeros((0,), np.int16)))
  if partner.size and cfg.eval_mix_partner_audio:
    partner_record = {"id": record.get("id"), "sample_rate": record["sample_rate"], "waveform": partner}
    waveform = waveform + audio_window(partner_record, cfg.sample_rate, cfg.num_samples).astype(np.float32) / 32767.0
  return waveform


def _real_eval_features(record: dict[str, Any], normalized: np.ndarray, num_sources: int,
                        cfg: DataConfig) -> dict[str, np.ndarray]:
  """source_image, boxes_raw and (mask GT) gt_mask / has_gt_mask of a real-dataset record."""
  out = {}
  raw_boxes = np.asarray(record["boxes_raw"], np.float64).reshape(-1, 4)
  padded_raw = np.full((cfg.max_boxes, 4), -1.0, np.float64)
  padded_raw[:raw_boxes.shape[0]] = raw_boxes
  out["boxes_raw"] = padded_raw
  partner_id = np.zeros((64,), np.uint8)  # the fixed duet partner's id ('' if none), for official_duet_gt_bug
  raw_partner = record.get("partner_id", b"")
  raw_partner = (raw_partner if isinstance(raw_partner, bytes) else str(raw_partner).encode())[:64]
  partner_id[:len(raw_partner)] = np.frombuffer(raw_partner, np.uint8)
  out["partner_id"] = partner_id
  if cfg.per_source_frames:
    # Source 0 is the own frame; source 1 the partner's frame when the example stores one (fixed duet pairs),
    # else the same frame (MUSIC's natural duets: "same frame twice", docs/datasets.md §6). Padding: own frame.
    frames = [normalized] * cfg.max_sources
    for s, partner_frame in enumerate(record.get("partner_frame", [])[:cfg.max_sources - 1]):
      frames[s + 1] = eval_image(Image.fromarray(np.asarray(partner_frame, np.uint8)).convert("RGB"), cfg)[0]
    out["source_image"] = np.stack(frames)
  if cfg.gt_masks:
    masks = list(record.get("masks", []))
    gt = np.zeros((cfg.max_sources, gt_maps.GT_SIZE, gt_maps.GT_SIZE), np.float32)
    has = np.zeros((cfg.max_sources,), np.float32)
    for s, mask in enumerate(masks[:min(num_sources, cfg.max_sources)]):
      # OpenCV INTER_NEAREST to 224 x 224, values as stored (docs/metrics.md §2); binarising is the metric's job.
      gt[s] = gt_maps.resize_mask_nearest(np.asarray(mask)[..., 0]).astype(np.float32)
      has[s] = 1.0
    out["gt_mask"], out["has_gt_mask"] = gt, has
  return out


def decode_ids(id_bytes: np.ndarray) -> list[str]:
  """[b, 64] uint8 -> list of example ids."""
  return [bytes(row).rstrip(b"\0").decode() for row in np.asarray(id_bytes)]


@dataclasses.dataclass
class EvalData:
  dataset: grain.MapDataset
  num_examples: int   # examples in the whole split (all hosts)
  num_batches: int    # batches per host (equal on every host)
  # Official GT format of a real dataset (avl_jax.metrics.gt_maps.FORMATS, e.g. 'music_solo'), '' otherwise.
  gt_format: str = ""
  # The examples store the duet partner's own frame (vggsound/duet, vgginstruments/multi): `source_image[:, 1]`
  # is a different picture (a family may score on the [own | partner] canvas).
  partner_frames: bool = False


def create_eval_dataset(config: ml_collections.ConfigDict, split: str, per_host_batch: int,
                        num_processes: int) -> EvalData:
  """Deterministic eval batches of this host's shard, padded with mask 0 to an equal number of batches."""
  ds_config = config.dataset
  cfg = DataConfig.from_config(ds_config)
  source = open_source(ds_config.name, split, ds_config.data_dir)
  total = len(open_source(ds_config.name, split, ds_config.data_dir, per_process=False))
  if total == 0:
    raise DataError(f"Eval split {split!r} of {ds_config.name!r} is empty.")
  per_host = -(-total // num_processes)
  num_batches = -(-per_host // per_host_batch)
  info = source.dataset_info
  real = "partner_waveform" in info.features.keys()
  gt_format = str((info.metadata or {}).get("gt_format", "")) if real else ""
  cfg = dataclasses.replace(cfg, gt_masks=gt_format.startswith("vgginstruments"))
  dataset = grain.MapDataset.range(num_batches * per_host_batch).map(EvalDecode(cfg, source, len(source), real))
  dataset = dataset.batch(per_host_batch, drop_remainder=True)
  partner_frames = gt_format in ("vggsound_duet", "vgginstruments_multi") and cfg.per_source_frames
  return EvalData(dataset=dataset, num_examples=total, num_batches=num_batches, gt_format=gt_format,
                  partner_frames=bool(partner_frames))


# grain logs every worker start at INFO; keep the training log readable.
std_logging.getLogger("grain").setLevel(std_logging.WARNING)
logging.vlog(1, "avl_jax.input_pipeline loaded")


def dataset_class_names(config: ml_collections.ConfigDict) -> list[str] | None:
  """The dataset's class names in label order (its TFDS metadata `class_names`), None when it has none or
  they do not match config.dataset.num_classes."""
  ds = config.dataset
  try:
    info = tfds.builder(ds.name, data_dir=ds.get("data_dir")).info
  except Exception as error:  # pylint: disable=broad-except  (labels only: the evaluation itself goes on)
    logging.warning("No class names for %s (%s); heat maps are labelled 'class <id>'.", ds.name, error)
    return None
  names = list((info.metadata or {}).get("class_names", []))
  return names if len(names) == ds.num_classes else None
