r"""Builds a TFDS dataset of avl_jax into ArrayRecord files.

  python -m avl_jax.prepare --dataset=synthetic_av/default --data_dir=data/tfds
  python -m avl_jax.prepare --dataset=music/duet --data_dir=data/tfds --manual_dir=/data/raw/music
  python -m avl_jax.prepare --config=configs/synthetic_av.py:tiny     # the dataset (and data_dir) a config reads

Uses the Python API (`download_and_prepare(file_format='array_record')`); rerunning on a prepared dataset is a
no-op. Prints the split sizes when done.
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from avl_jax import cli  # noqa: E402
from avl_jax import datasets  # noqa: E402  (registers the builders)
from avl_jax import logs  # noqa: E402

_DATASET = flags.DEFINE_string("dataset", None, "TFDS name[/config] to build (default: the --config's "
                               "dataset.name, else synthetic_av/default).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the --config's dataset.data_dir, else "
                                "TFDS's default, ~/tensorflow_datasets).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A training config (configs/X.py[:args]): build the dataset it reads, where it reads it.",
    lock_config=True)
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Raw files of a real dataset (its builder's MANUAL_DOWNLOAD_INSTRUCTIONS say what goes "
    "where); not needed for synthetic_av.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logs.setup()
  name, data_dir = _DATASET.value, _DATA_DIR.value
  if _CONFIG.value is not None:
    name = name or _CONFIG.value.dataset.name
    data_dir = data_dir or _CONFIG.value.dataset.get("data_dir")
  name = name or "synthetic_av/default"
  start = time.time()
  builder = datasets.prepare(name, data_dir, _MANUAL_DIR.value)
  sizes = {split_name: split.num_examples for split_name, split in builder.info.splits.items()}
  print(f"{name} ready in {builder.data_dir} ({time.time() - start:.1f} s): {sizes}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
