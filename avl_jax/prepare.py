r"""Builds a TFDS dataset of avl_jax into ArrayRecord files.

  python -m avl_jax.prepare --dataset=synthetic_av/default --data_dir=data/tfds
  python -m avl_jax.prepare --dataset=music/duet --data_dir=data/tfds --manual_dir=/data/raw/music

Uses the Python API (`download_and_prepare(file_format='array_record')`); rerunning on a prepared dataset is a
no-op. Prints the split sizes when done.
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

import avl_jax.datasets  # noqa: E402,F401  (registers the builders)

_DATASET = flags.DEFINE_string("dataset", "synthetic_av/default", "TFDS name[/config] to build.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS's default, ~/tensorflow_datasets).")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Raw files of a real dataset (its builder's MANUAL_DOWNLOAD_INSTRUCTIONS say what goes "
    "where); not needed for synthetic_av.")


def prepare(name: str, data_dir: str | None, manual_dir: str | None = None) -> tfds.core.DatasetBuilder:
  builder = tfds.builder(name, data_dir=data_dir)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(file_format="array_record", download_config=download_config)
  return builder


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  start = time.time()
  builder = prepare(_DATASET.value, _DATA_DIR.value, _MANUAL_DIR.value)
  sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
  print(f"{_DATASET.value} ready in {builder.data_dir} ({time.time() - start:.1f} s): {sizes}")


if __name__ == "__main__":
  app.run(main)
