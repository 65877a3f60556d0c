"""The data source: prepared TFDS splits, the fast record parser, example ids and the class-index cache.

A record is one example of the shared schema (avl_jax/datasets/schema.py) as a dict: `id` bytes, `frame` JPEG
bytes (left encoded), `waveform` [n] int16, `sample_rate`, `source_class` [s] int (the first is the primary
class), and in eval splits `boxes`, `box_source` and the real datasets' fields. Example ids travel in batches as
[b, 64] uint8 (`encode_id` / `decode_ids`). `DataError` names the example that cannot be used.
"""
import os
from typing import Any

from absl import logging
from etils import epath
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from avl_jax import datasets  # noqa: F401  (registers the TFDS builders)

ID_BYTES = 64  # fixed width of an example id in a batch (longer ids are truncated)
CLASS_INDEX_CHECKS = 32  # records re-read to validate a cached class index


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


def example_id(record: dict[str, Any]) -> str:
  """The record's id as text ('?' without one), for error messages and batches."""
  value = record.get("id", "?")
  return value.decode() if isinstance(value, bytes) else str(value)


def encode_id(raw: bytes) -> np.ndarray:
  """An id as [ID_BYTES] uint8, zero-padded (truncated when longer): fixed width, so ids survive batching."""
  out = np.zeros((ID_BYTES,), np.uint8)
  raw = raw[:ID_BYTES]
  out[:len(raw)] = np.frombuffer(raw, np.uint8)
  return out


def decode_ids(id_bytes: np.ndarray) -> list[str]:
  """[b, 64] uint8 -> list of example ids."""
  return [bytes(row).rstrip(b"\0").decode() for row in np.asarray(id_bytes)]


def primary_class(record: dict[str, Any], num_classes: int) -> int:
  """The record's primary (first-source) class; DataError unless it is an id in [0, num_classes)."""
  classes = np.asarray(record["source_class"])
  if classes.size == 0 or not 0 <= int(classes[0]) < num_classes:
    raise DataError(f"Example {example_id(record)}: source classes {classes.tolist()} are not valid ids "
                    f"in [0, {num_classes}).")
  return int(classes[0])


def primary_classes(source, num_classes: int) -> np.ndarray:
  """Primary (first-source) class of every record of `source` [N] int32 (one pass over the split)."""
  return np.array([primary_class(source[i], num_classes) for i in range(len(source))], np.int32)


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
  try:
    with path.open("rb") as f:
      classes = np.load(f)
    checks = np.random.default_rng().choice(len(records), min(CLASS_INDEX_CHECKS, len(records)), replace=False)
    if classes.shape == (len(records),) and all(classes[i] == primary_class(records[int(i)], num_classes)
                                                for i in checks):
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


def dataset_class_names(config: ml_collections.ConfigDict) -> list[str] | None:
  """The dataset's class names in label order (its TFDS metadata `class_names`), None when it has none or
  they do not match config.dataset.num_classes."""
  ds = config.dataset
  try:
    info = tfds.builder(ds.name, data_dir=ds.data_dir).info
  except Exception as error:  # pylint: disable=broad-except  (labels only: the evaluation itself goes on)
    logging.warning("No class names for %s (%s); heat maps are labelled 'class <id>'.", ds.name, error)
    return None
  names = list((info.metadata or {}).get("class_names", []))
  return names if len(names) == ds.num_classes else None
